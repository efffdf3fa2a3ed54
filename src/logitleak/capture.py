"""One forward pass -> Capture: everything every representational level needs."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Capture:
    """What one pass (or one black-box query) yields for N samples, at the read position.

    - ``hidden``: ``(N, L+1, D)`` raw residual stream: index 0 the embedding output, index l the
      output of decoder block l (before the final norm, for every l including the last).
      ``None`` for a black-box capture.
    - ``logits``: ``(N, V)`` float32 final logits. ``None`` for a black-box capture.
    - ``topk_logprobs`` / ``topk_ids``: ``(N, K)`` what an API returned (sorted descending,
      ids mapped per run, ``-1`` / ``nan`` where fewer than K alternatives came back). ``None``
      for a white-box capture, whose top-k is derived from ``logits``.
    """

    hidden: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    topk_logprobs: torch.Tensor | None = None
    topk_ids: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        for t in (self.logits, self.hidden, self.topk_logprobs):
            if t is not None:
                return t.shape[0]
        return 0

    @property
    def n_layers(self) -> int:
        """Number of decoder blocks (``hidden`` holds ``n_layers + 1`` states)."""
        return 0 if self.hidden is None else self.hidden.shape[1] - 1
