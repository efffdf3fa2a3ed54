"""The results table shared by `probe`, `audit` and `defend`.

One row per (level, layer, k, attribute, probe family); keys a row does not use are null."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

# Level names, in the order the report shows them (rich -> compressed): the one table's views.
from logitleak.levels.table import API_LEVELS, LEVELS  # noqa: F401 (re-exported)

# Key columns, then the measures. Extra columns are allowed after these.
KEY_COLUMNS: tuple[str, ...] = ("level", "layer", "k", "attribute", "probe")
RESULT_COLUMNS: tuple[str, ...] = KEY_COLUMNS + (
    "task_relevant", "n", "n_classes", "n_features",
    "accuracy", "balanced_accuracy", "macro_f1", "baseline_accuracy", "ci_low", "ci_high", "p_value",
    "ce_bits", "entropy_bits", "v_info_bits", "v_info_frac", "v_info_ci_low", "v_info_ci_high",
    "control_accuracy", "selectivity",
)


def to_frame(rows: Iterable[Mapping] | pd.DataFrame) -> pd.DataFrame:
    """Rows -> a DataFrame with every schema column present (missing ones null), schema first."""
    df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    for col in RESULT_COLUMNS:
        if col not in df.columns:
            df[col] = None
    extra = [c for c in df.columns if c not in RESULT_COLUMNS]
    df = df[list(RESULT_COLUMNS) + extra]
    df["layer"] = df["layer"].astype("Int64")
    df["k"] = df["k"].astype("Int64")
    return df


def atomic_write(path: str | Path, write, checksum: bool = False) -> None:
    """Write ``path`` through ``write(tmp_path)`` then rename: readers never see a half-written file.
    ``checksum``: also record its SHA-256 in the directory's ``checksums.json`` (a cached file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if checksum:
        from logitleak.integrity import record_checksum

        record_checksum(path)


def _json_value(v):
    if v is None or v is pd.NA:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "item"):
        return _json_value(v.item())
    return v


def write_json(path: str | Path, obj, checksum: bool = False) -> None:
    """Write JSON atomically (temp file + rename), NaN as null; ``checksum`` as in :func:`atomic_write`."""
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, default=_json_value)),
                 checksum=checksum)


def write_results(rows: Iterable[Mapping] | pd.DataFrame, out_dir: str | Path, stem: str = "results") -> pd.DataFrame:
    """Write ``{stem}.parquet``, ``{stem}.csv`` and ``{stem}.json`` (a list of row objects), atomically."""
    df = to_frame(rows)
    out = Path(out_dir)
    atomic_write(out / f"{stem}.parquet", lambda tmp: df.to_parquet(tmp, index=False))
    atomic_write(out / f"{stem}.csv", lambda tmp: df.to_csv(tmp, index=False))
    records = [{k: _json_value(v) for k, v in r.items()} for r in df.to_dict(orient="records")]
    write_json(out / f"{stem}.json", records)
    return df


def read_results(out_dir: str | Path, stem: str = "results") -> pd.DataFrame:
    """Read a results table written by :func:`write_results`."""
    return to_frame(pd.read_parquet(Path(out_dir) / f"{stem}.parquet"))
