"""Probe estimators, implemented in torch and batched.

Two families:

* ``linear``: multinomial logistic regression with an L2 penalty (scikit-learn's ``C``
  convention: minimise ``C * sum_i loss_i + 1/2 ||W||^2``; binary problems are penalised the
  way scikit-learn's binary logistic regression is), fitted by full-batch L-BFGS.
* ``mlp``: one hidden ReLU layer, full-batch Adam, early stopping on an inner validation split.

The functional core (:func:`fit_linear_batched`, :func:`fit_mlp_batched`) fits many problems at
once: ``F`` feature matrices that share a feature dimension, stacked into ``X`` of shape
``(F, n, d)``, times ``P`` problems (fold x label variant x regularisation value) that share the
sample axis and differ in their labels and in which rows they train on. Every (feature set,
problem) pair is an independent optimisation; they are only stacked so that one matrix product
serves them all. Standardisation is fitted per problem on its own training rows and folded into
the weights, so the features are never copied per fold.

The scikit-learn-style estimators :class:`LinearProbe` and :class:`MLPProbe` wrap the core for a
single data set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

from logitleak.errors import LogitleakError

DEFAULT_CS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)
"""Inverse regularisation strengths tried by the linear probe (scikit-learn's ``C``)."""

LOG_PROB_FLOOR = math.log(1e-9)
"""Predicted log-probabilities are floored here (about 30 bits) so one impossible-looking
prediction cannot make a held-out cross-entropy infinite."""

_VAR_EPS = 1e-10


# --------------------------------------------------------------------------------------------
# devices, features, statistics


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` -> CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def prepare_features(
    arrays: Sequence[np.ndarray] | np.ndarray,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Stack ``F`` arrays of shape ``(n, d)`` into an ``(F, n, d)`` tensor on ``device``.

    Each column is centred and scaled by its mean and standard deviation over all rows. This
    is label-free and cancels exactly under the per-fold standardisation the probes apply (an
    affine map per column followed by standardisation on the training rows equals standardisation
    on the training rows), so it only serves numerical precision. Returns the tensor and the
    ``(F, d)`` shifts and scales that were applied.
    """
    if isinstance(arrays, np.ndarray) and arrays.ndim == 2:
        arrays = [arrays]
    mats, shifts, scales = [], [], []
    for a in arrays:
        a = np.asarray(a, dtype=np.float64)
        if a.ndim == 1:
            a = a[:, None]
        mu = a.mean(0)
        sd = a.std(0)
        sd = np.where(sd > 1e-12 * np.maximum(1.0, np.abs(mu)), sd, 1.0)
        mats.append(((a - mu) / sd).astype(np.float32 if dtype == torch.float32 else np.float64))
        shifts.append(mu)
        scales.append(sd)
    X = torch.from_numpy(np.stack(mats)).to(device=resolve_device(device), dtype=dtype)
    return X, np.stack(shifts), np.stack(scales)


def _as_tensor(a, device, dtype=None) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.to(device=device, dtype=dtype) if dtype is not None else a.to(device)
    return torch.as_tensor(np.asarray(a), device=device, dtype=dtype)


def masked_standardisation(X: torch.Tensor, fit_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-problem column means and standard deviations over each problem's training rows.

    ``X`` ``(F, n, d)``, ``fit_mask`` ``(P, n)`` bool -> ``mu``, ``sd`` of shape ``(F, P, d)``.
    Computed in float64 (problems that share a mask share the computation); columns with no
    variance on the training rows get scale 1, as scikit-learn's ``StandardScaler`` does.
    """
    uniq, inv = torch.unique(fit_mask, dim=0, return_inverse=True)
    w = uniq.to(torch.float64)
    w = w / w.sum(1, keepdim=True).clamp_min(1.0)
    mus, sds = [], []
    for f in range(X.shape[0]):                    # one feature set at a time bounds the float64 copy
        x64 = X[f].to(torch.float64)
        mu = w @ x64                               # (U, d)
        var = (w @ (x64 * x64) - mu * mu).clamp_min(0.0)
        sd = torch.where(var > _VAR_EPS, var.sqrt(), torch.ones_like(var))
        mus.append(mu[inv].to(X.dtype))
        sds.append(sd[inv].to(X.dtype))
    return torch.stack(mus), torch.stack(sds)


def present_classes(y: torch.Tensor, fit_mask: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``(P, K)`` bool: which classes occur among each problem's training rows."""
    P = y.shape[0]
    counts = torch.zeros(P, n_classes, device=y.device)
    counts.scatter_add_(1, y.clamp(0, n_classes - 1), fit_mask.to(counts.dtype))
    return counts > 0


def _label_index(y: torch.Tensor, class_mask: torch.Tensor) -> torch.Tensor:
    """``(n, P, 1)`` label index for gathering; rows whose label is not an active class (they are
    never trained on) point at the first active class so gathers stay finite."""
    first = class_mask.to(torch.int64).argmax(1)                    # (P,)
    ok = torch.gather(class_mask, 1, y.clamp_min(0)) & (y >= 0)      # (P, n)
    y = torch.where(ok, y, first[:, None])
    return y.T.contiguous().unsqueeze(-1)


# --------------------------------------------------------------------------------------------
# batched L-BFGS


def _take(t: torch.Tensor, fi, pi, d0: int = 0, d1: int = 1) -> torch.Tensor:
    """Sub-block of ``t`` on rows ``fi`` of dim ``d0`` and ``pi`` of dim ``d1`` (None = all)."""
    if fi is not None:
        t = t.index_select(d0, fi)
    if pi is not None:
        t = t.index_select(d1, pi)
    return t


def _put(t: torch.Tensor, fi, pi, val: torch.Tensor, d0: int = 0, d1: int = 1) -> None:
    """In place: ``t[fi, pi] = val`` on dims ``(d0, d1)``."""
    if fi is None and pi is None:
        t.copy_(val)
    elif fi is None:
        t.index_copy_(d1, pi, val)
    elif pi is None:
        t.index_copy_(d0, fi, val)
    else:
        tmp = t.index_select(d0, fi)
        tmp.index_copy_(d1, pi, val)
        t.index_copy_(d0, fi, tmp)


class _LinearObjective:
    """Mean cross-entropy over each problem's training rows + its L2 penalty.

    Problems are the ``F x P`` (feature set, problem) pairs, addressed by flat index
    ``f * P + p``. Evaluations run on any sorted subset of pairs (the ones still optimising),
    one matrix product per feature set, so converged problems cost nothing."""

    def __init__(self, X, y_idx, w, lam, mu, sd, class_mask):
        F, n, d = X.shape
        P, K = class_mask.shape
        self.X, self.F, self.n, self.d, self.P, self.K = X, F, n, d, P, K
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

    def logits(self, theta, ctx):
        W, b = self.unpack(theta)
        B, d, K, n = W.shape[0], self.d, self.K, self.n
        W_eff = W / ctx["sd"].unsqueeze(-1)
        b_eff = b - torch.einsum("bd,bdk->bk", ctx["mu"], W_eff)
        Z = torch.empty(n, B, K, device=theta.device, dtype=theta.dtype)
        for f, s0, s1 in ctx["groups"]:
            Z[:, s0:s1] = (self.X[f] @ W_eff[s0:s1].permute(1, 0, 2).reshape(d, -1)).reshape(n, s1 - s0, K)
        Z += b_eff
        if ctx["neg"] is not None:
            Z.masked_fill_(ctx["neg"].unsqueeze(0), float("-inf"))
        return Z

    def value(self, theta, ctx):
        """Objective values ``(B,)`` and class probabilities ``(n, B, K)`` at ``theta`` ``(B, D)``."""
        W, _ = self.unpack(theta)
        logp = _log_softmax(self.logits(theta, ctx))
        nll = -torch.gather(logp, -1, ctx["y"]).squeeze(-1)               # (n, B)
        f = (nll * ctx["w"]).sum(0) + 0.5 * ctx["lam"] * (W * W).sum((1, 2))
        return f, logp.exp_()

    def grad(self, theta, probs, ctx):
        W, _ = self.unpack(theta)
        n, d, K = self.n, self.d, self.K
        G = probs.clone()
        G.scatter_add_(-1, ctx["y"], torch.full_like(G[..., :1], -1.0))
        G.mul_(ctx["w"].unsqueeze(-1))
        g_eff = torch.empty_like(W)
        for f, s0, s1 in ctx["groups"]:
            g_eff[s0:s1] = (self.X[f].T @ G[:, s0:s1].reshape(n, -1)).reshape(d, s1 - s0, K).permute(1, 0, 2)
        g_b = G.sum(0)                                                    # (B, K)
        sd = ctx["sd"].unsqueeze(-1)
        g_W = g_eff / sd - (ctx["mu"].unsqueeze(-1) / sd) * g_b.unsqueeze(1) + ctx["lam"][:, None, None] * W
        return torch.cat([g_W.reshape(W.shape[0], d * K), g_b], -1)


def _log_softmax(Z: torch.Tensor) -> torch.Tensor:
    """``log_softmax`` over a short last axis (torch's kernel is slow when it has 2-10 entries)."""
    m = Z.amax(-1, keepdim=True)
    Zm = Z - m
    return Zm - Zm.exp().sum(-1, keepdim=True).log()


def _linear_logits(X, W, b, mu, sd, neg_mask):
    """Logits ``(F, n, P, K)`` of standardised-space weights ``W`` (F,P,d,K), ``b`` (F,P,K)."""
    F, n, d = X.shape
    P, K = W.shape[1], W.shape[3]
    W_eff = W / sd.unsqueeze(-1)
    b_eff = b - torch.einsum("fpd,fpdk->fpk", mu, W_eff)
    Z = torch.bmm(X, W_eff.permute(0, 2, 1, 3).reshape(F, d, P * K)).reshape(F, n, P, K)
    Z = Z + b_eff.unsqueeze(1)
    return Z.masked_fill(neg_mask, float("-inf")) if bool(neg_mask.any()) else Z


def _active_block(active: torch.Tensor, shrink: float = 0.8):
    """Rows / columns of the (F, P) grid that hold an active problem, or None (= all) when
    restricting would not save at least ``1 - shrink`` of the work."""
    fi = active.any(1).nonzero().squeeze(1)
    pi = active.any(0).nonzero().squeeze(1)
    F, P = active.shape
    if len(fi) * len(pi) > shrink * F * P:
        return None, None
    return (fi if len(fi) < F else None), (pi if len(pi) < P else None)


def _lbfgs(obj: _LinearObjective, theta: torch.Tensor, *, max_iter: int, gtol: float, ftol: float,
           history: int, max_ls: int = 20) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Minimise every problem independently: per-problem two-loop recursion, per-problem
    backtracking (Armijo, quadratic interpolation) line search, per-problem convergence.
    ``theta`` is ``(B, D)`` over all flat (feature set, problem) pairs; objective evaluations
    run only on the pairs still optimising (and, within a line search, still searching).
    Returns theta, iterations, converged flags (all ``(B, ...)``)."""
    B, D = theta.shape
    dev, dt = theta.device, theta.dtype
    all_idx = torch.arange(B, device=dev)
    ctx = obj.context(all_idx)
    f, probs = obj.value(theta, ctx)
    g = obj.grad(theta, probs, ctx)
    del probs, ctx
    m = history
    S = torch.zeros(m, B, D, device=dev, dtype=dt)
    Yh = torch.zeros_like(S)
    rho = torch.zeros(m, B, device=dev, dtype=dt)
    gamma = torch.ones(B, device=dev, dtype=dt)
    fresh = torch.ones(B, dtype=torch.bool, device=dev)      # no curvature pair yet
    fails = torch.zeros(B, dtype=torch.int64, device=dev)
    n_iter = torch.zeros(B, dtype=torch.int64, device=dev)
    active = g.abs().amax(-1) > gtol
    converged = ~active
    k = 0
    for _ in range(max_iter):
        act = active.nonzero().squeeze(1)
        A = len(act)
        if A == 0:
            break
        # two-loop recursion on the active problems (slots with rho == 0 are empty)
        g_a = g[act]
        q = g_a.clone()
        order = [(k - 1 - j) % m for j in range(min(k, m))]
        S_a = [S[i, act] for i in order]
        Y_a = [Yh[i, act] for i in order]
        rho_a = [rho[i, act] for i in order]
        alphas = []
        for s_i, y_i, r_i in zip(S_a, Y_a, rho_a):
            a = r_i * (s_i * q).sum(-1)
            q.sub_(a.unsqueeze(-1) * y_i)
            alphas.append(a)
        r = q * gamma[act].unsqueeze(-1)
        for s_i, y_i, r_i, a in reversed(list(zip(S_a, Y_a, rho_a, alphas))):
            beta = r_i * (y_i * r).sum(-1)
            r.add_(s_i * (a - beta).unsqueeze(-1))
        d = -r
        gtd = (g_a * d).sum(-1)
        bad = ~(gtd < 0)                                           # not a descent direction
        if bool(bad.any()):
            d = torch.where(bad.unsqueeze(-1), -g_a, d)
            gtd = torch.where(bad, -(g_a * g_a).sum(-1), gtd)
        # first step of a fresh problem: torch's LBFGS rule, step length <= 1
        t = torch.where(fresh[act], torch.clamp(1.0 / g_a.abs().sum(-1).clamp_min(1e-30), max=1.0),
                        torch.ones(A, device=dev, dtype=dt))
        th_a, f_a = theta[act], f[act]
        ctx = obj.context(act)
        accepted = torch.zeros(A, dtype=torch.bool, device=dev)
        th_new, f_new = th_a.clone(), f_a.clone()
        probs_new = None
        for _ls in range(max_ls):
            pend = (~accepted).nonzero().squeeze(1)
            if len(pend) == A:
                trial = th_a + t.unsqueeze(-1) * d
                f_t, probs_t = obj.value(trial, ctx)
            else:
                trial = th_a[pend] + t[pend].unsqueeze(-1) * d[pend]
                f_t, probs_t = obj.value(trial, obj.context(act[pend]))
            if probs_new is None:
                probs_new = probs_t if len(pend) == A else torch.zeros(probs_t.shape[0], A, probs_t.shape[2],
                                                                        device=dev, dtype=dt)
            ok = torch.isfinite(f_t) & (f_t <= f_a[pend] + 1e-4 * t[pend] * gtd[pend])
            if bool(ok.any()):
                okp = pend[ok]
                th_new[okp] = trial[ok]
                f_new[okp] = f_t[ok]
                if probs_new is not probs_t:
                    probs_new[:, okp] = probs_t[:, ok]
                accepted[okp] = True
            if bool(accepted.all()):
                break
            # quadratic interpolation of the step, kept within [0.1, 0.5] of the last one
            no = pend[~ok]
            tt, ff, gg, fn = t[no], f_a[no], gtd[no], f_t[~ok]
            denom = 2.0 * (fn - ff - gg * tt)
            t_q = torch.where(torch.isfinite(fn) & (denom > 0), -gg * tt * tt / denom.clamp_min(1e-30), 0.5 * tt)
            t[no] = torch.minimum(torch.maximum(t_q, 0.1 * tt), 0.5 * tt)
        failed_a = ~accepted
        if bool(failed_a.any()):
            # problems that found no step keep theta; their probabilities at the old point
            keep = failed_a.nonzero().squeeze(1)
            _, probs_k = obj.value(th_a[keep], obj.context(act[keep]))
            probs_new[:, keep] = probs_k
        g_new_a = obj.grad(th_new, probs_new, ctx)
        del probs_new, probs_t, ctx
        # curvature pairs for the active problems
        s = th_new - th_a
        yv = g_new_a - g_a
        sy = (s * yv).sum(-1)
        yy = (yv * yv).sum(-1)
        good = accepted & (sy > 1e-10 * yy) & (yy > 0)
        slot = k % m
        S[slot].zero_()
        Yh[slot].zero_()
        rho[slot].zero_()
        S[slot, act] = torch.where(good.unsqueeze(-1), s, torch.zeros_like(s))
        Yh[slot, act] = torch.where(good.unsqueeze(-1), yv, torch.zeros_like(yv))
        rho[slot, act] = torch.where(good, 1.0 / sy.clamp_min(1e-30), torch.zeros_like(sy))
        gamma[act] = torch.where(good, sy / yy.clamp_min(1e-30), gamma[act])
        fresh[act] = fresh[act] & ~good
        k += 1
        # a failed line search drops that problem's memory and retries once with steepest descent
        fails[act] = torch.where(failed_a, fails[act] + 1, torch.zeros_like(fails[act]))
        if bool(failed_a.any()):
            lost = act[failed_a]
            rho[:, lost] = 0.0
            fresh[lost] = True
        n_iter[act] += 1
        rel = (f_a - f_new).abs() / torch.maximum(torch.maximum(f_a.abs(), f_new.abs()), torch.ones_like(f_a))
        small_g = g_new_a.abs().amax(-1) <= gtol
        ok_conv = small_g | (accepted & (rel <= ftol))
        converged[act] = ok_conv
        active[act] = ~(ok_conv | (fails[act] >= 2))
        theta[act] = th_new
        f[act] = f_new
        g[act] = g_new_a
    return theta, n_iter, converged


def _compose(outer, inner):
    """Index ``inner`` (into a block) composed with the block's own index ``outer`` (None = all)."""
    if inner is None:
        return outer
    if outer is None:
        return inner
    return outer.index_select(0, inner)


# --------------------------------------------------------------------------------------------
# linear probe, batched


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
        return _log_softmax(self.logits(X)).clamp_min(LOG_PROB_FLOOR)

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
    y = _as_tensor(y, dev, torch.int64)
    fit_mask = _as_tensor(fit_mask, dev, torch.bool)
    K = int(n_classes if n_classes is not None else int(y.max()) + 1)
    if class_mask is None:
        class_mask = present_classes(y, fit_mask, K)
    class_mask = _as_tensor(class_mask, dev, torch.bool)
    P = y.shape[0]
    d = X.shape[2]
    C_t = _as_tensor(C, dev, torch.float64)
    C_t = C_t.expand(F, P).clone() if C_t.ndim < 2 else C_t.clone()
    n_fit = fit_mask.sum(1)
    lam = _l2_strength(C_t, n_fit.unsqueeze(0), class_mask).to(dt)
    mu, sd = masked_standardisation(X, fit_mask)
    w = (fit_mask.to(dt) / n_fit.clamp_min(1).to(dt).unsqueeze(1)).T.contiguous()   # (n, P)
    y_idx = _label_index(y, class_mask)                                                 # (n, P, 1)
    obj = _LinearObjective(X, y_idx, w, lam, mu, sd, class_mask)
    theta = torch.zeros(F, P, (d + 1) * K, device=dev, dtype=dt)
    if init is not None:
        theta[..., : d * K] = init.W.masked_fill(~class_mask[None, :, None, :], 0.0).reshape(F, P, d * K)
        theta[..., d * K:] = init.b.masked_fill(~class_mask, 0.0)
    ftol = 4 * torch.finfo(dt).eps
    theta, n_iter, converged = _lbfgs(obj, theta.reshape(F * P, -1), max_iter=max_iter, gtol=tol, ftol=ftol,
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
    y = _as_tensor(y, dev, torch.int64)
    fit_mask = _as_tensor(fit_mask, dev, torch.bool)
    inner_fit_mask = _as_tensor(inner_fit_mask, dev, torch.bool)
    inner_val_mask = _as_tensor(inner_val_mask, dev, torch.bool)
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
    y_idx = _label_index(yg, grid.class_mask).unsqueeze(0).expand(F, -1, -1, -1)
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


# --------------------------------------------------------------------------------------------
# MLP probe, batched


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

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        return _mlp_logits(X, self.W1, self.b1, self.W2, self.b2, self.mu, self.sd, ~self.class_mask)

    def log_proba(self, X: torch.Tensor) -> torch.Tensor:
        return _log_softmax(self.logits(X)).clamp_min(LOG_PROB_FLOOR)


def _mlp_logits(X, W1, b1, W2, b2, mu, sd, neg_mask):
    F, n, d = X.shape
    P, h = W1.shape[1], W1.shape[3]
    W_eff = W1 / sd.unsqueeze(-1)
    b_eff = b1 - torch.einsum("fpd,fpdh->fph", mu, W_eff)
    H = torch.bmm(X, W_eff.permute(0, 2, 1, 3).reshape(F, d, P * h)).reshape(F, n, P, h)
    H = torch.relu(H + b_eff.unsqueeze(1))
    Z = torch.matmul(H.permute(0, 2, 1, 3), W2).permute(0, 2, 1, 3) + b2.unsqueeze(1)   # (F, n, P, K)
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
    y = _as_tensor(y, dev, torch.int64)
    fit_mask = _as_tensor(fit_mask, dev, torch.bool)
    val_mask = _as_tensor(val_mask, dev, torch.bool)
    P = y.shape[0]
    K = int(n_classes if n_classes is not None else int(y.max()) + 1)
    if class_mask is None:
        class_mask = present_classes(y, fit_mask, K)
    class_mask = _as_tensor(class_mask, dev, torch.bool)
    neg_all = ~class_mask
    mu_all, sd_all = masked_standardisation(X, fit_mask)
    h = int(hidden)
    params = _mlp_init(F, P, d, h, K, seed, dev, dt)
    lrs = [lr * min(1.0, math.sqrt(lr_scale_dim / max(d, 1)))] * 2 + [lr * min(1.0, math.sqrt(lr_scale_dim / h))] * 2
    best = [p.clone() for p in params]
    m1 = [torch.zeros_like(p) for p in params]
    m2 = [torch.zeros_like(p) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    w_fit_all = (fit_mask.to(dt) / fit_mask.sum(1).clamp_min(1).to(dt).unsqueeze(1)).T.unsqueeze(0)   # (1, n, P)
    w_val_all = (val_mask.to(dt) / val_mask.sum(1).clamp_min(1).to(dt).unsqueeze(1)).T.unsqueeze(0)
    y_idx_all = _label_index(y, class_mask).unsqueeze(0)                                           # (1, n, P, 1)
    best_val = torch.full((F, P), float("inf"), device=dev, dtype=dt)
    best_epoch = torch.zeros(F, P, dtype=torch.int64, device=dev)
    since = torch.zeros(F, P, dtype=torch.int64, device=dev)
    stopped = torch.zeros(F, P, dtype=torch.bool, device=dev)
    fi = pi = None                     # current block (None = all)

    def block():
        return (_take(X, fi, None), _take(mu_all, fi, pi), _take(sd_all, fi, pi), _take(neg_all, pi, None),
                _take(w_fit_all, None, pi, 0, 2), _take(w_val_all, None, pi, 0, 2), _take(y_idx_all, None, pi, 0, 2))

    Xb, mu, sd, neg, w_fit, w_val, y_idx = block()
    for epoch in range(max_epochs):
        leaves = [p.requires_grad_() for p in params]
        Z = _mlp_logits(Xb, *leaves, mu, sd, neg)
        nll = -torch.gather(_log_softmax(Z), -1, y_idx.expand(Xb.shape[0], -1, -1, -1)).squeeze(-1)  # (Fb, n, Pb)
        with torch.no_grad():
            val = (nll * w_val).sum(1)
            st_b = _take(stopped, fi, pi)               # a stopped problem is frozen for good
            improved = (val < _take(best_val, fi, pi) - min_delta) & ~st_b
            if bool(improved.any()):
                for b_, p_ in zip(best, params):
                    cur = _take(b_, fi, pi)
                    _put(b_, fi, pi, torch.where(improved.reshape(*improved.shape, *([1] * (p_.ndim - 2))), p_, cur))
                _put(best_val, fi, pi, torch.where(improved, val, _take(best_val, fi, pi)))
                _put(best_epoch, fi, pi, torch.where(improved, torch.full_like(improved, epoch, dtype=torch.int64),
                                                     _take(best_epoch, fi, pi)))
            s_b = torch.where(improved, torch.zeros_like(val, dtype=torch.int64), _take(since, fi, pi) + 1)
            _put(since, fi, pi, s_b)
            _put(stopped, fi, pi, st_b | (s_b > patience))
            if bool(stopped.all()):
                break
        loss = (nll * w_fit).sum() + 0.5 * alpha * ((leaves[0] ** 2).sum() + (leaves[2] ** 2).sum())
        grads = torch.autograd.grad(loss, leaves)
        with torch.no_grad():
            t = epoch + 1
            params = [p.detach() for p in leaves]
            for p_, g_, a_, b_, lr_ in zip(params, grads, m1, m2, lrs):
                a_.mul_(beta1).add_(g_, alpha=1 - beta1)
                b_.mul_(beta2).addcmul_(g_, g_, value=1 - beta2)
                denom = (b_ / (1 - beta2 ** t)).sqrt_().add_(eps)
                p_.addcdiv_(a_, denom, value=-lr_ / (1 - beta1 ** t))
            # drop stopped problems from the computation once that saves enough
            act_b = ~_take(stopped, fi, pi)
            si, sj = _active_block(act_b, shrink=0.7)
            if si is not None or sj is not None:
                params = [_take(p_, si, sj) for p_ in params]
                m1 = [_take(a_, si, sj) for a_ in m1]
                m2 = [_take(b_, si, sj) for b_ in m2]
                fi, pi = _compose(fi, si), _compose(pi, sj)
                Xb, mu, sd, neg, w_fit, w_val, y_idx = block()
    return MLPFit(*best, mu_all, sd_all, class_mask, best_epoch, best_val)


# --------------------------------------------------------------------------------------------
# splits used inside the probes


def stratified_holdout(codes: np.ndarray, fraction: float, rng: np.random.Generator,
                       groups: np.ndarray | None = None, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split ``rows`` (default all) into (fit, held-out) index arrays, about ``fraction`` held out
    per class; with ``groups``, whole groups move together (a group counts as its most frequent
    label). Every class with at least two units keeps at least one unit on each side."""
    rows = np.arange(len(codes)) if rows is None else np.asarray(rows)
    c = np.asarray(codes)[rows]
    if groups is None:
        unit_of = np.arange(len(rows))
        unit_label = c
    else:
        _, unit_of = np.unique(np.asarray(groups)[rows], return_inverse=True)
        n_units = unit_of.max() + 1
        counts = np.zeros((n_units, int(c.max()) + 1), dtype=np.int64)
        np.add.at(counts, (unit_of, c), 1)
        unit_label = counts.argmax(1)
    held_units = []
    for cls in np.unique(unit_label):
        units = np.flatnonzero(unit_label == cls)
        units = units[rng.permutation(len(units))]
        k = int(round(fraction * len(units)))
        if len(units) >= 2:
            k = min(max(k, 1), len(units) - 1)
        else:
            k = 0
        held_units.append(units[:k])
    held = np.zeros(len(unit_label), dtype=bool)
    held[np.concatenate(held_units)] = True
    is_held = held[unit_of]
    return rows[~is_held], rows[is_held]


# --------------------------------------------------------------------------------------------
# scikit-learn-style estimators


class _TorchProbe(ClassifierMixin, BaseEstimator):
    def _prepare_fit(self, X, y):
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X[:, None]
        if X.ndim != 2:
            raise LogitleakError(f"Probe features must be a 2-D array (samples x features), got shape {X.shape}; reshape them.")
        if not np.isfinite(X).all():
            raise LogitleakError("Probe features contain NaN or infinite values; fill or drop them before fitting.")
        y = np.asarray(y)
        if len(y) != len(X):
            raise LogitleakError(f"Probe got {len(X)} feature rows but {len(y)} labels; pass one label per row.")
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise LogitleakError("Probe labels have a single class; a probe needs at least two classes.")
        self.n_features_in_ = X.shape[1]
        self._device = resolve_device(self.device)
        self._dtype = self.dtype or torch.float32
        Xt, shift, scale = prepare_features([X], self._device, self._dtype)
        self._shift, self._scale = shift[0], scale[0]
        return Xt, codes

    def _transform(self, X) -> torch.Tensor:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X[:, None]
        if X.shape[1] != self.n_features_in_:
            raise LogitleakError(
                f"Probe was fitted on {self.n_features_in_} features but got {X.shape[1]}; pass the same feature columns.")
        Xs = (X - self._shift) / self._scale
        return torch.as_tensor(Xs, dtype=self._dtype, device=self._device).unsqueeze(0)

    def predict_log_proba(self, X) -> np.ndarray:
        lp = self.fit_.log_proba(self._transform(X))[0, :, 0, :]
        return lp.double().cpu().numpy()

    def predict_proba(self, X) -> np.ndarray:
        p = np.exp(self.predict_log_proba(X))
        p[:, ~self.fit_.class_mask[0].cpu().numpy()] = 0.0
        return p / p.sum(1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.predict_log_proba(X).argmax(1)]


class LinearProbe(_TorchProbe):
    """L2 multinomial logistic-regression probe (torch, L-BFGS), standardising on its training rows.

    ``C``: fixed inverse regularisation strength (scikit-learn convention); ``None`` chooses it
    from ``Cs`` by held-out cross-entropy on a stratified ``val_fraction`` split of the training
    rows, then refits on all of them. Learned: ``classes_``, ``C_``, ``coef_`` ``(K, d)`` and
    ``intercept_`` ``(K,)`` on the raw features (symmetric softmax parametrisation, also for two
    classes), ``mean_``, ``scale_``, ``n_iter_``.
    """

    def __init__(self, C: float | None = None, Cs: Sequence[float] = DEFAULT_CS, val_fraction: float = 0.2,
                 max_iter: int = 1000, tol: float = 1e-5, device: str | None = None,
                 dtype: torch.dtype | None = None, random_state: int = 0):
        self.C = C
        self.Cs = Cs
        self.val_fraction = val_fraction
        self.max_iter = max_iter
        self.tol = tol
        self.device = device
        self.dtype = dtype
        self.random_state = random_state

    def fit(self, X, y):
        Xt, codes = self._prepare_fit(X, y)
        K = len(self.classes_)
        yt = codes[None, :]
        full = np.ones((1, len(codes)), dtype=bool)
        if self.C is not None:
            fit = fit_linear_batched(Xt, yt, full, C=float(self.C), n_classes=K, max_iter=self.max_iter, tol=self.tol)
        else:
            rng = np.random.default_rng(self.random_state)
            inner_fit, inner_val = stratified_holdout(codes, self.val_fraction, rng)
            fm = np.zeros_like(full)
            fm[0, inner_fit] = True
            vm = np.zeros_like(full)
            vm[0, inner_val] = True
            fit = fit_linear_grid_batched(Xt, yt, full, fm, vm, Cs=self.Cs, n_classes=K,
                                          max_iter=self.max_iter, tol=self.tol)
        self.fit_ = fit
        self.C_ = float(fit.C[0, 0])
        self.n_iter_ = int(fit.n_iter[0, 0])
        sd = fit.sd[0, 0].double().cpu().numpy() * self._scale
        mu = fit.mu[0, 0].double().cpu().numpy() * self._scale + self._shift
        W = fit.W[0, 0].double().cpu().numpy()
        b = fit.b[0, 0].double().cpu().numpy()
        self.mean_, self.scale_ = mu, sd
        self.coef_ = (W / sd[:, None]).T
        self.intercept_ = b - (mu / sd) @ W
        return self


class MLPProbe(_TorchProbe):
    """One-hidden-layer ReLU MLP probe (torch, full-batch Adam) with early stopping on a stratified
    ``val_fraction`` split of the training rows; standardises on the rows it trains on.
    Learned: ``classes_``, ``n_epochs_`` (epoch of the kept weights), ``best_val_loss_``."""

    def __init__(self, hidden: int = 64, alpha: float = 3e-3, lr: float = 3e-2, max_epochs: int = 1000,
                 patience: int = 20, val_fraction: float = 0.2, device: str | None = None,
                 dtype: torch.dtype | None = None, random_state: int = 0):
        self.hidden = hidden
        self.alpha = alpha
        self.lr = lr
        self.max_epochs = max_epochs
        self.patience = patience
        self.val_fraction = val_fraction
        self.device = device
        self.dtype = dtype
        self.random_state = random_state

    def fit(self, X, y):
        Xt, codes = self._prepare_fit(X, y)
        rng = np.random.default_rng(self.random_state)
        inner_fit, inner_val = stratified_holdout(codes, self.val_fraction, rng)
        fm = np.zeros((1, len(codes)), dtype=bool)
        fm[0, inner_fit] = True
        vm = np.zeros_like(fm)
        vm[0, inner_val] = True
        self.fit_ = fit_mlp_batched(Xt, codes[None, :], fm, vm, hidden=self.hidden, alpha=self.alpha, lr=self.lr,
                                    max_epochs=self.max_epochs, patience=self.patience,
                                    n_classes=len(self.classes_), seed=self.random_state)
        self.n_epochs_ = int(self.fit_.n_epochs[0, 0])
        self.best_val_loss_ = float(self.fit_.best_val[0, 0])
        return self
