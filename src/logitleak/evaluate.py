"""Cross-validated probing sweeps: feature sets x attributes x probe families -> result rows.

:func:`evaluate_sweep` is the entry point. For every attribute it builds one *plan*: the real
labels, a control relabelling and ``n_permutations`` permuted relabellings ("variants"), each
with its own stratified (optionally grouped) cross-validation split and, inside every training
fold, an inner split used to choose the linear probe's ``C`` and to early-stop the MLP. Every
(variant, fold) is one classification problem; the problems of all attributes (with similar
class counts) are fitted together, for all feature sets that share a feature dimension, by the
batched probes in :mod:`logitleak.probes` -- the permutation test and the control task cost
extra columns in one matrix product, not extra loops. Metrics come from out-of-fold predictions
(see :mod:`logitleak.metrics`). Chunks are sized to a memory budget; results do not depend on
the chunking.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from logitleak import metrics as M
from logitleak.errors import LogitleakError
from logitleak.probes import (
    DEFAULT_CS,
    fit_linear_batched,
    fit_linear_grid_batched,
    fit_mlp_batched,
    prepare_features,
    resolve_device,
    stratified_holdout,
)
from logitleak.results import to_frame

FeatureKey = tuple[str, "int | None", "int | None"]
PROBE_FAMILIES: tuple[str, ...] = ("linear", "mlp")
EXTRA_COLUMNS: tuple[str, ...] = (
    "p_value_tail", "label_entropy_bits", "v_info_p_value", "control_v_info_bits",
    "n_permutations", "n_folds", "n_groups", "C",
)
"""Columns :func:`evaluate_sweep` adds after ``RESULT_COLUMNS``: the plug-in ``H(Y)``, the
permutation p-value of the V-information, the control task's V-information, the design
(permutations, folds -- 1 for a held-out split --, groups) and the linear probe's median chosen C."""

_LINEAR_KEYS = {"C", "Cs", "max_iter", "tol", "history"}
_MLP_KEYS = {"hidden", "alpha", "lr", "max_epochs", "patience", "min_delta", "lr_scale_dim"}


# --------------------------------------------------------------------------------------------
# inputs


def _describe(key) -> str:
    level, layer, k = key
    out = f"'{level}'"
    if layer is not None:
        out += f" layer {layer}"
    if k is not None:
        out += f" k={k}"
    return out


def _is_missing(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind == "f":
        return np.isnan(arr)
    if arr.dtype.kind == "O":
        return np.array([v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA for v in arr], dtype=bool)
    return np.zeros(len(arr), dtype=bool)


def encode_labels(name: str, values) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, codes)`` for one attribute's labels (strings or integers)."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise LogitleakError(
            f"Labels of attribute '{name}' must be one-dimensional, got shape {arr.shape}; pass one label per sample.")
    missing = _is_missing(arr)
    if missing.any():
        raise LogitleakError(
            f"Attribute '{name}' has {int(missing.sum())} missing labels; fill them or drop those samples "
            f"from features and labels before probing.")
    if arr.dtype.kind == "O":
        kinds = {type(v) for v in arr}
        if len(kinds) > 1:
            arr = arr.astype(str)
    classes, codes = np.unique(arr, return_inverse=True)
    return classes, codes.astype(np.int64)


def _check_features(key, X, n: int | None) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise LogitleakError(
            f"Feature set {_describe(key)} has shape {X.shape}; pass a 2-D (samples x features) array per "
            f"(level, layer, k).")
    if X.dtype.kind not in "fiub":
        raise LogitleakError(f"Feature set {_describe(key)} is not numeric (dtype {X.dtype}); pass numbers.")
    if X.shape[1] == 0:
        raise LogitleakError(f"Feature set {_describe(key)} has no feature columns; drop it or pass its features.")
    bad = ~np.isfinite(X) if X.dtype.kind == "f" else np.zeros(X.shape, bool)
    if bad.any():
        raise LogitleakError(
            f"Feature set {_describe(key)} contains {int(bad.sum())} NaN or infinite values; fill or drop them "
            f"before probing.")
    if n is not None and len(X) != n:
        raise LogitleakError(
            f"Feature set {_describe(key)} has {len(X)} rows but the labels have {n}; pass features and labels for "
            f"the same samples in the same order.")
    return X


