"""The whole-response levels: what a generated response (``--generate N``) lets one read.

An attacker holding a whole response has the top-k of every returned token; the white-box
auditor also has the residual stream at every generated position. Pure functions of a capture
(read through :class:`~logitleak.capture.source.CaptureSource`, in memory or on disk) that holds
the ``gen_*`` arrays; positions after the response ended (``gen_mask`` False) are left out.

- ``response_residual`` (layer l): the raw residual at layer l averaged over the response's positions.
- ``response_topk_ids`` (k): the top-k of every returned token combined: one column per token id
  seen in any position's top-k across the set, holding the highest log-probability that id got at
  any position of the response, a floor (1 nat below the smallest value seen) where it never
  appeared — the bag of alternatives an API user collects.
- ``response_topk_logprobs`` (k): the sorted top-k values of each position side by side
  (``G * k`` columns, the floor past the end): values in order, no ids.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from logitleak.errors import LogitleakError
from logitleak.levels.table import (
    RESPONSE,
    RESPONSE_API_LEVELS,
    RESPONSE_HIDDEN,
    RESPONSE_LEVELS,
)


def has_response(cap) -> bool:
    """Whether the capture holds a generated response."""
    return RESPONSE in cap.contents


def has_response_hidden(cap) -> bool:
    return RESPONSE_HIDDEN in cap.contents


def response_mask(cap) -> torch.Tensor:
    """``(N, G)`` bool: positions before the response ended."""
    return cap.read_response_mask()


def response_topk(cap) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, G, K)`` log-probabilities (nan where missing) and ids (-1 where missing)."""
    return cap.read_response_topk()


def response_hidden(cap, layer: int) -> torch.Tensor:
    """``(N, G, D)`` float32 raw residual at ``layer`` at every generated position."""
    return cap.read_response_hidden(layer)


def response_residual(cap, layer: int, mask: torch.Tensor | None = None) -> np.ndarray:
    """``(N, D)`` mean raw residual over the response's positions at ``layer`` (``mask``: if already read)."""
    h = response_hidden(cap, layer)
    m = (response_mask(cap) if mask is None else mask).float().unsqueeze(-1)
    return ((h * m).sum(1) / m.sum(1).clamp(min=1)).numpy()


def _read_topk(cap) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (*response_topk(cap), response_mask(cap))


def _valid(lp: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if k > lp.shape[-1]:
        raise LogitleakError(f"k={k} is larger than the {lp.shape[-1]} alternatives kept per generated token; pass k up "
                             f"to {lp.shape[-1]}.")
    lp, ids = lp[..., :k], ids[..., :k]
    valid = mask.unsqueeze(-1) & (ids >= 0) & torch.isfinite(lp)
    return lp, ids, valid


def response_topk_ids(cap, k: int, read: tuple | None = None) -> np.ndarray:
    """``(N, |U|)`` the response's alternatives combined (see the module docstring); ``read``:
    ``(logprobs, ids, mask)`` if already read."""
    lp, ids, valid = _valid(*(read or _read_topk(cap)), k)
    if not bool(valid.any()):
        raise LogitleakError("No token ids came back for any generated token; response_topk_ids needs ids.")
    union = torch.unique(ids[valid])
    floor = float(lp[valid].min()) - 1.0
    n = lp.shape[0]
    rows = torch.arange(n).view(n, 1, 1).expand_as(ids)[valid]
    cols = torch.searchsorted(union, ids[valid])
    out = torch.full((n * union.numel(),), floor, dtype=torch.float32)
    out.scatter_reduce_(0, rows * union.numel() + cols, lp[valid], reduce="amax", include_self=True)
    return out.view(n, union.numel()).numpy()


def response_topk_logprobs(cap, k: int, read: tuple | None = None) -> np.ndarray:
    """``(N, G * k)`` each position's sorted top-k values side by side, the floor where missing."""
    lp, ids, valid = _valid(*(read or _read_topk(cap)), k)
    if not bool(valid.any()):
        raise LogitleakError("No log-probabilities came back for any generated token.")
    floor = float(lp[valid].min()) - 1.0
    filled = torch.where(valid, lp, torch.full_like(lp, floor))
    return filled.reshape(lp.shape[0], -1).numpy()


def response_features(cap, levels: Iterable[str], layers: Iterable[int], ks: Iterable[int]) -> dict:
    """``{(level, layer | None, k | None): (N, F) float32}`` for the requested response levels."""
    levels = [lv for lv in levels if lv in RESPONSE_LEVELS]
    if not levels:
        return {}
    if not has_response(cap):
        raise LogitleakError(f"Level {levels[0]!r} needs a generated response; pass --generate N (e.g. 8) or drop the "
                             "response levels.")
    feats: dict = {}
    mask = response_mask(cap)  # each array is read once (from disk, for a stored capture)
    if "response_residual" in levels:
        for layer in layers:
            feats[("response_residual", int(layer), None)] = response_residual(cap, int(layer), mask)
    read = (*response_topk(cap), mask) if any(lv in RESPONSE_API_LEVELS for lv in levels) else None
    for k in sorted({int(k) for k in ks}):
        if "response_topk_ids" in levels:
            feats[("response_topk_ids", None, k)] = response_topk_ids(cap, k, read)
        if "response_topk_logprobs" in levels:
            feats[("response_topk_logprobs", None, k)] = response_topk_logprobs(cap, k, read)
    return {key: np.ascontiguousarray(v, dtype=np.float32) for key, v in feats.items()}
