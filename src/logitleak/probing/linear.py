"""The linear probe, batched: L2 multinomial logistic regression fitted by L-BFGS, and its choice of C."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from logitleak.probing.lbfgs import minimize_lbfgs
from logitleak.probing.tensors import (
    LOG_PROB_FLOOR,
    as_tensor,
    label_index,
    log_softmax,
    masked_standardisation,
    present_classes,
)

DEFAULT_CS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)
"""Inverse regularisation strengths tried by the linear probe (scikit-learn's ``C``)."""


class _LinearObjective:
    """Mean cross-entropy over each problem's training rows + its L2 penalty.

    Problems are the ``F x P`` (feature set, problem) pairs, addressed by flat index
    ``f * P + p``. Evaluations run on any sorted subset of pairs (the ones still optimising),
    one matrix product per feature set, so converged problems cost nothing."""

    def __init__(self, X, y_idx, w, lam, mu, sd, class_mask):
        F, n, d = X.shape
        P, K = class_mask.shape
        self.F, self.n, self.d, self.P, self.K = F, n, d, P, K
        self.Xa = torch.cat([X, X.new_ones(F, n, 1)], -1)   # (F, n, d + 1): the bias as a column of ones
        self.y_idx = y_idx                       # (n, P, 1)
        self.w = w                               # (n, P) weights summing to 1 over each problem's rows
        self.lam = lam.reshape(F * P)
        self.mu = mu.reshape(F * P, d)
        self.sd = sd.reshape(F * P, d)
        self.neg = ~class_mask
        self.any_neg = bool(self.neg.any())

    def context(self, idx: torch.Tensor) -> dict:
        """Everything gathered once for the pairs ``idx`` (sorted flat indices)."""
        p = idx % self.P
        f = idx // self.P
        fs, counts = torch.unique_consecutive(f, return_counts=True)
        bounds = np.concatenate([[0], np.cumsum(counts.cpu().numpy())])
        groups = [(int(fv), int(bounds[i]), int(bounds[i + 1])) for i, fv in enumerate(fs.cpu().numpy())]
        return {"idx": idx, "groups": groups, "y": self.y_idx[:, p], "w": self.w[:, p], "lam": self.lam[idx],
                "mu": self.mu[idx], "sd": self.sd[idx], "neg": self.neg[p] if self.any_neg else None}

    def unpack(self, theta):
        d, K = self.d, self.K
        return theta[:, : d * K].reshape(-1, d, K), theta[:, d * K:]

    def value_grad(self, theta: torch.Tensor, ctx: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Objective values ``(B,)`` and gradients ``(B, D)`` at ``theta`` ``(B, D)``.

        One pass over the ``(n, B, K)`` logits: the bias rides the matrix product as a column of
        ones, absent classes get a bias of ``-inf``, and the softmax is turned into the weighted
        gradient in place, so the largest tensor is written once and read four times."""
        W, b = self.unpack(theta)
        B, d, K, n = W.shape[0], self.d, self.K, self.n
        sd, mu = ctx["sd"].unsqueeze(-1), ctx["mu"]
        W_eff = W / sd
        b_eff = b - torch.einsum("bd,bdk->bk", mu, W_eff)
        if ctx["neg"] is not None:
            b_eff = b_eff.masked_fill(ctx["neg"], float("-inf"))
        Wa = torch.cat([W_eff, b_eff.unsqueeze(1)], 1)                    # (B, d + 1, K)
        groups = ctx["groups"]
        if len(groups) == 1:                                              # one feature set: no copy
            Z = (self.Xa[groups[0][0]] @ Wa.permute(1, 0, 2).reshape(d + 1, -1)).view(n, B, K)
        else:
            Z = torch.empty(n, B, K, device=theta.device, dtype=theta.dtype)
            for f, s0, s1 in groups:
                Z[:, s0:s1] = (self.Xa[f] @ Wa[s0:s1].permute(1, 0, 2).reshape(d + 1, -1)).view(n, s1 - s0, K)
        y, w = ctx["y"], ctx["w"]
        zy = torch.gather(Z, -1, y).squeeze(-1)                           # (n, B)
        m = Z.amax(-1, keepdim=True)
        Z.sub_(m).exp_()
        s = Z.sum(-1, keepdim=True)
        nll = s.log().squeeze(-1).add_(m.squeeze(-1)).sub_(zy)            # (n, B)
        f = (nll * w).sum(0) + 0.5 * ctx["lam"] * (W * W).sum((1, 2))
        G = Z.mul_(w.unsqueeze(-1) / s)                                   # weighted probabilities
        G.scatter_add_(-1, y, -w.unsqueeze(-1))
        ga = torch.empty(B, d + 1, K, device=theta.device, dtype=theta.dtype)
        for f_, s0, s1 in ctx["groups"]:
            ga[s0:s1] = (self.Xa[f_].T @ G[:, s0:s1].reshape(n, -1)).reshape(d + 1, s1 - s0, K).permute(1, 0, 2)
        g_b = ga[:, d]                                                    # (B, K): the ones column
        g_W = ga[:, :d] / sd - (mu.unsqueeze(-1) / sd) * g_b.unsqueeze(1) + ctx["lam"][:, None, None] * W
        return f, torch.cat([g_W.reshape(B, d * K), g_b], -1)


def _linear_logits(X, W, b, mu, sd, neg_mask):
    """Logits ``(F, n, P, K)`` of standardised-space weights ``W`` (F,P,d,K), ``b`` (F,P,K)."""
    F, n, d = X.shape
    P, K = W.shape[1], W.shape[3]
    W_eff = W / sd.unsqueeze(-1)
    b_eff = b - torch.einsum("fpd,fpdk->fpk", mu, W_eff)
    Z = torch.bmm(X, W_eff.permute(0, 2, 1, 3).reshape(F, d, P * K)).reshape(F, n, P, K)
    Z = Z + b_eff.unsqueeze(1)
    return Z.masked_fill(neg_mask, float("-inf")) if bool(neg_mask.any()) else Z


@dataclass
class LinearFit:
    """Fitted batch of linear probes. ``W`` (F,P,d,K) and ``b`` (F,P,K) act on standardised
    features; ``mu``/``sd`` (F,P,d) are each problem's training-row standardisation."""

    W: torch.Tensor
    b: torch.Tensor
    mu: torch.Tensor
    sd: torch.Tensor
    class_mask: torch.Tensor
    C: torch.Tensor
    n_iter: torch.Tensor
    converged: torch.Tensor

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        return _linear_logits(X, self.W, self.b, self.mu, self.sd, ~self.class_mask)

    def log_proba(self, X: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``(F, n, P, K)`` for every row of ``X`` (F, n, d); inactive classes
        get the floor value."""
        return log_softmax(self.logits(X)).clamp_min(LOG_PROB_FLOOR)

    def subset(self, idx) -> LinearFit:
        """The problems ``idx`` (an index over P) only."""
        return LinearFit(self.W[:, idx], self.b[:, idx], self.mu[:, idx], self.sd[:, idx],
                         self.class_mask[idx], self.C[:, idx], self.n_iter[:, idx], self.converged[:, idx])


def _l2_strength(C: torch.Tensor, n_fit: torch.Tensor, class_mask: torch.Tensor) -> torch.Tensor:
    """Mean-form penalty ``lam`` with ``mean_loss + lam/2 ||W||^2`` equal to scikit-learn's
    ``C * sum_loss + 1/2 ||W||^2`` (up to the factor ``C n``). Two-class problems use the
    symmetric softmax, whose penalty at the optimum is half the binary one, so it is doubled."""
    n_active = class_mask.sum(1).to(C.dtype)                       # (P,)
    factor = torch.where(n_active <= 2, 2.0, 1.0).to(C.dtype)
    return factor / (C * n_fit.to(C.dtype).clamp_min(1.0))


def fit_linear_batched(
    X: torch.Tensor,
    y,
    fit_mask,
    *,
    C=1.0,
    n_classes: int | None = None,
    class_mask=None,
    max_iter: int = 1000,
    tol: float = 1e-5,
    history: int = 6,
    init: LinearFit | None = None,
) -> LinearFit:
    """Fit ``F x P`` L2 multinomial logistic regressions at once.

    ``X``: ``(F, n, d)`` tensor (see :func:`prepare_features`). ``y``: ``(P, n)`` integer labels
    (``-1`` allowed on rows a problem never trains on). ``fit_mask``: ``(P, n)`` bool, the
    training rows of each problem. ``C``: scalar, ``(P,)`` or ``(F, P)`` inverse penalty
    strength in scikit-learn's convention. ``class_mask`` ``(P, K)``: the classes each problem
    may predict (default: the classes present among its training rows, as scikit-learn does).
    Convergence: max-norm of the mean-form gradient ``<= tol`` or a negligible relative decrease.
    """
    dev, dt = X.device, X.dtype
    F = X.shape[0]
    y = as_tensor(y, dev, torch.int64)
    fit_mask = as_tensor(fit_mask, dev, torch.bool)
    K = int(n_classes if n_classes is not None else int(y.max()) + 1)
    if class_mask is None:
        class_mask = present_classes(y, fit_mask, K)
    class_mask = as_tensor(class_mask, dev, torch.bool)
    P = y.shape[0]
    d = X.shape[2]
    C_t = as_tensor(C, dev, torch.float64)
    C_t = C_t.expand(F, P).clone() if C_t.ndim < 2 else C_t.clone()
    n_fit = fit_mask.sum(1)
    lam = _l2_strength(C_t, n_fit.unsqueeze(0), class_mask).to(dt)
    mu, sd = masked_standardisation(X, fit_mask)
    w = (fit_mask.to(dt) / n_fit.clamp_min(1).to(dt).unsqueeze(1)).T.contiguous()   # (n, P)
    y_idx = label_index(y, class_mask)                                                 # (n, P, 1)
    obj = _LinearObjective(X, y_idx, w, lam, mu, sd, class_mask)
    theta = torch.zeros(F, P, (d + 1) * K, device=dev, dtype=dt)
    if init is not None:
        theta[..., : d * K] = init.W.masked_fill(~class_mask[None, :, None, :], 0.0).reshape(F, P, d * K)
        theta[..., d * K:] = init.b.masked_fill(~class_mask, 0.0)
    ftol = 4 * torch.finfo(dt).eps
    theta, n_iter, converged = minimize_lbfgs(obj, theta.reshape(F * P, -1), max_iter=max_iter, gtol=tol, ftol=ftol,
                                      history=history)
    theta = theta.reshape(F, P, -1)
    W, b = theta[..., : d * K].reshape(F, P, d, K), theta[..., d * K:]
    return LinearFit(W.contiguous(), b.contiguous(), mu, sd, class_mask, C_t, n_iter.reshape(F, P),
                     converged.reshape(F, P))


def fit_linear_grid_batched(
    X: torch.Tensor,
    y,
    fit_mask,
    inner_fit_mask,
    inner_val_mask,
    *,
    Cs: Sequence[float] = DEFAULT_CS,
    n_classes: int | None = None,
    **kwargs,
) -> LinearFit:
    """Choose ``C`` per (feature set, problem) from ``Cs`` by the held-out cross-entropy on
    ``inner_val_mask`` of a fit on ``inner_fit_mask`` (both inside the problem's training rows),
    then refit on ``fit_mask`` with the chosen ``C`` (warm-started). Ties go to the smaller C."""
    dev = X.device
    F = X.shape[0]
    y = as_tensor(y, dev, torch.int64)
    fit_mask = as_tensor(fit_mask, dev, torch.bool)
    inner_fit_mask = as_tensor(inner_fit_mask, dev, torch.bool)
    inner_val_mask = as_tensor(inner_val_mask, dev, torch.bool)
    P = y.shape[0]
    K = int(n_classes if n_classes is not None else int(y.max()) + 1)
    Cs = sorted(float(c) for c in Cs)
    G = len(Cs)
    if G == 1:
        return fit_linear_batched(X, y, fit_mask, C=Cs[0], n_classes=K, **kwargs)
    yg = y.repeat_interleave(G, 0)                                  # problem-major, C-minor
    grid = fit_linear_batched(X, yg, inner_fit_mask.repeat_interleave(G, 0),
                              C=torch.tensor(Cs, dtype=torch.float64, device=dev).repeat(P),
                              n_classes=K, **kwargs)
    logp = grid.log_proba(X)                                        # (F, n, P*G, K)
    y_idx = label_index(yg, grid.class_mask).unsqueeze(0).expand(F, -1, -1, -1)
    nll = -torch.gather(logp, -1, y_idx).squeeze(-1)                # (F, n, P*G)
    vm = inner_val_mask.repeat_interleave(G, 0).T.to(logp.dtype)    # (n, P*G)
    val = (nll * vm).sum(1) / vm.sum(0).clamp_min(1.0)
    best = val.reshape(F, P, G).argmin(-1)                          # (F, P)
    del logp, nll
    sel = (torch.arange(P, device=dev) * G).unsqueeze(0) + best      # (F, P) index into P*G
    C_best = torch.tensor(Cs, dtype=torch.float64, device=dev)[best]
    init = LinearFit(
        torch.gather(grid.W, 1, sel[..., None, None].expand(-1, -1, *grid.W.shape[2:])),
        torch.gather(grid.b, 1, sel.unsqueeze(-1).expand(-1, -1, K)),
        grid.mu, grid.sd, grid.class_mask, C_best, grid.n_iter, grid.converged,
    )
    class_mask = present_classes(y, fit_mask, K)
    return fit_linear_batched(X, y, fit_mask, C=C_best, n_classes=K, class_mask=class_mask, init=init, **kwargs)

