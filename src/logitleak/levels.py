"""The representational levels as pure functions of a capture (no second pass through the model).

A *capture* here is a :class:`~logitleak.capture.Capture` or a
:class:`~logitleak.store.StoredCapture` (read lazily, one layer at a time). The lens levels need a
:class:`Readout`: the model's final norm and unembedding, held on their own.

Level names match :data:`logitleak.results.LEVELS`. :func:`build_features` returns
``{(level, layer | None, k | None): (N, F) float32 array}``.

``topk_ids`` — top-k *with token identities* — is the matrix an attacker builds from
``top_logprobs``: one column per token id in the union ``U`` of ids that appear in any sample's
top-k across the set (sorted by id), filled with the sample's log-probability where that id is in
its top-k and with a floor elsewhere. The floor is the smallest log-probability observed anywhere
in the set's top-k minus 1 nat: below everything seen (an unlisted token is known only to be less
likely than the k-th), finite, and on the same scale as the data. ``U`` and the floor are computed
from the whole capture without labels, as an attacker with the same queries would.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from logitleak import transition as T
from logitleak.errors import LogitleakError
from logitleak.response_levels import (
    RESPONSE_LAYER_LEVELS,
    RESPONSE_LEVELS,
    has_response,
    has_response_hidden,
    response_features,
)
from logitleak.results import LEVELS

LAYER_LEVELS = ("residual", "logit_lens_topk", "logit_lens_answers", "tuned_lens_topk", "tuned_lens_answers")
K_LEVELS = ("logit_lens_topk", "tuned_lens_topk", "topk_ids", "topk_logprobs", "topk_logits")
LENS_LEVELS = ("tuned_lens_topk", "tuned_lens_answers")
ANSWER_LEVELS = ("logit_lens_answers", "tuned_lens_answers")
ROW_CHUNK = 2048  # rows of (N, V) lens logits computed at once: bounds memory for large vocabularies

FeatureKey = tuple[str, int | None, int | None]


# ----------------------------------------------------------------------------- readout

@dataclass
class Readout:
    """The model's final norm + unembedding (+ final-logit soft-cap / scale), detached from the
    model: ``readout(h)`` maps raw residuals ``(..., D)`` to the logits the model would produce
    from them. A copy of the norm module (float32, CPU), the unembedding matrix and bias — not an
    ``nn.Module`` and never the whole model."""

    norm: nn.Module | None
    weight: torch.Tensor
    bias: torch.Tensor | None = None
    softcap: float | None = None
    scale: float | None = None

    def __post_init__(self) -> None:
        # Frozen: gradients flow to the input (tuned-lens fitting), never into the readout itself.
        if self.norm is not None:
            self.norm.eval()
            for p in self.norm.parameters():
                p.requires_grad_(False)
        self.weight = self.weight.detach().to(torch.float32)
        if self.bias is not None:
            self.bias = self.bias.detach().to(torch.float32)

    @classmethod
    def from_adapter(cls, adapter) -> Readout:
        norm = copy.deepcopy(adapter.final_norm).to(device="cpu", dtype=torch.float32)
        un = adapter.unembed
        weight = un.weight.detach().to(device="cpu", dtype=torch.float32).clone()
        bias = getattr(un, "bias", None)
        bias = None if bias is None else bias.detach().to(device="cpu", dtype=torch.float32).clone()
        tc = adapter.text_config
        fam = adapter.family
        softcap = getattr(tc, fam.logit_softcap, None) if fam.logit_softcap else None
        scale = getattr(tc, fam.logit_scale, None) if fam.logit_scale else None
        return cls(norm=norm, weight=weight, bias=bias, softcap=float(softcap) if softcap else None,
                   scale=float(scale) if scale not in (None, 1, 1.0) else None)

    @property
    def d_model(self) -> int:
        return int(self.weight.shape[1])

    @property
    def vocab_size(self) -> int:
        return int(self.weight.shape[0])

    def normed(self, h: torch.Tensor) -> torch.Tensor:
        h = h.to(torch.float32)
        return self.norm(h) if self.norm is not None else h

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.nn.functional.linear(x, self.weight, self.bias)
        if self.scale is not None:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """Raw residual ``(..., D)`` -> logits ``(..., V)`` float32 (final norm applied once)."""
        if h.shape[-1] != self.d_model:
            raise LogitleakError(f"Hidden states of width {h.shape[-1]} do not fit this readout (d_model {self.d_model}); "
                                 "use the readout of the model the capture came from.")
        return self.unembed(self.normed(h))

    def fingerprint(self) -> str:
        """Hash of the unembedding and final-norm weights (and quirks): what a tuned lens is tied to."""
        h = hashlib.sha256()
        h.update(self.weight.contiguous().numpy().tobytes())
        if self.bias is not None:
            h.update(self.bias.contiguous().numpy().tobytes())
        if self.norm is not None:
            for name, t in sorted(self.norm.state_dict().items()):
                h.update(name.encode())
                h.update(t.detach().float().contiguous().numpy().tobytes())
            h.update(type(self.norm).__name__.encode())
        h.update(repr((self.softcap, self.scale)).encode())
        return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- access

def n_samples(cap) -> int:
    return len(cap)


def n_layers_of(cap) -> int:
    return int(cap.n_layers)


def hidden_at(cap, layer: int, rows: slice | None = None) -> torch.Tensor:
    """``(N, D)`` float32 raw residual at ``layer`` of a Capture or StoredCapture."""
    if _is_stored(cap):
        x = torch.from_numpy(np.asarray(cap.layer(layer)))
    else:
        if cap.hidden is None:
            raise LogitleakError("This capture holds no hidden states (a black-box capture); residual and lens levels "
                                 "need a local model.")
        x = cap.hidden[:, layer]
    if rows is not None:
        x = x[rows]
    return x.to(torch.float32)


def final_logits(cap) -> torch.Tensor | None:
    """``(N, V)`` float32 final logits, or ``None`` for a black-box capture."""
    if _is_stored(cap):
        return torch.from_numpy(np.asarray(cap.logits())).to(torch.float32)
    return None if cap.logits is None else cap.logits.to(torch.float32)


def _is_stored(cap) -> bool:
    return callable(getattr(cap, "layer", None)) and callable(getattr(cap, "logits", None))


def _check_layer(cap, layer: int) -> None:
    L = n_layers_of(cap)
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer <= L:
        raise LogitleakError(f"Layer {layer!r} does not exist: this capture has hidden states 0..{L}; pick one in that range.")


# ----------------------------------------------------------------------------- levels

def residual(cap, layer: int) -> np.ndarray:
    """``(N, D)`` float32 raw residual stream at ``layer`` (0 = embeddings, l = block l - 1's output)."""
    _check_layer(cap, layer)
    return hidden_at(cap, layer).numpy()


def logit_lens(cap, readout: Readout, layer: int) -> torch.Tensor:
    """``(N, V)`` logit-lens logits at ``layer``: the readout (final norm + unembedding) of the raw residual."""
    _check_layer(cap, layer)
    with torch.no_grad():
        return readout(hidden_at(cap, layer))


def tuned_lens(cap, readout: Readout, lens, layer: int) -> torch.Tensor:
    """``(N, V)`` tuned-lens logits at ``layer``: the readout of the translated residual."""
    _check_layer(cap, layer)
    with torch.no_grad():
        return readout(lens.transform_hidden(hidden_at(cap, layer), layer))


def topk_values(x: torch.Tensor, k: int) -> np.ndarray:
    """``(N, k)`` the k largest values of each row, sorted descending, without ids."""
    _check_k(k, x.shape[-1])
    return torch.topk(x.float(), k, dim=-1, sorted=True).values.numpy()


def restrict(x: torch.Tensor, token_ids: Sequence[int]) -> np.ndarray:
    """``(N, |ids|)`` the columns of ``x`` at ``token_ids`` (e.g. the answer words), in that order."""
    ids = torch.as_tensor(list(token_ids), dtype=torch.long)
    if ids.numel() == 0:
        raise LogitleakError("The answer token id list is empty; pass the ids of the answer words.")
    if int(ids.min()) < 0 or int(ids.max()) >= x.shape[-1]:
        raise LogitleakError(f"Answer token ids must lie in 0..{x.shape[-1] - 1}; got {int(ids.min())}..{int(ids.max())}.")
    return x.float()[:, ids].numpy()


def topk_logprobs(logits: torch.Tensor, k: int) -> np.ndarray:
    """``(N, k)`` top-k log-probabilities (log-softmax of the logits), sorted descending, no ids."""
    return topk_values(torch.log_softmax(logits.float(), dim=-1), k)


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


def top1_prob(cap) -> np.ndarray:
    """``(N, 1)`` probability of the most likely token."""
    logits = final_logits(cap)
    if logits is not None:
        return torch.softmax(logits, dim=-1).max(dim=-1, keepdim=True).values.numpy()
    lp = _api_logprobs(cap)
    return torch.exp(torch.nan_to_num(lp[:, :1], nan=float("-inf"))).numpy()


def _check_k(k: int, width: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise LogitleakError(f"k={k!r} is not valid; pass a positive whole number such as 5.")
    if k > width:
        raise LogitleakError(f"k={k} is larger than the {width} values available; pass k up to {width}.")


def _api_logprobs(cap) -> torch.Tensor:
    if getattr(cap, "topk_logprobs", None) is None:
        raise LogitleakError("This capture has neither logits nor top-k log-probabilities; capture it again.")
    return cap.topk_logprobs.float()


def _api_topk(cap, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First k returned (logprobs, ids) of a black-box capture, missing values at the floor."""
    lp = _api_logprobs(cap)
    _check_k(k, lp.shape[1])
    ids = cap.topk_ids if cap.topk_ids is not None else torch.full(lp.shape, -1, dtype=torch.long)
    return lp[:, :k], ids[:, :k].long()


def _fill_missing(values: torch.Tensor) -> np.ndarray:
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return values.numpy()
    floor = float(values[finite].min()) - 1.0 if bool(finite.any()) else -100.0
    return torch.where(finite, values, torch.full_like(values, floor)).numpy()


# ----------------------------------------------------------------------------- features

def available_levels(cap, *, lens=None, answer_token_ids=None) -> list[str]:
    """Levels :func:`build_features` can compute for this capture (in :data:`LEVELS` order)."""
    has_hidden = _is_stored(cap) or getattr(cap, "hidden", None) is not None
    has_logits = final_logits(cap) is not None
    has_api = getattr(cap, "topk_logprobs", None) is not None
    out = []
    for lv in LEVELS:
        if lv in ("residual", "pca"):
            ok = has_hidden
        elif lv in T.TRANSITION_LEVELS:
            ok = lv in T.available(cap)
        elif lv in ("logit_lens_topk", "tuned_lens_topk"):
            ok = has_hidden and (lv != "tuned_lens_topk" or lens is not None)
        elif lv in ANSWER_LEVELS:
            ok = has_hidden and answer_token_ids is not None and (lv != "tuned_lens_answers" or lens is not None)
        elif lv in ("logits", "topk_logits"):
            ok = has_logits
        elif lv == "topk_ids":
            ok = has_logits or (has_api and getattr(cap, "topk_ids", None) is not None
                                and bool((cap.topk_ids >= 0).any()))
        elif lv in RESPONSE_LEVELS:
            ok = has_response(cap) and (lv != "response_residual" or has_response_hidden(cap))
        else:  # topk_logprobs, top1_prob
            ok = has_logits or has_api
        if ok:
            out.append(lv)
    return out


def _lens_features(cap, readout: Readout, layer: int, ks: Sequence[int], answer_ids, lens, want_topk: bool,
                   want_answers: bool) -> tuple[dict[int, np.ndarray], np.ndarray | None]:
    """Top-k values (per k) and answer-restricted logits of one lens at one layer, in row chunks."""
    N = n_samples(cap)
    kmax = max(ks) if (want_topk and ks) else 0
    if kmax:
        _check_k(kmax, readout.vocab_size)
    tops, answers = [], []
    ids = torch.as_tensor(list(answer_ids), dtype=torch.long) if want_answers else None
    if ids is not None and (ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= readout.vocab_size):
        raise LogitleakError(f"Answer token ids must be a non-empty list within 0..{readout.vocab_size - 1}.")
    h_all = hidden_at(cap, layer)
    with torch.no_grad():
        for r0 in range(0, N, ROW_CHUNK):
            h = h_all[r0:r0 + ROW_CHUNK]
            if lens is not None:
                h = lens.transform_hidden(h, layer)
            logits = readout(h)
            if kmax:
                tops.append(torch.topk(logits, kmax, dim=-1, sorted=True).values)
            if ids is not None:
                answers.append(logits[:, ids])
    topk = {}
    if kmax:
        top = torch.cat(tops).numpy()
        topk = {k: np.ascontiguousarray(top[:, :k]) for k in ks}
    return topk, (torch.cat(answers).numpy() if ids is not None else None)


def build_features(cap, readout: Readout | None, *, levels: Iterable[str], layers: Iterable[int], ks: Iterable[int],
                   lens=None, answer_token_ids: Sequence[int] | None = None,
                   pca_dims: Iterable[int] = T.DEFAULT_PCA_DIMS,
                   vision_layers: Iterable[int] | None = None) -> dict[FeatureKey, np.ndarray]:
    """Every requested level as a feature matrix: ``{(level, layer | None, k | None): (N, F) float32}``.

    The vision-to-language levels (:mod:`logitleak.transition`): ``vision`` one entry per vision
    state (``vision_layers``, default all), ``projector`` one, ``image_residual`` one per layer;
    ``pca`` one per (layer, ``d`` in ``pca_dims``), its matrix the residual itself (the components
    are fitted inside each training fold by the probes).

    Layer levels (``residual``, ``*_lens_*``) get one entry per layer in ``layers``; final-output
    levels use ``layer=None``. ``k`` is set for the top-k levels and ``None`` elsewhere. A
    black-box capture (no logits, only ``topk_logprobs`` / ``topk_ids``) yields ``topk_ids``,
    ``topk_logprobs`` and ``top1_prob`` (for k up to what the API returned).
    """
    levels = list(dict.fromkeys(levels))
    layers = [int(x) for x in layers]
    ks = sorted({int(k) for k in ks}) if ks is not None else []
    unknown = [lv for lv in levels if lv not in LEVELS]
    if unknown:
        raise LogitleakError(f"Unknown level {unknown[0]!r}; choose from: {', '.join(LEVELS)}.")
    for k in ks:
        _check_k(k, 10**12)
    need_k = [lv for lv in levels if lv in K_LEVELS]
    if need_k and not ks:
        raise LogitleakError(f"Level {need_k[0]!r} needs at least one k; pass ks such as [1, 5, 10].")
    possible = set(available_levels(cap, lens=lens, answer_token_ids=answer_token_ids))
    for lv in levels:
        if lv in possible:
            continue
        if lv in LENS_LEVELS and lens is None:
            raise LogitleakError(f"Level {lv!r} needs a tuned lens; fit one with fit_tuned_lens or drop the level.")
        if lv in ANSWER_LEVELS and answer_token_ids is None:
            raise LogitleakError(f"Level {lv!r} needs answer_token_ids (the ids of the answer words).")
        if lv in RESPONSE_LEVELS and not has_response(cap):
            raise LogitleakError(f"Level {lv!r} needs a generated response; capture with --generate N (e.g. 8) or drop "
                                 "the response levels.")
        if lv in T.TRANSITION_LEVELS:
            raise LogitleakError(f"Level {lv!r} needs a vision-language model whose family declares its vision tower "
                                 "and projector, captured on a probe set with images; drop the level for this model.")
        raise LogitleakError(f"Level {lv!r} cannot be computed from this capture (a black-box capture has no hidden "
                             "states or full logits); drop it or capture with a local model.")
    lens_levels = [lv for lv in levels if lv in LAYER_LEVELS and lv != "residual"]
    if lens_levels and readout is None:
        raise LogitleakError(f"Level {lens_levels[0]!r} needs the model's readout (adapter.readout()).")
    for layer in layers if any(lv in LAYER_LEVELS + RESPONSE_LAYER_LEVELS + ("image_residual", "pca") for lv in levels) else []:
        _check_layer(cap, layer)

    feats: dict[FeatureKey, np.ndarray] = T.transition_features(cap, levels, layers, vision_layers)
    pca_dims = list(pca_dims)
    for layer in layers:
        if "residual" in levels or "pca" in levels:
            res = np.ascontiguousarray(residual(cap, layer), dtype=np.float32)  # shared by residual and pca
            if "residual" in levels:
                feats[("residual", layer, None)] = res
            if "pca" in levels:
                feats.update(T.pca_features({("residual", layer, None): res}, pca_dims))
        for name, lens_obj in (("logit_lens", None), ("tuned_lens", lens)):
            want_topk, want_ans = f"{name}_topk" in levels, f"{name}_answers" in levels
            if not (want_topk or want_ans):
                continue
            topk, ans = _lens_features(cap, readout, layer, ks, answer_token_ids, lens_obj, want_topk, want_ans)
            for k, v in topk.items():
                feats[(f"{name}_topk", layer, k)] = v
            if ans is not None:
                feats[(f"{name}_answers", layer, None)] = ans

    logits = final_logits(cap)
    if logits is not None:
        if "logits" in levels:
            feats[("logits", None, None)] = logits.numpy()
        api_levels = [lv for lv in ("topk_ids", "topk_logprobs", "topk_logits") if lv in levels]
        if api_levels:
            kmax = max(ks)
            _check_k(kmax, logits.shape[-1])
            logprobs = torch.log_softmax(logits, dim=-1)
            lp_top = torch.topk(logprobs, kmax, dim=-1, sorted=True)
            lg_top = torch.topk(logits, kmax, dim=-1, sorted=True).values if "topk_logits" in levels else None
            for k in ks:
                if "topk_ids" in levels:
                    feats[("topk_ids", None, k)] = topk_ids_matrix(lp_top.indices[:, :k], lp_top.values[:, :k])[0]
                if "topk_logprobs" in levels:
                    feats[("topk_logprobs", None, k)] = np.ascontiguousarray(lp_top.values[:, :k].numpy())
                if lg_top is not None:
                    feats[("topk_logits", None, k)] = np.ascontiguousarray(lg_top[:, :k].numpy())
    else:
        for k in ks:
            if "topk_ids" in levels or "topk_logprobs" in levels:
                lp, ids = _api_topk(cap, k)
                if "topk_ids" in levels:
                    feats[("topk_ids", None, k)] = topk_ids_matrix(ids, lp)[0]
                if "topk_logprobs" in levels:
                    feats[("topk_logprobs", None, k)] = _fill_missing(lp.clone())
    if "top1_prob" in levels:
        feats[("top1_prob", None, None)] = top1_prob(cap)
    feats.update(response_features(cap, levels, layers, ks))
    return {key: np.ascontiguousarray(v, dtype=np.float32) for key, v in feats.items()}
