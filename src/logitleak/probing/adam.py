"""Adam for the batched probes: one in-place step over many independent networks' parameters at once."""

from __future__ import annotations

from collections.abc import Sequence

import torch

BETA1, BETA2, EPS = 0.9, 0.999, 1e-8
"""PyTorch's defaults."""


def adam_step(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], m1: Sequence[torch.Tensor],
              m2: Sequence[torch.Tensor], t: int, lrs: Sequence[float]) -> None:
    """Step ``t`` (from 1) of Adam, in place: ``params[i] -= lrs[i] * m̂ / (sqrt(v̂) + eps)`` with the
    first and second moments ``m1``, ``m2`` updated from ``grads`` and bias-corrected. Every
    element is its own problem's parameter, so stacked networks step independently (the update is
    elementwise); it is ``torch.optim.Adam``'s rule, written once for tensors that are sliced as
    problems stop."""
    for p, g, a, b, lr in zip(params, grads, m1, m2, lrs):
        a.mul_(BETA1).add_(g, alpha=1 - BETA1)
        b.mul_(BETA2).addcmul_(g, g, value=1 - BETA2)
        denom = (b / (1 - BETA2 ** t)).sqrt_().add_(EPS)
        p.addcdiv_(a, denom, value=-lr / (1 - BETA1 ** t))
