"""Loading feature and label files for ``logitleak probe``.

Features:

* ``.npy`` -- one array; its level name is the file stem.
* ``.npz`` -- several named arrays; each is probed as a level of that name.
* ``.parquet`` -- the numeric columns form one feature matrix; the level name is the file stem.

A 2-D array ``(n, d)`` is one feature set (layer null); a 3-D array ``(n, L, d)`` is one feature
set per layer ``0..L-1``; a 1-D array ``(n,)`` is one feature.

Labels: ``.csv`` or ``.parquet`` with one column per attribute and optionally a group column;
every other column is an attribute.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from logitleak.data.probeset import is_numeric_column
from logitleak.errors import LogitleakError

FEATURE_SUFFIXES = (".npy", ".npz", ".parquet")
LABEL_SUFFIXES = (".csv", ".parquet")

FeatureKey = tuple[str, "int | None", "int | None"]


def _existing(path: str | Path, what: str, suffixes: tuple[str, ...]) -> Path:
    p = Path(path)
    if not p.exists():
        raise LogitleakError(f"{what} file {p} does not exist; check the path.")
    if not p.is_file():
        raise LogitleakError(f"{what} path {p} is not a file; pass a file.")
    if p.suffix.lower() not in suffixes:
        raise LogitleakError(
            f"{what} file {p} has unsupported extension '{p.suffix}'; use one of {', '.join(suffixes)}.")
    return p


def _split_layers(name: str, arr: np.ndarray, source: Path) -> dict[FeatureKey, np.ndarray]:
    arr = np.asarray(arr)
    if arr.dtype.kind not in "fiub":
        raise LogitleakError(f"Features '{name}' in {source} are not numeric (dtype {arr.dtype}); store numbers.")
    if arr.ndim == 1:
        return {(name, None, None): arr[:, None]}
    if arr.ndim == 2:
        return {(name, None, None): arr}
    if arr.ndim == 3:
        return {(name, layer, None): arr[:, layer, :] for layer in range(arr.shape[1])}
    raise LogitleakError(
        f"Features '{name}' in {source} have shape {arr.shape}; store (samples, features) or "
        f"(samples, layers, features) arrays.")


def load_features(path: str | Path) -> dict[FeatureKey, np.ndarray]:
    """``{(level, layer, k): (n, d) array}`` from a ``.npy``, ``.npz`` or parquet file."""
    p = _existing(path, "Features", FEATURE_SUFFIXES)
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            return _split_layers(p.stem, np.load(p, allow_pickle=False), p)
        if suffix == ".npz":
            out: dict[FeatureKey, np.ndarray] = {}
            with np.load(p, allow_pickle=False) as z:
                if not z.files:
                    raise LogitleakError(f"Features file {p} holds no arrays; save at least one.")
                for name in z.files:
                    out.update(_split_layers(name, z[name], p))
            return out
        df = pd.read_parquet(p)
    except LogitleakError:
        raise
    except Exception as err:  # unreadable / corrupt files
        raise LogitleakError(f"Features file {p} could not be read ({type(err).__name__}: {err}); check the file.") from None
    numeric = df.select_dtypes(include=["number", "bool"])
    if numeric.shape[1] == 0:
        raise LogitleakError(f"Features file {p} has no numeric columns; store the features as numeric columns.")
    return {(p.stem, None, None): numeric.to_numpy()}


def load_labels(path: str | Path, group_column: str | None = None) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """``({attribute: labels}, groups or None)`` from a CSV or parquet label table."""
    p = _existing(path, "Labels", LABEL_SUFFIXES)
    try:
        if p.suffix.lower() == ".csv":
            df = pd.read_csv(p, keep_default_na=True)
        else:
            df = pd.read_parquet(p)
    except Exception as err:
        raise LogitleakError(f"Labels file {p} could not be read ({type(err).__name__}: {err}); check the file.") from None
    df.columns = [str(c) for c in df.columns]
    groups = None
    if group_column is not None:
        if group_column not in df.columns:
            raise LogitleakError(
                f"Group column '{group_column}' is not in {p} (columns: {', '.join(df.columns)}); pass one of those.")
        groups = df[group_column].to_numpy()
        df = df.drop(columns=[group_column])
    if df.shape[1] == 0:
        raise LogitleakError(f"Labels file {p} has no attribute columns; add one column per attribute.")
    labels = {}
    for col in df.columns:
        s = df[col]
        if s.isna().any():
            raise LogitleakError(
                f"Attribute column '{col}' in {p} has {int(s.isna().sum())} empty cells; fill them or drop those rows "
                f"from features and labels.")
        arr = s.to_numpy()
        if is_numeric_column(s):  # a numeric attribute: regression probes
            arr = arr.astype(np.float64)
        elif arr.dtype.kind == "f":  # whole numbers stored as floats, few of them: class labels
            arr = arr.astype(str)
        labels[col] = arr
    return labels, groups
