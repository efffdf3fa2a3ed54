"""The results table shared by `probe`, `audit` and `defend`.

One row per (level, layer, k, attribute, probe family); keys a row does not use are null."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from logitleak.integrity import atomic_write, json_value, write_json

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


def write_results(rows: Iterable[Mapping] | pd.DataFrame, out_dir: str | Path, stem: str = "results") -> pd.DataFrame:
    """Write ``{stem}.parquet``, ``{stem}.csv`` and ``{stem}.json`` (a list of row objects), atomically."""
    df = to_frame(rows)
    out = Path(out_dir)
    atomic_write(out / f"{stem}.parquet", lambda tmp: df.to_parquet(tmp, index=False))
    atomic_write(out / f"{stem}.csv", lambda tmp: df.to_csv(tmp, index=False))
    records = [{k: json_value(v) for k, v in r.items()} for r in df.to_dict(orient="records")]
    write_json(out / f"{stem}.json", records)
    return df


def read_results(out_dir: str | Path, stem: str = "results") -> pd.DataFrame:
    """Read a results table written by :func:`write_results`."""
    return to_frame(pd.read_parquet(Path(out_dir) / f"{stem}.parquet"))
