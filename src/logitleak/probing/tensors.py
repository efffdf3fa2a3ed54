"""Tensor helpers shared by the batched probes: devices, feature stacking, per-problem standardisation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

LOG_PROB_FLOOR = math.log(1e-9)
"""Predicted log-probabilities are floored here (about 30 bits) so one impossible-looking
prediction cannot make a held-out cross-entropy infinite."""

_VAR_EPS = 1e-10


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or ``auto`` -> the first GPU when available, else CPU (:func:`~logitleak.models.devices.compute_device`)."""
    if isinstance(device, torch.device):
        return device
    from logitleak.models.devices import compute_device

    return torch.device(compute_device(device))


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


def prepare_like(arrays: Sequence[np.ndarray], shifts: np.ndarray, scales: np.ndarray,
                 device: str | torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Other rows of the same columns (e.g. a victim's outputs beside a shadow model's) through the
    shifts and scales :func:`prepare_features` applied to the first arrays, so a probe fitted there
    reads them on the same scale: ``(F, n, d)``."""
    mats = [((np.asarray(a, dtype=np.float64).reshape(len(a), -1) - mu) / sd).astype(
        np.float32 if dtype == torch.float32 else np.float64) for a, mu, sd in zip(arrays, shifts, scales)]
    return torch.from_numpy(np.stack(mats)).to(device=resolve_device(device), dtype=dtype)


def as_tensor(a, device, dtype=None) -> torch.Tensor:
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


def label_index(y: torch.Tensor, class_mask: torch.Tensor) -> torch.Tensor:
    """``(n, P, 1)`` label index for gathering; rows whose label is not an active class (they are
    never trained on) point at the first active class so gathers stay finite."""
    first = class_mask.to(torch.int64).argmax(1)                    # (P,)
    ok = torch.gather(class_mask, 1, y.clamp_min(0)) & (y >= 0)      # (P, n)
    y = torch.where(ok, y, first[:, None])
    return y.T.contiguous().unsqueeze(-1)


# --------------------------------------------------------------------------------------------
# sub-blocks of the (feature set, problem) grid: the problems still running


def take_block(t: torch.Tensor, fi, pi, d0: int = 0, d1: int = 1) -> torch.Tensor:
    """Sub-block of ``t`` on rows ``fi`` of dim ``d0`` and ``pi`` of dim ``d1`` (None = all)."""
    if fi is not None:
        t = t.index_select(d0, fi)
    if pi is not None:
        t = t.index_select(d1, pi)
    return t


def put_block(t: torch.Tensor, fi, pi, val: torch.Tensor, d0: int = 0, d1: int = 1) -> None:
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


def log_softmax(Z: torch.Tensor) -> torch.Tensor:
    """``log_softmax`` over a short last axis (torch's kernel is slow when it has 2-10 entries)."""
    m = Z.amax(-1, keepdim=True)
    Zm = Z - m
    return Zm - Zm.exp().sum(-1, keepdim=True).log()


def active_block(active: torch.Tensor, shrink: float = 0.8):
    """Rows / columns of the (F, P) grid that hold an active problem, or None (= all) when
    restricting would not save at least ``1 - shrink`` of the work."""
    fi = active.any(1).nonzero().squeeze(1)
    pi = active.any(0).nonzero().squeeze(1)
    F, P = active.shape
    if len(fi) * len(pi) > shrink * F * P:
        return None, None
    return (fi if len(fi) < F else None), (pi if len(pi) < P else None)


def compose_index(outer, inner):
    """Index ``inner`` (into a block) composed with the block's own index ``outer`` (None = all)."""
    if inner is None:
        return outer
    if outer is None:
        return inner
    return outer.index_select(0, inner)