def _stratified_kfold(codes: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Fold id per sample: each class's samples, shuffled, are dealt to the folds in turn,
    continuing where the previous class stopped, so folds differ by at most one sample overall
    and per class."""
    fold = np.empty(len(codes), dtype=np.int64)
    start = 0
    for c in np.unique(codes):
        idx = np.flatnonzero(codes == c)
        idx = idx[rng.permutation(len(idx))]
        fold[idx] = (start + np.arange(len(idx))) % k
        start = (start + len(idx)) % k
    return fold


def _stratified_group_kfold(codes: np.ndarray, groups: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Fold id per sample, whole groups per fold: groups (shuffled, then largest first) go one by
    one to the fold where their classes are least represented relative to an even share (ties:
    the fold with fewest samples)."""
    _, ginv = np.unique(groups, return_inverse=True)
    G = int(ginv.max()) + 1
    K = int(codes.max()) + 1
    counts = np.zeros((G, K))
    np.add.at(counts, (ginv, codes), 1.0)
    target = counts.sum(0) / k                                    # per-class share of one fold
    order = rng.permutation(G)
    order = order[np.argsort(-counts[order].sum(1), kind="stable")]
    fold_counts = np.zeros((k, K))
    g_fold = np.empty(G, dtype=np.int64)
    for g in order:
        c = counts[g]
        score = (fold_counts / np.maximum(target, 1e-12)) @ c / c.sum()
        size = fold_counts.sum(1)
        best = np.lexsort((size, np.round(score, 12)))[0]
        g_fold[g] = best
        fold_counts[best] += c
    return g_fold[ginv]


def cv_splits(codes: np.ndarray, groups: np.ndarray | None = None, n_folds: int = 5,
              test_size: float | None = None, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """The outer splits ``[(train_idx, test_idx), ...]`` for one labelling: stratified k-fold
    (with ``groups``, whole groups are assigned to folds, so a group never straddles train and
    test), or one stratified (grouped) held-out split of fraction ``test_size``. Deterministic in
    ``seed``; the splits depend on the labels, so permuted labels get re-stratified splits."""
    codes = np.asarray(codes)
    rng = np.random.default_rng(seed)
    if test_size is not None:
        return [stratified_holdout(codes, test_size, rng, groups)]
    if groups is None:
        fold = _stratified_kfold(codes, n_folds, rng)
    else:
        fold = _stratified_group_kfold(codes, np.asarray(groups), n_folds, rng)
    return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(n_folds)]


def _label(v) -> str:
    return repr(v.item() if isinstance(v, np.generic) else v)


def _check_attribute(name: str, classes, codes, groups, n_folds: int, test_size) -> None:
    if len(classes) < 2:
        raise LogitleakError(
            f"Attribute '{name}' has a single class ({_label(classes[0])}); a probe needs at least two, so drop this "
            f"attribute or add samples of another class.")
    need = 2 if test_size is not None else n_folds
    what = "a held-out split needs" if test_size is not None else f"{n_folds}-fold cross-validation needs"
    counts = np.bincount(codes, minlength=len(classes))
    if groups is None:
        worst = int(counts.argmin())
        if counts[worst] < need:
            raise LogitleakError(
                f"Attribute '{name}': class {_label(classes[worst])} has only {int(counts[worst])} samples but {what} at "
                f"least {need}; use fewer folds or merge or drop that class.")
    else:
        _, ginv = np.unique(groups, return_inverse=True)
        per_class = np.array([len(np.unique(ginv[codes == c])) for c in range(len(classes))])
        worst = int(per_class.argmin())
        if per_class[worst] < need:
            raise LogitleakError(
                f"Attribute '{name}': class {_label(classes[worst])} occurs in only {int(per_class[worst])} groups but "
                f"{what} at least {need}; use fewer folds or merge or drop that class.")


def _rng(seed: int, *words) -> np.random.Generator:
    entropy = [int(seed) & 0xFFFFFFFF] + [zlib.crc32(str(w).encode()) for w in words]
    return np.random.default_rng(np.random.SeedSequence(entropy))


# --------------------------------------------------------------------------------------------
# plans


@dataclass
class AttributePlan:
    """All labellings and splits of one attribute. Variant 0 holds the real labels, 1 the control
    task, 2.. the permutations; ``S`` splits per variant."""

    name: str
    classes: np.ndarray
    codes: np.ndarray
    labels: np.ndarray       # (V, n) int64
    train: np.ndarray        # (V, S, n) bool
    test: np.ndarray         # (V, S, n) bool
    inner_fit: np.ndarray    # (V, S, n) bool
    inner_val: np.ndarray    # (V, S, n) bool
    prior_loss: np.ndarray   # (V, n) bits of the training-fold prior at each tested row (NaN: untested)
    tested: np.ndarray       # (V, n) bool
    majority: np.ndarray     # (n,) correctness of the training-fold majority class (real labels)
    boot: np.ndarray         # (B, n_tested_real) resampling weights over the real variant's tested rows

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def n_variants(self) -> int:
        return self.labels.shape[0]

    @property
    def n_splits(self) -> int:
        return self.train.shape[1]


def plan_attribute(name: str, values, *, groups: np.ndarray | None = None, n_folds: int = 5,
                   test_size: float | None = None, n_permutations: int = 100, n_bootstrap: int = 1000,
                   val_fraction: float = 0.2, seed: int = 0) -> AttributePlan:
    """Labels, control task, permutations and every split for one attribute (validates it)."""
    classes, codes = encode_labels(name, values)
    n = len(codes)
    _check_attribute(name, classes, codes, groups, n_folds, test_size)
    K = len(classes)
    variants = [codes, M.control_labels(codes, _rng(seed, name, "control"), groups)]
    perm_rng = _rng(seed, name, "permutations")
    variants += [M.permute_labels(codes, perm_rng, groups) for _ in range(n_permutations)]
    labels = np.stack(variants)
    V = len(variants)
    S = 1 if test_size is not None else n_folds
    train = np.zeros((V, S, n), bool)
    test = np.zeros((V, S, n), bool)
    inner_fit = np.zeros((V, S, n), bool)
    inner_val = np.zeros((V, S, n), bool)
    inner_rng = _rng(seed, name, "inner")
    for v in range(V):
        splits = cv_splits(labels[v], groups, n_folds, test_size, seed)
        for s, (tr, te) in enumerate(splits):
            if len(te) == 0 or len(tr) == 0:
                raise LogitleakError(
                    f"Attribute '{name}': a split came out empty (too few samples or groups for {S} folds); "
                    f"use fewer folds.")
            train[v, s, tr] = True
            test[v, s, te] = True
            fi, va = stratified_holdout(labels[v], val_fraction, inner_rng, groups, rows=tr)
            if len(va) == 0:      # tiny folds: validate on the training rows rather than on nothing
                fi, va = tr, tr
            inner_fit[v, s, fi] = True
            inner_val[v, s, va] = True
    tested = test.any(1)
    prior_loss = np.stack([M.prior_loss_bits(labels[v], train[v], test[v], K) for v in range(V)])
    majority = M.majority_baseline(codes, train[0], test[0], K)
    t0 = tested[0]
    boot = M.bootstrap_weights(int(t0.sum()), n_bootstrap, _rng(seed, name, "bootstrap"),
                               None if groups is None else np.asarray(groups)[t0])
    return AttributePlan(name, classes, codes, labels, train, test, inner_fit, inner_val, prior_loss, tested,
                         majority, boot)


# --------------------------------------------------------------------------------------------
# batching


def _memory_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    avail = 8 << 30
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    return int(min(avail * 0.25, 3 << 30))


def _pair_bytes(family: str, n: int, d: int, K: int, itemsize: int, params: Mapping) -> int:
    """Rough peak bytes per (feature set, problem) pair while fitting."""
    if family == "linear":
        G = 1 if params.get("C") is not None else len(params.get("Cs", DEFAULT_CS))
        m = params.get("history", 6)
        per = n * K * 7 + (d + 1) * K * (2 * m + 9) + 2 * d + 3 * n
        return per * itemsize * max(G, 1)
    h = params.get("hidden", 64)
    per = n * h * 5 + n * K * 6 + (d * h + h * K) * 8 + 2 * d + 3 * n
    return per * itemsize


def _k_buckets(plans: Sequence[AttributePlan]) -> list[list[AttributePlan]]:
    """Attributes whose class counts are close share batches (padding to the largest)."""
    out: list[list[AttributePlan]] = []
    for p in sorted(plans, key=lambda p: p.n_classes):
        if out and p.n_classes <= max(2 * out[-1][0].n_classes, out[-1][0].n_classes + 2):
            out[-1].append(p)
        else:
            out.append([p])
    return out


@dataclass
class _Problems:
    """The problems of one bucket of attributes, flattened: (attribute, variant, split)."""

    plans: list[AttributePlan]
    attr: np.ndarray
    variant: np.ndarray
    split: np.ndarray
    K: int

    @classmethod
    def build(cls, plans):
        a, v, s = [], [], []
        for i, p in enumerate(plans):
            V, S = p.n_variants, p.n_splits
            a.append(np.full(V * S, i))
            v.append(np.repeat(np.arange(V), S))
            s.append(np.tile(np.arange(S), V))
        return cls(list(plans), np.concatenate(a), np.concatenate(v), np.concatenate(s),
                   max(p.n_classes for p in plans))

    def __len__(self):
        return len(self.attr)

    def seeds(self, idx: np.ndarray, seed: int) -> np.ndarray:
        """One seed per problem, from (seed, attribute, variant, split) only, so a problem's MLP
        initialisation does not depend on how the sweep was chunked."""
        return np.array([zlib.crc32(f"{seed}|{self.plans[self.attr[j]].name}|{self.variant[j]}|{self.split[j]}".encode())
                         for j in idx], dtype=np.int64)

    def arrays(self, idx: np.ndarray):
        """(labels, train, test, inner_fit, inner_val, class_mask) for problems ``idx``."""
        ys, tr, te, fi, va, cm = [], [], [], [], [], []
        for j in idx:
            p = self.plans[self.attr[j]]
            v, s = self.variant[j], self.split[j]
            ys.append(p.labels[v])
            tr.append(p.train[v, s])
            te.append(p.test[v, s])
            fi.append(p.inner_fit[v, s])
            va.append(p.inner_val[v, s])
            row = np.zeros(self.K, bool)
            row[: p.n_classes] = True
            cm.append(row)
        return tuple(np.stack(x) for x in (ys, tr, te, fi, va, cm))


def _fit_family(family: str, X: torch.Tensor, y, train, inner_fit, inner_val, K: int, params: Mapping, seed):
    """Fit one chunk; returns (log-probabilities (F, n, P, K), chosen C (F, P) or None)."""
    if family == "linear":
        lin = {k: v for k, v in params.items() if k in _LINEAR_KEYS}
        C = lin.pop("C", None)
        Cs = lin.pop("Cs", DEFAULT_CS)
        if C is not None:
            fit = fit_linear_batched(X, y, train, C=C, n_classes=K, **lin)
        else:
            fit = fit_linear_grid_batched(X, y, train, inner_fit, inner_val, Cs=Cs, n_classes=K, **lin)
        return fit.log_proba(X), fit.C
    if family == "mlp":
        mlp = {k: v for k, v in params.items() if k in _MLP_KEYS}
        fit = fit_mlp_batched(X, y, inner_fit, inner_val, n_classes=K, seed=seed, **mlp)
        return fit.log_proba(X), None
    raise LogitleakError(f"Unknown probe family '{family}'; use one of {', '.join(PROBE_FAMILIES)}.")


# --------------------------------------------------------------------------------------------
# rows


def _rows_for(plan: AttributePlan, keys, dims, lp: np.ndarray, pred: np.ndarray, C: np.ndarray, family: str,
              task_attribute, n_groups, n_folds_eff, n_permutations) -> list[dict]:
    """Result rows of one attribute x family for feature sets ``keys``; ``lp``/``pred`` are
    ``(F, V, n)`` out-of-fold log-probabilities (nats) of the variant's label and predictions."""
    tested = plan.tested                                   # (V, n)
    n_t = tested.sum(1)                                    # (V,)
    correct = (pred == plan.labels[None]) & tested[None]   # (F, V, n)
    acc = correct.sum(-1) / n_t                            # (F, V)
    probe_bits = np.where(tested[None], -lp / M.LN2, 0.0)
    ce = probe_bits.sum(-1) / n_t                          # (F, V)
    H = np.nanmean(np.where(tested, plan.prior_loss, np.nan), axis=1)   # (V,)
    vinfo = H[None] - ce                                   # (F, V)
    t0 = tested[0]
    codes_t = plan.codes[t0]
    corr0 = correct[:, 0][:, t0].astype(np.float64)        # (F, n_t)
    diff0 = plan.prior_loss[0][t0][None] - probe_bits[:, 0][:, t0]
    acc_lo, acc_hi = M.bootstrap_interval(plan.boot, corr0.T)
    vi_lo, vi_hi = M.bootstrap_interval(plan.boot, diff0.T)
    baseline = float(np.nanmean(plan.majority[t0]))
    H_plugin = M.label_entropy_bits(plan.codes, plan.n_classes)
    K = plan.n_classes
    rows = []
    for i, key in enumerate(keys):
        p0 = pred[i, 0][t0]
        row = {
            "level": key[0], "layer": key[1], "k": key[2], "attribute": plan.name, "probe": family,
            "task_relevant": task_attribute is not None and plan.name == task_attribute,
            "n": int(n_t[0]), "n_classes": K, "n_features": int(dims[i]),
            "accuracy": float(acc[i, 0]),
            "balanced_accuracy": M.balanced_accuracy(codes_t, p0, K),
            "macro_f1": M.macro_f1(codes_t, p0, K),
            "baseline_accuracy": baseline,
            "ci_low": float(acc_lo[i]), "ci_high": float(acc_hi[i]),
            "p_value": M.permutation_p_value(acc[i, 0], acc[i, 2:]),
            "p_value_tail": M.permutation_p_value_tail(acc[i, 0], acc[i, 2:]),
            "ce_bits": float(ce[i, 0]),
            "entropy_bits": float(H[0]),
            "v_info_bits": float(vinfo[i, 0]),
            "v_info_frac": float(vinfo[i, 0] / H[0]) if H[0] > 0 else float("nan"),
            "v_info_ci_low": float(vi_lo[i]), "v_info_ci_high": float(vi_hi[i]),
            "control_accuracy": float(acc[i, 1]),
            "selectivity": float(acc[i, 0] - acc[i, 1]),
            "label_entropy_bits": H_plugin,
            "v_info_p_value": M.permutation_p_value(vinfo[i, 0], vinfo[i, 2:]),
            "control_v_info_bits": float(vinfo[i, 1]),
            "n_permutations": int(n_permutations), "n_folds": int(n_folds_eff), "n_groups": n_groups,
            "C": float(np.median(C[i])) if C is not None and np.isfinite(C[i]).any() else float("nan"),
        }
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# the sweep


def evaluate_sweep(
    features: Mapping[tuple[str, int | None, int | None], np.ndarray],
    labels: Mapping[str, np.ndarray],
    *,
    groups: np.ndarray | None = None,
    task_attribute: str | None = None,
    probes: Sequence[str] = ("linear", "mlp"),
    n_folds: int = 5,
    n_permutations: int = 100,
    n_bootstrap: int = 1000,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
    test_size: float | None = None,
    val_fraction: float = 0.2,
    probe_params: Mapping[str, Mapping] | None = None,
    dtype: torch.dtype = torch.float32,
    memory_budget: int | None = None,
) -> pd.DataFrame:
    """Probe every feature set for every attribute with every probe family.

    ``features``: ``{(level, layer, k): (n, d) array}``; ``labels``: ``{attribute: (n,) labels}``
    (strings or integers); ``groups``: optional ``(n,)`` group ids (samples of one group never
    straddle a split; permutations, control labels and bootstrap resampling act on groups).
    ``n_folds``-fold stratified cross-validation, or one held-out split of fraction ``test_size``.
    Returns one row per (level, layer, k, attribute, probe) with every ``RESULT_COLUMNS`` column
    plus :data:`EXTRA_COLUMNS`; see :mod:`logitleak.metrics` for the definitions.

    ``probe_params``: per-family options, e.g. ``{"linear": {"C": 1.0}}`` (fixed C instead of the
    inner-split choice from ``Cs``), ``{"mlp": {"hidden": 32}}``. Deterministic given ``seed``
    (and device/dtype). ``n_permutations=0`` / ``n_bootstrap=0`` leave p-values / intervals NaN.
    """
    probes = tuple(probes)
    for fam in probes:
        if fam not in PROBE_FAMILIES:
            raise LogitleakError(f"Unknown probe family '{fam}'; use one of: {', '.join(PROBE_FAMILIES)}.")
    if not features:
        raise LogitleakError("No feature sets were given; pass at least one (level, layer, k) -> array.")
    if not labels:
        raise LogitleakError("No label attributes were given; pass at least one attribute -> labels.")
    if test_size is None and (int(n_folds) != n_folds or n_folds < 2):
        raise LogitleakError(f"n_folds must be an integer of at least 2, got {n_folds}; or pass test_size for one held-out split.")
    if test_size is not None and not 0 < test_size < 1:
        raise LogitleakError(f"test_size must be between 0 and 1, got {test_size}.")
    if n_permutations < 0 or n_bootstrap < 0:
        raise LogitleakError("n_permutations and n_bootstrap must be zero or positive.")
    if task_attribute is not None and task_attribute not in labels:
        raise LogitleakError(
            f"Task attribute '{task_attribute}' is not among the label attributes ({', '.join(map(str, labels))}); "
            f"pass one of those or none.")
    probe_params = {fam: dict((probe_params or {}).get(fam, {})) for fam in probes}
    for fam, opts in probe_params.items():
        allowed = _LINEAR_KEYS if fam == "linear" else _MLP_KEYS
        unknown = sorted(set(opts) - allowed)
        if unknown:
            raise LogitleakError(
                f"Unknown {fam} probe option(s) {', '.join(unknown)}; use some of {', '.join(sorted(allowed))}.")

    label_n = {a: len(np.asarray(v)) for a, v in labels.items()}
    n = next(iter(label_n.values()))
    for a, m in label_n.items():
        if m != n:
            first = next(iter(label_n))
            raise LogitleakError(
                f"Attribute '{a}' has {m} labels but attribute '{first}' has {n}; pass one label per sample for "
                f"every attribute.")
    feats = {}
    for key, X in features.items():
        key = tuple(key) if not isinstance(key, tuple) else key
        if len(key) != 3:
            raise LogitleakError(f"Feature key {key!r} is not a (level, layer, k) triple; use (name, None, None) when unsure.")
        if len(np.asarray(X)) != n:
            attr = next(iter(labels))
            raise LogitleakError(
                f"Feature set {_describe(key)} has {len(np.asarray(X))} rows but attribute '{attr}' has {n} labels; "
                f"pass features and labels for the same samples in the same order.")
        feats[key] = _check_features(key, X, n)
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (n,):
            raise LogitleakError(f"groups has shape {groups.shape} but there are {n} samples; pass one group id per sample.")
        if _is_missing(groups).any():
            raise LogitleakError("groups contains missing values; give every sample a group id.")
        n_groups = int(len(np.unique(groups)))
        if test_size is None and n_groups < n_folds:
            raise LogitleakError(f"There are only {n_groups} groups for {n_folds} folds; use fewer folds or more groups.")
    else:
        n_groups = None

    plans = [plan_attribute(a, v, groups=groups, n_folds=n_folds, test_size=test_size, n_permutations=n_permutations,
                            n_bootstrap=n_bootstrap, val_fraction=val_fraction, seed=seed)
             for a, v in labels.items()]
    buckets = [_Problems.build(b) for b in _k_buckets(plans)]
    dev = resolve_device(device)
    itemsize = torch.finfo(dtype).bits // 8
    budget = memory_budget or _memory_budget(dev)
    n_folds_eff = 1 if test_size is not None else n_folds

    by_dim: dict[int, list] = {}
    for key, X in feats.items():
        by_dim.setdefault(X.shape[1], []).append(key)

    # schedule: (keys chunk, family, bucket, problem chunks)
    schedule = []
    for d, keys in by_dim.items():
        x_bytes = n * d * (itemsize + 16)
        for fam in probes:
            for b in buckets:
                per_pair = _pair_bytes(fam, n, d, b.K, itemsize, probe_params[fam])
                room = max(budget - n * d * 16, per_pair)
                p_chunk = int(max(1, min(len(b), room // per_pair)))
                n_pc = math.ceil(len(b) / p_chunk)
                p_chunk = math.ceil(len(b) / n_pc)
                f_chunk = int(max(1, min(len(keys), room // (p_chunk * per_pair + x_bytes))))
                schedule.append((d, keys, fam, b, p_chunk, f_chunk))

    results: dict[tuple, dict] = {}
    total = sum(len(keys) * len(b) for (_, keys, _, b, _, _) in schedule)
    prog = _progress(progress)
    with prog:
        task = prog.add_task("probing", total=total)
        for d, keys, fam, b, p_chunk, f_chunk in schedule:
            for f0 in range(0, len(keys), f_chunk):
                kc = keys[f0: f0 + f_chunk]
                X, _, _ = prepare_features([feats[k] for k in kc], dev, dtype)
                F = len(kc)
                lp = [np.zeros((F, p.n_variants, n), np.float32) for p in b.plans]
                pr = [np.zeros((F, p.n_variants, n), np.int64) for p in b.plans]
                Cc = [np.full((F, p.n_splits), np.nan) for p in b.plans]
                for p0 in range(0, len(b), p_chunk):
                    idx = np.arange(p0, min(p0 + p_chunk, len(b)))
                    y, tr, te, fi, va, cm = b.arrays(idx)
                    prog.update(task, description=f"{fam} {_describe(kc[0])}" + (f" (+{F - 1})" if F > 1 else ""))
                    logp, C = _fit_family(fam, X, y, tr, fi, va, b.K, probe_params[fam], seed=b.seeds(idx, seed))
                    yt = torch.as_tensor(y, device=dev).clamp(0, b.K - 1).T.unsqueeze(0).unsqueeze(-1)
                    lpy = torch.gather(logp, -1, yt.expand(F, -1, -1, -1)).squeeze(-1).float().cpu().numpy()
                    pred = logp.argmax(-1).cpu().numpy()
                    C_np = C.double().cpu().numpy() if C is not None else None
                    del logp
                    pp, rr = np.nonzero(te)
                    gidx = idx[pp]
                    for ai in np.unique(b.attr[gidx]):
                        sel = b.attr[gidx] == ai
                        vv = b.variant[gidx[sel]]
                        lp[ai][:, vv, rr[sel]] = lpy[:, rr[sel], pp[sel]]
                        pr[ai][:, vv, rr[sel]] = pred[:, rr[sel], pp[sel]]
                    if C_np is not None:
                        real = (b.variant[idx] == 0)
                        for j in np.flatnonzero(real):
                            Cc[b.attr[idx[j]]][:, b.split[idx[j]]] = C_np[:, j]
                    prog.advance(task, F * len(idx))
                del X
                for ai, plan in enumerate(b.plans):
                    rows = _rows_for(plan, kc, [d] * F, lp[ai], pr[ai], Cc[ai] if fam == "linear" else None, fam,
                                     task_attribute, n_groups, n_folds_eff, n_permutations)
                    for key, row in zip(kc, rows):
                        results[(key, plan.name, fam)] = row
    ordered = [results[(key, a, fam)] for key in feats for a in labels for fam in probes]
    return to_frame(ordered)


class _NullProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *a, **k):
        return 0

    def update(self, *a, **k):
        pass

    def advance(self, *a, **k):
        pass


def _progress(enabled: bool):
    if not enabled:
        return _NullProgress()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True), transient=True)
