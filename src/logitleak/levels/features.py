"""The representational levels as pure functions of a capture (no second pass through the model).

A *capture* here is anything with the :class:`~logitleak.capture.source.CaptureSource`
interface: a :class:`~logitleak.capture.source.Capture` in memory or a
:class:`~logitleak.capture.stored.StoredCapture` on disk (read lazily, one layer at a time; its
full logits are read at most once per :func:`build_features` call). The lens levels need a
:class:`~logitleak.models.readout.Readout`: the model's final norm and unembedding, held on their own.

Level names and what each needs come from :mod:`logitleak.levels.table`. :func:`build_features` returns
``{(level, layer | None, k | None): (N, F) float32 array}`` (the residual and pca levels of a float16
capture stay float16, exactly as stored; the probes upcast per batch).

``topk_ids`` — top-k *with token identities* — is the matrix an attacker builds from
``top_logprobs``: one column per token id in the union ``U`` of ids that appear in any sample's
top-k across the set (sorted by id), filled with the sample's log-probability where that id is in
its top-k and with a floor elsewhere. The floor is the smallest log-probability observed anywhere
in the set's top-k minus 1 nat: below everything seen (an unlisted token is known only to be less
likely than the k-th), finite, and on the same scale as the data. ``U`` and the floor are computed
from the whole capture without labels, as an attacker with the same queries would.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from logitleak.capture.source import CaptureSource, check_layer
from logitleak.errors import LogitleakError
from logitleak.levels import transition as T
from logitleak.levels.logit_lens import Lens, LogitLens
from logitleak.levels.plan import plan_levels, runnable_levels
from logitleak.levels.response import response_features
from logitleak.levels.table import (
    ANSWERS,
    BY_NAME,
    DECODER_LAYER_LEVELS,
    DEFAULT_PCA_DIMS,
    K_LEVELS,
    LAYER_LEVELS,
    LENS,
    LOGITS,
    OUTPUT_K_LEVELS,
)
from logitleak.models.readout import Readout
from logitleak.models.tokens import api_topk, check_k

ROW_CHUNK = 2048  # rows of (N, V) lens logits computed at once: bounds memory for large vocabularies

FeatureKey = tuple[str, int | None, int | None]


# ----------------------------------------------------------------------------- access

def n_samples(cap: CaptureSource) -> int:
    return len(cap)


def n_layers_of(cap: CaptureSource) -> int:
    return int(cap.n_layers)


def hidden_at(cap: CaptureSource, layer: int, rows: slice | None = None) -> torch.Tensor:
    """``(N, D)`` float32 raw residual at ``layer`` of any capture (``rows``: a subset)."""
    x = cap.read_hidden(layer)
    return x if rows is None else x[rows]


def final_logits(cap: CaptureSource) -> torch.Tensor | None:
    """``(N, V)`` float32 final logits, or ``None`` for a black-box capture (read from disk once per call)."""
    return cap.read_logits() if LOGITS in cap.contents else None


def _check_layer(cap: CaptureSource, layer: int) -> None:
    check_layer(layer, n_layers_of(cap))


# ----------------------------------------------------------------------------- levels

def residual(cap: CaptureSource, layer: int) -> np.ndarray:
    """``(N, D)`` float32 raw residual stream at ``layer`` (0 = embeddings, l = block l - 1's output)."""
    _check_layer(cap, layer)
    return hidden_at(cap, layer).numpy()


def lens_logits(cap: CaptureSource, readout: Readout, lens: Lens, layer: int) -> torch.Tensor:
    """``(N, V)`` a lens's logits at ``layer``: the readout of the residual the lens translated."""
    _check_layer(cap, layer)
    with torch.no_grad():
        return readout(lens.transform_hidden(hidden_at(cap, layer).to(readout.device), layer))


def logit_lens(cap: CaptureSource, readout: Readout, layer: int) -> torch.Tensor:
    """``(N, V)`` logit-lens logits at ``layer``: the readout (final norm + unembedding) of the raw residual."""
    return lens_logits(cap, readout, LogitLens(), layer)


def topk_values(x: torch.Tensor, k: int) -> np.ndarray:
    """``(N, k)`` the k largest values of each row, sorted descending, without ids."""
    check_k(k, x.shape[-1], "k", of="the values available")
    return torch.topk(x.float(), k, dim=-1, sorted=True).values.numpy()


def restrict(x: torch.Tensor, token_ids: Sequence[int]) -> np.ndarray:
    """``(N, |ids|)`` the columns of ``x`` at ``token_ids`` (e.g. the answer words), in that order."""
    ids = torch.as_tensor(list(token_ids), dtype=torch.long)
    if ids.numel() == 0:
        raise LogitleakError("The answer token id list is empty; pass the ids of the answer words.")
    if int(ids.min()) < 0 or int(ids.max()) >= x.shape[-1]:
        raise LogitleakError(f"Answer token ids must lie in 0..{x.shape[-1] - 1}; got {int(ids.min())}..{int(ids.max())}.")
    return x.float()[:, ids].numpy()


LOGITS_FULL_MAX = 4096
"""Vocabularies up to this size are probed on the logits as they are; larger ones in the
unembedding's orthonormal coordinates (see :func:`logits_features`)."""


def logits_features(logits: torch.Tensor, readout: Readout | None) -> np.ndarray:
    """The ``logits`` level's features. Up to :data:`LOGITS_FULL_MAX` tokens: the ``(N, V)`` logits.
    Beyond: the logits' coordinates in an orthonormal basis ``Q`` of the unembedding's columns,
    ``(z - b) @ Q`` ``(N, D)`` (softcap and scale undone first). Every logit vector minus the bias
    lies in that column space, so this is an isometry of the logit vectors: the same information
    and distances in D features instead of V (a linear probe over 49k features on a few thousand
    samples would cost hours and read nothing more)."""
    V = logits.shape[-1]
    if readout is None or V <= LOGITS_FULL_MAX or V != readout.vocab_size or readout.d_model >= V:
        return logits.numpy()
    Q, _ = torch.linalg.qr(readout.weight.double())                       # (V, D), orthonormal columns
    Q = Q.float()
    out = np.empty((len(logits), readout.d_model), np.float32)
    for r0 in range(0, len(logits), ROW_CHUNK):
        z = logits[r0:r0 + ROW_CHUNK].float().to(Q.device)  # on the readout's device (the first GPU in an audit)
        if readout.softcap is not None:                                   # tanh(x / c) * c, inverted
            c = readout.softcap
            z = torch.atanh((z / c).clamp(-1 + 1e-6, 1 - 1e-6)) * c
        if readout.scale is not None:
            z = z / readout.scale
        if readout.bias is not None:
            z = z - readout.bias
        out[r0:r0 + ROW_CHUNK] = (z @ Q).cpu().numpy()
    return out


def topk_logprobs(logits: torch.Tensor, k: int) -> np.ndarray:
    """``(N, k)`` top-k log-probabilities (log-softmax of the logits), sorted descending, no ids."""
    return api_topk(logits.float(), k)[0].numpy()


def topk_ids_matrix(ids: torch.Tensor, logprobs: torch.Tensor, floor: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(N, |U|)`` top-k with identities, and ``U`` (sorted ids): see the module docstring.
    ``ids`` / ``logprobs``: ``(N, k)``; ids ``-1`` (or values ``nan``) mark missing entries."""
    ids = torch.as_tensor(ids).long()
    lp = torch.as_tensor(logprobs).float()
    valid = (ids >= 0) & torch.isfinite(lp)
    if not bool(valid.any()):
        raise LogitleakError("No token ids were returned for any sample; the topk_ids level needs ids (drop it for an "
                             "API that returns values only).")
    union = torch.unique(ids[valid])
    if floor is None:
        floor = float(lp[valid].min()) - 1.0
    out = torch.full((ids.shape[0], union.numel()), floor, dtype=torch.float32)
    col = torch.searchsorted(union, ids.clamp(min=0))
    rows = torch.arange(ids.shape[0]).unsqueeze(1).expand_as(ids)
    out[rows[valid], col[valid]] = lp[valid]
    return out.numpy(), union.numpy()


def top1_prob(cap: CaptureSource, logits: torch.Tensor | None = None) -> np.ndarray:
    """``(N, 1)`` probability of the most likely token (``logits``: the capture's, if already read)."""
    if logits is None:
        logits = final_logits(cap)
    if logits is not None:
        return torch.softmax(logits, dim=-1).max(dim=-1, keepdim=True).values.numpy()
    lp = _api_logprobs(cap)
    return torch.exp(torch.nan_to_num(lp[:, :1], nan=float("-inf"))).numpy()


def _api_logprobs(cap) -> torch.Tensor:
    return _api_returned(cap)[0]


def _api_returned(cap) -> tuple[torch.Tensor, torch.Tensor]:
    got = cap.read_api_topk()
    if got is None:
        raise LogitleakError("This capture has neither logits nor top-k log-probabilities; capture it again.")
    return got


def _api_topk(cap, k: int, returned: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """First k returned (logprobs, ids) of a black-box capture, missing values at the floor."""
    lp, ids = returned if returned is not None else _api_returned(cap)
    check_k(k, lp.shape[1], "k", of="the endpoint returned")
    return lp[:, :k], ids[:, :k].long()


def _fill_missing(values: torch.Tensor) -> np.ndarray:
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return values.numpy()
    floor = float(values[finite].min()) - 1.0 if bool(finite.any()) else -100.0
    return torch.where(finite, values, torch.full_like(values, floor)).numpy()


# ----------------------------------------------------------------------------- features

def available_levels(cap: CaptureSource, *, lens=None, answer_token_ids=None) -> list[str]:
    """Levels :func:`build_features` can compute for this capture (in :data:`LEVELS` order),
    from what it holds (``cap.contents``) and the table's needs; no array is read."""
    return runnable_levels(_contents(cap, lens, answer_token_ids))


def _contents(cap: CaptureSource, lens, answer_token_ids) -> set[str]:
    """What a capture holds, with the tuned lens and the answer words when given."""
    return set(cap.contents) | ({LENS} if lens is not None else set()) | (
        {ANSWERS} if answer_token_ids is not None else set())


def _lens_features(h_all: torch.Tensor, readout: Readout, layer: int, ks: Sequence[int], answer_ids, lens: Lens,
                   want_topk: bool, want_answers: bool) -> tuple[dict[int, np.ndarray], np.ndarray | None]:
    """Top-k values (per k) and answer-restricted logits of one lens at one layer, in row chunks
    (``h_all``: the layer's residuals, read once for every level of the layer)."""
    N = len(h_all)
    kmax = max(ks) if (want_topk and ks) else 0
    if kmax:
        check_k(kmax, readout.vocab_size, "k")
    tops, answers = [], []
    ids = torch.as_tensor(list(answer_ids), dtype=torch.long) if want_answers else None
    if ids is not None and (ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= readout.vocab_size):
        raise LogitleakError(f"Answer token ids must be a non-empty list within 0..{readout.vocab_size - 1}.")
    with torch.no_grad():
        for r0 in range(0, N, ROW_CHUNK):
            h = h_all[r0:r0 + ROW_CHUNK].to(readout.device)  # the readout's device: the first GPU in an audit
            logits = readout(lens.transform_hidden(h, layer))
            if kmax:
                tops.append(torch.topk(logits, kmax, dim=-1, sorted=True).values.cpu())
            if ids is not None:
                answers.append(logits[:, ids.to(logits.device)].cpu())
    topk = {}
    if kmax:
        top = torch.cat(tops).numpy()
        topk = {k: np.ascontiguousarray(top[:, :k]) for k in ks}
    return topk, (torch.cat(answers).numpy() if ids is not None else None)


def build_features(cap: CaptureSource, readout: Readout | None, *, levels: Iterable[str], layers: Iterable[int], ks: Iterable[int],
                   lens=None, answer_token_ids: Sequence[int] | None = None,
                   pca_dims: Iterable[int] = DEFAULT_PCA_DIMS,
                   vision_layers: Iterable[int] | None = None) -> dict[FeatureKey, np.ndarray]:
    """Every requested level as a feature matrix: ``{(level, layer | None, k | None): (N, F) float32}``
    (``residual`` and ``pca`` in float16 when the capture holds float16 states: the probes upcast per batch).

    The vision-to-language levels (:mod:`logitleak.levels.transition`): ``vision`` one entry per vision
    state (``vision_layers``, default all), ``projector`` one, ``image_residual`` one per layer;
    ``pca`` one per (layer, ``d`` in ``pca_dims``), its matrix the residual itself (the components
    are fitted inside each training fold by the probes).

    Layer levels (``residual``, ``*_lens_*``) get one entry per layer in ``layers``; final-output
    levels use ``layer=None``. ``k`` is set for the top-k levels and ``None`` elsewhere. A
    black-box capture (no logits, only ``topk_logprobs`` / ``topk_ids``) yields ``topk_ids``,
    ``topk_logprobs`` and ``top1_prob`` (for k up to what the API returned).
    """
    levels = plan_levels(levels, _contents(cap, lens, answer_token_ids))  # every level can run, or one sentence
    layers = [int(x) for x in layers]
    ks = sorted({int(k) for k in ks}) if ks is not None else []
    for k in ks:
        check_k(k, 10**12, "k")
    need_k = [lv for lv in levels if lv in K_LEVELS]
    if need_k and not ks:
        raise LogitleakError(f"Level {need_k[0]!r} needs at least one k; pass ks such as [1, 5, 10].")
    lens_levels = [lv for lv in levels if lv in LAYER_LEVELS and lv != "residual"]
    if lens_levels and readout is None:
        raise LogitleakError(f"Level {lens_levels[0]!r} needs the model's readout (adapter.readout()).")
    for layer in layers if any(lv in DECODER_LAYER_LEVELS for lv in levels) else []:
        _check_layer(cap, layer)

    feats: dict[FeatureKey, np.ndarray] = T.transition_features(cap, levels, layers, vision_layers)
    pca_dims = list(pca_dims)
    for layer in layers:
        if not any(lv in levels for lv in LAYER_LEVELS + ("pca",)):
            continue
        h = hidden_at(cap, layer)  # read once, shared by the residual, pca and both lenses
        if "residual" in levels or "pca" in levels:
            # shared by residual and pca; float16 where the capture holds float16 (exact), upcast per probe batch
            res = np.ascontiguousarray(h.numpy(), dtype=cap.state_dtype)
            if "residual" in levels:
                feats[("residual", layer, None)] = res
            if "pca" in levels:
                feats.update(T.pca_features({("residual", layer, None): res}, pca_dims))
        for name, lens_obj in (("logit_lens", LogitLens()), ("tuned_lens", lens)):
            want_topk, want_ans = f"{name}_topk" in levels, f"{name}_answers" in levels
            if not (want_topk or want_ans):
                continue
            topk, ans = _lens_features(h, readout, layer, ks, answer_token_ids, lens_obj, want_topk, want_ans)
            for k, v in topk.items():
                feats[(f"{name}_topk", layer, k)] = v
            if ans is not None:
                feats[(f"{name}_answers", layer, None)] = ans

    output = [lv for lv in levels if BY_NAME[lv].stage == "output"]
    logits = final_logits(cap) if output else None  # read once, shared by every output level
    if logits is not None:
        if "logits" in levels:
            feats[("logits", None, None)] = logits_features(logits, readout)
        api_levels = [lv for lv in OUTPUT_K_LEVELS if lv in levels]
        if api_levels:
            kmax = max(ks)
            lp_values, lp_ids = api_topk(logits, kmax)
            lg_top = torch.topk(logits, kmax, dim=-1, sorted=True).values if "topk_logits" in levels else None
            for k in ks:
                if "topk_ids" in levels:
                    feats[("topk_ids", None, k)] = topk_ids_matrix(lp_ids[:, :k], lp_values[:, :k])[0]
                if "topk_logprobs" in levels:
                    feats[("topk_logprobs", None, k)] = np.ascontiguousarray(lp_values[:, :k].numpy())
                if lg_top is not None:
                    feats[("topk_logits", None, k)] = np.ascontiguousarray(lg_top[:, :k].numpy())
    elif "topk_ids" in levels or "topk_logprobs" in levels:
        returned = _api_returned(cap)
        for k in ks:
            lp, ids = _api_topk(cap, k, returned)
            if "topk_ids" in levels:
                feats[("topk_ids", None, k)] = topk_ids_matrix(ids, lp)[0]
            if "topk_logprobs" in levels:
                feats[("topk_logprobs", None, k)] = _fill_missing(lp.clone())
    if "top1_prob" in levels:
        feats[("top1_prob", None, None)] = top1_prob(cap, logits)
    feats.update(response_features(cap, levels, layers, ks))
    return {key: v if v.dtype == np.float16 else np.ascontiguousarray(v, dtype=np.float32) for key, v in feats.items()}
