"""The MLP probe, batched: one hidden ReLU layer, Adam, early stopping on an inner validation split."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from logitleak.probing.adam import adam_step
from logitleak.probing.tensors import (
    LOG_PROB_FLOOR,
    active_block,
    as_tensor,
    compose_index,
    label_index,
    log_softmax,
    masked_standardisation,
    present_classes,
    put_block,
    take_block,
)


@dataclass
class MLPFit:
    """Fitted batch of one-hidden-layer MLP probes (standardised-space weights)."""

    W1: torch.Tensor   # (F, P, d, h)
    b1: torch.Tensor   # (F, P, h)
    W2: torch.Tensor   # (F, P, h, K)
    b2: torch.Tensor   # (F, P, K)
    mu: torch.Tensor
    sd: torch.Tensor
    class_mask: torch.Tensor
    n_epochs: torch.Tensor
    best_val: torch.Tensor
    converged: torch.Tensor   # (F, P) bool: stopped by early stopping rather than by max_epochs

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        return _mlp_logits(X, self.W1, self.b1, self.W2, self.b2, self.mu, self.sd, ~self.class_mask)

    def log_proba(self, X: torch.Tensor) -> torch.Tensor:
        return log_softmax(self.logits(X)).clamp_min(LOG_PROB_FLOOR)


def _mlp_logits(X, W1, b1, W2, b2, mu, sd, neg_mask):
    """Logits ``(F, n, P, K)`` (a view of a problem-major ``(F, P, n, K)`` tensor). The hidden
    layer is computed problem-major, ``(F, P, n, h)``, so neither layer's product nor its backward
    pass copies the largest tensor into another layout."""
    W_eff = W1 / sd.unsqueeze(-1)
    b_eff = b1 - torch.einsum("fpd,fpdh->fph", mu, W_eff)
    H = torch.relu(torch.matmul(X.unsqueeze(1), W_eff) + b_eff.unsqueeze(2))      # (F, P, n, h)
    Z = (torch.matmul(H, W2) + b2.unsqueeze(2)).permute(0, 2, 1, 3)               # (F, n, P, K)
    return Z.masked_fill(neg_mask, float("-inf")) if bool(neg_mask.any()) else Z


def _mlp_init(F, P, d, h, K, seed, dev, dt) -> list[torch.Tensor]:
    """PyTorch-style uniform initialisation. ``seed``: one int for the whole batch, or one per
    problem (then a problem's initial weights do not depend on what it is batched with, and
    are shared by all F feature sets)."""
    def uniform(gen, shape, bound):
        return (torch.rand(shape, generator=gen, dtype=torch.float32) * 2 - 1) * bound

    shapes = [((d, h), 1 / math.sqrt(d)), ((h,), 1 / math.sqrt(d)), ((h, K), 1 / math.sqrt(h))]
    if np.ndim(seed) == 0:
        gen = torch.Generator().manual_seed(int(seed) % (2**63))
        out = [uniform(gen, (F, P, *shape), bound) for shape, bound in shapes]
    else:
        seeds = np.asarray(seed).ravel()
        if len(seeds) != P:
            raise ValueError(f"got {len(seeds)} seeds for {P} problems")
        per = [[], [], []]
        for sd in seeds:
            gen = torch.Generator().manual_seed(int(sd) % (2**63))
            for lst, (shape, bound) in zip(per, shapes):
                lst.append(uniform(gen, shape, bound))
        out = [torch.stack(lst).unsqueeze(0).expand(F, *([-1] * (len(shape) + 1)))
               for lst, (shape, _) in zip(per, shapes)]
    out = [t.to(device=dev, dtype=dt).contiguous() for t in out]
    return out + [torch.zeros(F, P, K, device=dev, dtype=dt)]


def fit_mlp_batched(
    X: torch.Tensor,
    y,
    fit_mask,
    val_mask,
    *,
    hidden: int = 64,
    alpha: float = 3e-3,
    lr: float = 3e-2,
    max_epochs: int = 1000,
    patience: int = 20,
    min_delta: float = 1e-5,
    lr_scale_dim: float = 16.0,
    n_classes: int | None = None,
    class_mask=None,
    seed: int | Sequence[int] = 0,
) -> MLPFit:
    """Fit ``F x P`` one-hidden-layer ReLU MLPs at once.

    Full-batch Adam on the mean cross-entropy of each problem's ``fit_mask`` rows plus
    ``alpha/2 (||W1||^2 + ||W2||^2)``; each problem keeps the weights of its best held-out
    cross-entropy on its ``val_mask`` rows and stops after ``patience`` epochs without improving
    it by ``min_delta`` nats (or at ``max_epochs``), so it converges rather than hitting a cap.
    The first layer's learning rate is ``lr * min(1, sqrt(lr_scale_dim / d))`` so one setting
    suits 2 and 4,096 input dimensions. Stopped problems are dropped from the computation.
    """
    dev, dt = X.device, X.dtype
    F, n, d = X.shape
    y = as_tensor(y, dev, torch.int64)
    fit_mask = as_tensor(fit_mask, dev, torch.bool)
    val_mask = as_tensor(val_mask, dev, torch.bool)
    P = y.shape[0]
    K = int(n_classes if n_classes is not None else int(y.max()) + 1)
    if class_mask is None:
        class_mask = present_classes(y, fit_mask, K)
    class_mask = as_tensor(class_mask, dev, torch.bool)
    neg_all = ~class_mask
    mu_all, sd_all = masked_standardisation(X, fit_mask)
    h = int(hidden)
    params = _mlp_init(F, P, d, h, K, seed, dev, dt)
    lrs = [lr * min(1.0, math.sqrt(lr_scale_dim / max(d, 1)))] * 2 + [lr * min(1.0, math.sqrt(lr_scale_dim / h))] * 2
    best = [p.clone() for p in params]
    m1 = [torch.zeros_like(p) for p in params]
    m2 = [torch.zeros_like(p) for p in params]
    w_fit_all = (fit_mask.to(dt) / fit_mask.sum(1).clamp_min(1).to(dt).unsqueeze(1)).T.unsqueeze(0)   # (1, n, P)
    w_val_all = (val_mask.to(dt) / val_mask.sum(1).clamp_min(1).to(dt).unsqueeze(1)).T.unsqueeze(0)
    y_idx_all = label_index(y, class_mask).unsqueeze(0)                                           # (1, n, P, 1)
    best_val = torch.full((F, P), float("inf"), device=dev, dtype=dt)
    best_epoch = torch.zeros(F, P, dtype=torch.int64, device=dev)
    since = torch.zeros(F, P, dtype=torch.int64, device=dev)
    stopped = torch.zeros(F, P, dtype=torch.bool, device=dev)
    fi = pi = None                     # current block (None = all)

    def block():
        return (take_block(X, fi, None), take_block(mu_all, fi, pi), take_block(sd_all, fi, pi), take_block(neg_all, pi, None),
                take_block(w_fit_all, None, pi, 0, 2), take_block(w_val_all, None, pi, 0, 2), take_block(y_idx_all, None, pi, 0, 2))

    Xb, mu, sd, neg, w_fit, w_val, y_idx = block()
    for epoch in range(max_epochs):
        leaves = [p.requires_grad_() for p in params]
        Z = _mlp_logits(Xb, *leaves, mu, sd, neg)
        nll = -torch.gather(log_softmax(Z), -1, y_idx.expand(Xb.shape[0], -1, -1, -1)).squeeze(-1)  # (Fb, n, Pb)
        with torch.no_grad():
            val = (nll * w_val).sum(1)
            st_b = take_block(stopped, fi, pi)               # a stopped problem is frozen for good
            improved = (val < take_block(best_val, fi, pi) - min_delta) & ~st_b
            if bool(improved.any()):
                for b_, p_ in zip(best, params):
                    cur = take_block(b_, fi, pi)
                    put_block(b_, fi, pi, torch.where(improved.reshape(*improved.shape, *([1] * (p_.ndim - 2))), p_, cur))
                put_block(best_val, fi, pi, torch.where(improved, val, take_block(best_val, fi, pi)))
                put_block(best_epoch, fi, pi, torch.where(improved, torch.full_like(improved, epoch, dtype=torch.int64),
                                                     take_block(best_epoch, fi, pi)))
            s_b = torch.where(improved, torch.zeros_like(val, dtype=torch.int64), take_block(since, fi, pi) + 1)
            put_block(since, fi, pi, s_b)
            put_block(stopped, fi, pi, st_b | (s_b > patience))
            if bool(stopped.all()):
                break
        loss = (nll * w_fit).sum() + 0.5 * alpha * ((leaves[0] ** 2).sum() + (leaves[2] ** 2).sum())
        grads = torch.autograd.grad(loss, leaves)
        with torch.no_grad():
            params = [p.detach() for p in leaves]
            adam_step(params, grads, m1, m2, epoch + 1, lrs)
            # drop stopped problems from the computation once that saves enough
            act_b = ~take_block(stopped, fi, pi)
            si, sj = active_block(act_b, shrink=0.7)
            if si is not None or sj is not None:
                params = [take_block(p_, si, sj) for p_ in params]
                m1 = [take_block(a_, si, sj) for a_ in m1]
                m2 = [take_block(b_, si, sj) for b_ in m2]
                fi, pi = compose_index(fi, si), compose_index(pi, sj)
                Xb, mu, sd, neg, w_fit, w_val, y_idx = block()
    return MLPFit(*best, mu_all, sd_all, class_mask, best_epoch, best_val, stopped)

