"""The tuned lens (Belrose et al. 2023): per-layer translators into the final layer's space.

Translators are read out through the model's own final norm and unembedding.

Each translator is residual, ``h -> h + A h + b`` with ``A = 0, b = 0`` at the start, so the
untrained lens *is* the logit lens and weight decay pulls it back toward it. Translators are
fitted to minimise ``KL(final distribution || lens distribution)`` on captured hidden states
(a :class:`~logitleak.capture.source.Capture` or a stored capture): the readout is only norm +
unembedding, so no second pass through the model is needed.

Saved as ``translators.safetensors`` + ``config.json`` holding a hash of the readout (unembedding
and final norm) it was trained for; loading it for another readout warns.

The ``tuned-lens`` package (0.2.0, 2023) is not used. pip would install it next to transformers 5
(it asks only ``transformers>=4.28.1``), but it finds the final norm and the blocks with an
``isinstance`` chain over OPT / GPT-NeoX / Bloom / GPT-2 / GPT-Neo / GPT-J / Llama base models, so
``TunedLens.from_model`` raises ``NotImplementedError`` for LLaVA, Qwen2-VL, Gemma-2 (and every
other VLM here); its unembedding ignores Gemma-2's final-logit soft-cap; it drags in wandb,
datasets, plotly and torchdata, whose current release no longer has the ``dataloader2`` /
``datapipes`` its training scripts import. The few lines it would save are below, on top of
:class:`~logitleak.levels.features.Readout`, which already knows every family's final norm.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from logitleak.capture.source import check_layer
from logitleak.errors import LogitleakError
from logitleak.levels.features import hidden_at, n_layers_of
from logitleak.levels.logit_lens import Lens, LogitLens
from logitleak.models.readout import Readout
from logitleak.progress import PhaseBar

LENS_VERSION = 2
"""2: translators start from their least-squares solution (1: from zero)."""
LENS_KL_WORK = 2**33
"""Multiply-adds of the unembedding one layer's KL refinement may spend (``steps x batch x V x D``,
times a small constant): every step of the organism's 300 fits in it; a 49k-token vocabulary at
width 576 gets no KL steps (its least-squares translators are already within a few hundredths of
a nat of the final distribution) rather than hours of them on a CPU."""


WEIGHTS_FILE = "translators.safetensors"
CONFIG_FILE = "config.json"


class TunedLens(Lens):
    """Per-layer translators ``h + h @ A_l.T + b_l`` for ``layers``; every other layer (and the
    last, whose state the readout already maps to the final logits) is the identity."""

    def __init__(self, d_model: int, n_layers: int, layers: Sequence[int], *, readout: Readout | None = None,
                 readout_hash: str | None = None) -> None:
        self.d_model, self.n_layers = int(d_model), int(n_layers)
        self.layers = sorted(int(x) for x in layers)
        self.weight = {layer: torch.zeros(self.d_model, self.d_model) for layer in self.layers}
        self.bias = {layer: torch.zeros(self.d_model) for layer in self.layers}
        self.readout = readout
        self.readout_hash = readout_hash or (readout.fingerprint() if readout is not None else None)
        self.heldout_kl_: dict[int, tuple[float, float]] = {}
        self.train_info_: dict = {}
        self.version_: int | None = LENS_VERSION

    def transform_hidden(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """Translate raw residuals ``(..., D)`` at ``layer`` into the final layer's space."""
        h = h.to(torch.float32)
        if layer not in self.weight:
            return h
        return h + h @ self.weight[layer].to(h.device).T + self.bias[layer].to(h.device)


    def matches(self, readout: Readout) -> bool:
        """Whether ``readout`` is the one the lens was trained for (same unembedding and norm)."""
        return self.readout_hash is None or readout.fingerprint() == self.readout_hash

    # ---------------------------------------------------------------- persistence
    def save(self, directory: str | Path) -> Path:
        """Write ``translators.safetensors`` and ``config.json`` (atomically) into ``directory``."""
        from safetensors.torch import save_file

        from logitleak.integrity import atomic_write, write_json

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for layer in self.layers:
            tensors[f"weight.{layer}"] = self.weight[layer].contiguous()
            tensors[f"bias.{layer}"] = self.bias[layer].contiguous()
        if not tensors:  # safetensors wants at least one entry
            tensors["empty"] = torch.zeros(0)
        atomic_write(out / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp), checksum=True)
        write_json(out / CONFIG_FILE, checksum=True, obj={
            "version": LENS_VERSION, "kind": "tuned_lens", "d_model": self.d_model, "n_layers": self.n_layers,
            "layers": self.layers, "readout_hash": self.readout_hash,
            "heldout_kl": {str(k): list(v) for k, v in self.heldout_kl_.items()}, "train": self.train_info_,
        })
        return out

    @classmethod
    def load(cls, directory: str | Path, readout: Readout | None = None) -> TunedLens:
        """Read a saved lens; warns when ``readout`` is not the one it was trained for."""
        from safetensors.torch import load_file

        d = Path(directory)
        if not (d / CONFIG_FILE).is_file() or not (d / WEIGHTS_FILE).is_file():
            raise LogitleakError(f"No tuned lens at {str(d)!r} (config.json and {WEIGHTS_FILE} expected); fit one with "
                                 "fit_tuned_lens and save it.")
        cfg = json.loads((d / CONFIG_FILE).read_text())
        lens = cls(cfg["d_model"], cfg["n_layers"], cfg["layers"], readout_hash=cfg.get("readout_hash"))
        tensors = load_file(str(d / WEIGHTS_FILE))
        for layer in lens.layers:
            lens.weight[layer] = tensors[f"weight.{layer}"].float()
            lens.bias[layer] = tensors[f"bias.{layer}"].float()
        lens.version_ = cfg.get("version")
        lens.heldout_kl_ = {int(k): tuple(v) for k, v in cfg.get("heldout_kl", {}).items()}
        lens.train_info_ = cfg.get("train", {})
        if readout is not None:
            if readout.d_model != lens.d_model:
                raise LogitleakError(f"The tuned lens at {str(d)!r} is for d_model {lens.d_model}, not {readout.d_model}; "
                                     "fit a lens for this model.")
            if not lens.matches(readout):
                warnings.warn(f"The tuned lens at {d} was trained for another unembedding/final norm "
                              f"(hash {lens.readout_hash}, this model {readout.fingerprint()}); its projections may "
                              "be meaningless — refit it for this model.", stacklevel=2)
            lens.readout = readout
        return lens

    def __repr__(self) -> str:
        return f"TunedLens(d_model={self.d_model}, layers={self.layers})"


