"""Model-side scrubbing: LEACE erasure of task-irrelevant attributes from the residual stream.

Erasers are fitted on hidden states at the read position (a training split) with
``concept_erasure.LeaceFitter`` and applied by a forward hook at every position of the chosen
layers during the single capture pass, so every level downstream is measured under erasure.
:func:`fit_erasers_from_store` fits them from stored captures, streaming rows into the fitter's
``update()``; :func:`erasers_key` names a set of erasers for the activation store's edit key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from concept_erasure import LeaceEraser, LeaceFitter

from logitleak.errors import LogitleakError


def one_hot_concepts(labels: Mapping[str, np.ndarray]) -> torch.Tensor:
    """Concatenated one-hot encodings of several attributes: the concept LEACE removes jointly."""
    blocks = []
    for name, y in labels.items():
        classes, codes = np.unique(np.asarray(y).astype(str), return_inverse=True)
        if len(classes) < 2:
            raise LogitleakError(f"Attribute {name!r} has a single class in the erasure training split; it cannot be erased.")
        blocks.append(np.eye(len(classes), dtype=np.float32)[codes])
    return torch.from_numpy(np.concatenate(blocks, axis=1))


def fit_eraser(hidden: torch.Tensor, labels: Mapping[str, np.ndarray]) -> LeaceEraser:
    """Fit a LEACE eraser for the given attributes on ``(N, D)`` hidden states."""
    z = one_hot_concepts(labels)
    return LeaceFitter.fit(hidden.double(), z.double()).eraser


def eraser_to(eraser: LeaceEraser, device: torch.device | str, dtype: torch.dtype = torch.float32) -> LeaceEraser:
    """The same eraser with its tensors on ``device`` in ``dtype`` (concept-erasure's frozen eraser
    has no ``.to``): converted once, then applied with ``LeaceEraser.__call__``."""
    def move(t):
        return None if t is None else t.to(device=device, dtype=dtype)

    return LeaceEraser(move(eraser.proj_left), move(eraser.proj_right), move(eraser.bias))


def eraser_hook(eraser: LeaceEraser) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function for ``capture(..., edit_hooks={layer: fn})``: erase at every position, in float32,
    with the eraser converted once per device the states arrive on."""
    on: dict[torch.device, LeaceEraser] = {}

    def apply(h: torch.Tensor) -> torch.Tensor:
        if h.device not in on:
            on[h.device] = eraser_to(eraser, h.device)
        return on[h.device](h.float()).to(h.dtype)

    return apply


def resolve_erasure_layers(requested: Sequence[int], n_layers: int) -> list[int]:
    """``-1`` means every block output (1..n_layers); others are checked against the model."""
    if any(layer == -1 for layer in requested):
        return list(range(1, n_layers + 1))
    bad = [layer for layer in requested if not 1 <= layer <= n_layers]
    if bad:
        raise LogitleakError(f"Erasure layer {bad[0]} does not exist: block outputs are layers 1..{n_layers}; pick one of those or 'all'.")
    return sorted(set(requested))


def fit_erasers_sequentially(capture_fn: Callable[[dict], torch.Tensor], layers: Sequence[int],
                             labels: Mapping[str, np.ndarray]) -> dict[int, LeaceEraser]:
    """Fit one eraser per layer, shallow to deep, each on states already erased upstream.

    ``capture_fn(edit_hooks)`` runs the training split through the model with those hooks and
    returns its ``(N, L+1, D)`` hidden states at the read position.
    """
    erasers: dict[int, LeaceEraser] = {}
    hidden = None
    for layer in sorted(layers):
        if hidden is None or erasers:
            hidden = capture_fn({l_: eraser_hook(e) for l_, e in erasers.items()})
        erasers[layer] = fit_eraser(hidden[:, layer].float(), labels)
    return erasers


def fit_eraser_stored(stored, layer: int, labels: Mapping[str, np.ndarray], chunk: int = 4096) -> LeaceEraser:
    """Fit a LEACE eraser on the states of ``stored`` (a :class:`~logitleak.capture.stored.StoredCapture`) at
    ``layer``, read shard by shard and fed to ``LeaceFitter.update`` (float64 statistics) ``chunk``
    rows at a time whatever the shard size, so memory holds one shard and one chunk, and the fit
    is the same for every shard size."""
    z = one_hot_concepts(labels).double()
    if len(stored) != len(z):
        raise LogitleakError(f"The stored capture holds {len(stored)} samples but {len(z)} labels were given; fit the "
                             "eraser on the capture of the same probe set.")
    fitter = LeaceFitter(stored.d_model, z.shape[1], dtype=torch.float64)
    start = 0
    for rows in _chunks(stored.layer_shards(layer), chunk):
        fitter.update(torch.from_numpy(np.asarray(rows, dtype=np.float64)), z[start:start + len(rows)])
        start += len(rows)
    return fitter.eraser


def _chunks(parts, size: int):
    """Consecutive arrays ``parts`` regrouped into chunks of ``size`` rows (the last may be shorter)."""
    buf: list[np.ndarray] = []
    have = 0
    for part in parts:
        pos = 0
        while pos < len(part):
            take = min(size - have, len(part) - pos)
            buf.append(part[pos:pos + take])
            have, pos = have + take, pos + take
            if have == size:
                yield np.concatenate(buf) if len(buf) > 1 else buf[0]
                buf, have = [], 0
    if buf:
        yield np.concatenate(buf) if len(buf) > 1 else buf[0]


def erasers_key(erasers: Mapping[int, LeaceEraser]) -> str:
    """A name for a set of erasers (their layers and exact weights): the store's ``edit_key``."""
    h = hashlib.sha256()
    for layer in sorted(erasers):
        e = erasers[layer]
        h.update(str(layer).encode())
        for t in (e.proj_left, e.proj_right, e.bias):
            if t is not None:
                h.update(t.detach().cpu().contiguous().double().numpy().tobytes())
    return f"leace:{','.join(map(str, sorted(erasers)))}:{h.hexdigest()[:16]}"


def fit_erasers_from_store(extract: Callable[[dict, str | None], object], layers: Sequence[int],
                           labels: Mapping[str, np.ndarray]) -> dict[int, LeaceEraser]:
    """:func:`fit_erasers_sequentially` with every pass a stored capture: ``extract(edit_hooks, edit_key)``
    stores (or reuses) the training split's capture under those hooks and returns it, so a rerun
    refits the same erasers from the same shards without a forward pass."""
    erasers: dict[int, LeaceEraser] = {}
    stored = None
    for layer in sorted(layers):
        if stored is None or erasers:
            hooks = {l_: eraser_hook(e) for l_, e in erasers.items()}
            stored = extract(hooks, erasers_key(erasers) if erasers else None)
        erasers[layer] = fit_eraser_stored(stored, layer, labels)
    return erasers
