"""The one Adam step the batched probes share is torch.optim.Adam's rule, and steps stacked networks independently."""

from __future__ import annotations

import torch

from logitleak.probing.adam import adam_step


def _quadratic(p):
    return ((p - torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape)) ** 2).sum() + (p ** 4).sum() * 0.01


def test_adam_step_follows_torch_optim_adam():
    torch.manual_seed(0)
    start = [torch.randn(3, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    ours = [p.clone() for p in start]
    m1 = [torch.zeros_like(p) for p in ours]
    m2 = [torch.zeros_like(p) for p in ours]
    ref = [p.clone().requires_grad_() for p in start]
    opt = torch.optim.Adam([{"params": [ref[0]], "lr": 0.05}, {"params": [ref[1]], "lr": 0.01}])
    for t in range(1, 201):
        leaves = [p.requires_grad_() for p in ours]
        grads = torch.autograd.grad(sum(_quadratic(p) for p in leaves), leaves)
        with torch.no_grad():
            ours = [p.detach() for p in leaves]
            adam_step(ours, grads, m1, m2, t, [0.05, 0.01])
        opt.zero_grad()
        sum(_quadratic(p) for p in ref).backward()
        opt.step()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b.detach(), rtol=1e-10, atol=1e-12)


def test_stacked_problems_step_independently():
    """A problem's trajectory does not depend on the others stacked beside it."""
    torch.manual_seed(1)
    both = torch.randn(2, 6)
    alone = both[:1].clone()
    m = [torch.zeros_like(both), torch.zeros_like(both), torch.zeros_like(alone), torch.zeros_like(alone)]
    for t in range(1, 30):
        g_both = 2 * both + torch.tensor([[0.0], [5.0]])
        g_alone = 2 * alone
        adam_step([both], [g_both], [m[0]], [m[1]], t, [0.1])
        adam_step([alone], [g_alone], [m[2]], [m[3]], t, [0.1])
    assert torch.equal(both[:1], alone)