class _small_op_threads:
    """One intra-op thread while fitting translators of a small model: its (batch, D) x (D, V)
    products are far too small to share, and on a busy machine OpenMP spin-waits make each tiny op
    orders of magnitude slower with two threads than with one. Large models keep every thread."""

    def __init__(self, readout: Readout) -> None:
        self.small = readout.d_model * readout.vocab_size < 2**22

    def __enter__(self):
        self.saved = torch.get_num_threads()
        if self.small:
            torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.saved)
        return False


def _split(n: int, heldout: float, seed: int, groups=None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if groups is not None:
        groups = np.asarray(groups)
        uniq = rng.permutation(np.unique(groups))
        n_test = max(1, int(round(len(uniq) * heldout)))
        test = np.isin(groups, uniq[:n_test])
        return np.flatnonzero(~test), np.flatnonzero(test)
    perm = rng.permutation(n)
    n_test = max(1, int(round(n * heldout)))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _kl(target_logp: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per-row KL(target || softmax(logits)) in nats."""
    logq = torch.log_softmax(logits, dim=-1)
    return (target_logp.exp() * (target_logp - logq)).sum(-1)


def fit_tuned_lens(capture, readout: Readout, *, layers: Sequence[int] | None = None, steps: int = 300,
                   lr: float = 3e-3, weight_decay: float = 1e-3, batch_size: int = 512, heldout: float = 0.2,
                   groups=None, seed: int = 0, progress: bool = False,
                   max_work: int | None = LENS_KL_WORK) -> TunedLens:
    """Fit one translator per layer on a capture's hidden states (train split) and report the
    held-out KL of the logit lens and the tuned lens per layer in ``lens.heldout_kl_``.

    ``layers``: which layers get a translator (default every layer but the last). ``groups``:
    samples sharing a group stay on one side of the split. Each translator starts from its
    least-squares solution (:func:`least_squares_translator`) and is refined on the KL objective
    by AdamW, ``steps`` minibatches of ``batch_size`` rows, as many as ``max_work`` allows
    (:func:`kl_steps`; None: all); ``lens.train_info_['kl_steps']`` records the steps taken.
    """
    n, L = len(capture), n_layers_of(capture)
    if L < 1:
        raise LogitleakError("A tuned lens needs hidden states; this capture has none (a black-box capture?).")
    if n < 4:
        raise LogitleakError(f"A tuned lens needs at least 4 samples to split into train and held-out; got {n}.")
    layers = list(range(L)) if layers is None else sorted({check_layer(x, L) for x in layers})
    if steps < 0 or lr <= 0:
        raise LogitleakError("A tuned lens needs steps >= 0 and a positive learning rate.")
    train, test = _split(n, heldout, seed, groups)
    lens = TunedLens(readout.d_model, L, [x for x in layers if x != L], readout=readout)
    gen = torch.Generator().manual_seed(seed)
    train_t, test_t = torch.as_tensor(train), torch.as_tensor(np.asarray(test), dtype=torch.long)
    if len(test_t) == 0:
        raise LogitleakError("No held-out rows to measure the lens KL on; pass a non-empty index.")
    dev = readout.device  # the lens runs where its readout is (the audit puts it on the first GPU)
    h_last = hidden_at(capture, L)     # each stored layer is read once: fitted on its train rows, measured on the rest
    h_last_train = h_last[train_t].float().to(dev)  # targets are recomputed per batch: no (N, V) array held
    steps_taken = steps if max_work is None else kl_steps(steps, batch_size, len(train), readout, max_work)
    kl: dict[int, tuple[float, float]] = {}
    with PhaseBar(progress, "tuned lens", len(lens.layers) * max(steps_taken, 1)) as bar, _small_op_threads(readout):
        target_all = _train_targets(readout, h_last_train, steps_taken)
        for layer in range(L + 1):
            h_all = h_last if layer == L else hidden_at(capture, layer)
            if layer in lens.weight:
                _fit_layer(readout, lens, layer, h_all[train_t].float().to(dev), h_last_train, target_all, steps=steps_taken,
                           lr=lr, weight_decay=weight_decay, batch_size=batch_size, gen=gen, bar=bar)
            kl[layer] = _kl_pair(readout, lens, h_all[test_t].to(dev), h_last[test_t].to(dev), layer)
        if not steps_taken:
            bar.advance(len(lens.layers))
    lens.heldout_kl_ = kl
    lens.train_info_ = {"init": "least_squares", "steps": steps, "kl_steps": steps_taken, "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size,
                        "heldout": heldout, "seed": seed, "n_train": int(len(train)), "n_heldout": int(len(test))}
    return lens


def kl_steps(steps: int, batch_size: int, n_train: int, readout: Readout, max_work: int = LENS_KL_WORK) -> int:
    """The KL refinement steps each layer gets: ``steps``, capped by ``max_work`` multiply-adds."""
    per_step = min(batch_size, n_train) * readout.vocab_size * readout.d_model
    return int(min(steps, max_work // max(per_step, 1)))


def least_squares_translator(h: torch.Tensor, h_last: torch.Tensor, ridge: float = 1e-3):
    """``(A, b)`` minimising ``||h + h A^T + b - h_last||^2 + ridge * mean(diag) * ||A||^2``: the
    affine map from a layer's residuals to the last layer's, in closed form (float64)."""
    X = torch.cat([h.double(), h.new_ones(len(h), 1, dtype=torch.float64)], 1)
    G = X.T @ X
    lam = ridge * float(torch.diagonal(G).mean())
    reg = torch.eye(G.shape[0], dtype=G.dtype, device=G.device) * lam
    reg[-1, -1] = 0.0                                  # the bias is not penalised
    sol = torch.linalg.solve(G + reg, X.T @ (h_last.double() - h.double())).float()
    return sol[:-1].T.contiguous(), sol[-1].contiguous()


def _train_targets(readout: Readout, h_last_train: torch.Tensor, steps: int) -> torch.Tensor | None:
    """The final distribution of every training row, when small enough to hold (else ``None``:
    recomputed per batch)."""
    if steps and len(h_last_train) * readout.vocab_size <= 2**24:
        with torch.no_grad():
            return _target_logp(readout, h_last_train)
    return None


def _fit_layer(readout, lens, layer, h_train, h_last_train, target_all, *, steps, lr, weight_decay, batch_size, gen,
               bar) -> None:
    """One translator: its least-squares map, then ``steps`` AdamW minibatches on the KL."""
    n_train = len(h_train)
    A0, b0 = least_squares_translator(h_train, h_last_train)
    A, b = A0.requires_grad_(), b0.requires_grad_()
    opt = torch.optim.AdamW([A, b], lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        idx = torch.randint(0, n_train, (min(batch_size, n_train),), generator=gen).to(h_train.device)
        h = h_train[idx]
        if target_all is not None:
            target = target_all[idx]
        else:
            with torch.no_grad():
                target = _target_logp(readout, h_last_train[idx])
        loss = _kl(target, readout(h + h @ A.T + b)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.advance()
    lens.weight[layer], lens.bias[layer] = A.detach().cpu().clone(), b.detach().cpu().clone()


def _target_logp(readout: Readout, h_last: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(readout(h_last), dim=-1)


def heldout_kl(capture, readout: Readout, lens: Lens, *, index=None,
               layers: Sequence[int] | None = None) -> dict[int, tuple[float, float]]:
    """Mean ``KL(final || lens)`` in nats per layer over the rows ``index`` (default all):
    ``{layer: (logit_lens_kl, lens_kl)}`` (``lens``: a tuned lens, or the logit lens itself)."""
    n, L = len(capture), n_layers_of(capture)
    rows = torch.arange(n) if index is None else torch.as_tensor(np.asarray(index), dtype=torch.long)
    layers = list(range(L + 1)) if layers is None else [int(x) for x in layers]
    if len(rows) == 0:
        raise LogitleakError("No held-out rows to measure the lens KL on; pass a non-empty index.")
    h_last = hidden_at(capture, L)[rows].to(readout.device)
    return {layer: _kl_pair(readout, lens, hidden_at(capture, layer)[rows].to(readout.device), h_last, layer) for layer in layers}


def _kl_pair(readout: Readout, lens: Lens, h_rows: torch.Tensor, h_last: torch.Tensor, layer: int) -> tuple[float, float]:
    """Mean ``KL(final || logit lens)`` and ``KL(final || lens)`` over the rows of ``h_rows`` (one layer's
    residuals; ``h_last`` the last layer's of the same rows)."""
    sums = [0.0, 0.0]
    with torch.no_grad():
        for r0 in range(0, len(h_rows), 2048):  # chunks bound the (rows, V) arrays
            target = _target_logp(readout, h_last[r0:r0 + 2048])
            h = h_rows[r0:r0 + 2048]
            sums[0] += float(_kl(target, readout(LogitLens().transform_hidden(h, layer))).sum())
            sums[1] += float(_kl(target, readout(lens.transform_hidden(h, layer))).sum())
    return sums[0] / len(h_rows), sums[1] / len(h_rows)
