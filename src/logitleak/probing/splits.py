"""Labels and splits: label encoding, input checks, stratified (grouped) cross-validation folds."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pandas as pd

from logitleak.errors import LogitleakError

# --------------------------------------------------------------------------------------------
# inputs


def describe_key(key) -> str:
    level, layer, k = key
    out = f"'{level}'"
    if layer is not None:
        out += f" layer {layer}"
    if k is not None:
        out += f" k={k}"
    return out


def is_missing(arr: np.ndarray) -> np.ndarray:
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
    missing = is_missing(arr)
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


def check_features(key, X, n: int | None) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise LogitleakError(
            f"Feature set {describe_key(key)} has shape {X.shape}; pass a 2-D (samples x features) array per "
            f"(level, layer, k).")
    if X.dtype.kind not in "fiub":
        raise LogitleakError(f"Feature set {describe_key(key)} is not numeric (dtype {X.dtype}); pass numbers.")
    if X.shape[1] == 0:
        raise LogitleakError(f"Feature set {describe_key(key)} has no feature columns; drop it or pass its features.")
    bad = ~np.isfinite(X) if X.dtype.kind == "f" else np.zeros(X.shape, bool)
    if bad.any():
        raise LogitleakError(
            f"Feature set {describe_key(key)} contains {int(bad.sum())} NaN or infinite values; fill or drop them "
            f"before probing.")
    if n is not None and len(X) != n:
        raise LogitleakError(
            f"Feature set {describe_key(key)} has {len(X)} rows but the labels have {n}; pass features and labels for "
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
    """Fold id per sample, whole groups per fold: :func:`_stratified_kfold` over the groups, each
    group standing for its most frequent label (each class's groups, shuffled, dealt to the folds
    in turn), so every fold gets each class from ``k`` groups of it on. Blind to group sizes on
    purpose: given the folds, the labels of a fold's groups are then exchangeable whatever their
    sizes, which the held-out test relies on (a greedy that balanced each fold's samples per class
    placed large groups by their labels, and grouped nulls with a few dominant groups rejected
    8-10% at 0.05). With a single class (label-free splits, e.g. regression) nothing depends on
    labels, so groups go largest first to the fold with fewest samples."""
    _, ginv = np.unique(groups, return_inverse=True)
    G = int(ginv.max()) + 1
    K = int(codes.max()) + 1
    counts = np.zeros((G, K))
    np.add.at(counts, (ginv, codes), 1.0)
    if K > 1 and (counts.sum(0) > 0).sum() > 1:
        return _stratified_kfold(counts.argmax(1), k, rng)[ginv]
    order = rng.permutation(G)
    order = order[np.argsort(-counts[order].sum(1), kind="stable")]
    size = np.zeros(k)
    g_fold = np.empty(G, dtype=np.int64)
    for g in order:
        g_fold[g] = int(size.argmin())
        size[g_fold[g]] += counts[g].sum()
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


def check_attribute(name: str, classes, codes, groups, n_folds: int, test_size) -> None:
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


def seeded_rng(seed: int, *words) -> np.random.Generator:
    entropy = [int(seed) & 0xFFFFFFFF] + [zlib.crc32(str(w).encode()) for w in words]
    return np.random.default_rng(np.random.SeedSequence(entropy))


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

