"""The attacker's view on disk: cost curves, ROC curves and per-record exposure, split off the results table.

A sweep with ``attack_levels`` returns, beside the audit's rows, cost-curve rows (``attacker_samples``
set) and per-row detail columns (lists and JSON: :data:`~logitleak.probing.attack_view.DETAIL_COLUMNS`).
The results table keeps one row per (level, layer, k, attribute, probe) with the summary columns
(``auc``, ``tpr_at_1pct_fpr``, ``exposed_posterior_0_9``, ...); :func:`split_attack` moves the rest
into :class:`AttackTables`, which :func:`write_attack` saves beside it:

* ``attack_cost.parquet`` / ``.csv`` / ``.json``: every cost-curve row, and the full-size linear row
  of each attacked reading (its ``attacker_samples`` empty), so one table holds every curve;
* ``roc.parquet``: each row's ROC curve (mean one-vs-rest TPR at each FPR of
  :data:`~logitleak.probing.roc.CURVE_FPR`), and ``roc_values.parquet``: the figures per attribute value;
* ``exposure.parquet``: every tested record's posterior on its true value, per attacked row.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from logitleak.integrity import atomic_write
from logitleak.probing.attack_view import DETAIL_COLUMNS
from logitleak.probing.roc import CURVE_FPR
from logitleak.results import KEY_COLUMNS, read_results, to_frame, write_results

CURVE_STEM = "attack_cost"
FILES = {"roc": "roc.parquet", "values": "roc_values.parquet", "exposure": "exposure.parquet"}


@dataclass(frozen=True)
class AttackTables:
    """What the attacker's view adds to an audit beside its results table (see the module docstring)."""

    curve: pd.DataFrame
    roc: pd.DataFrame
    values: pd.DataFrame
    exposure: pd.DataFrame

    @property
    def empty(self) -> bool:
        return self.curve.empty and self.roc.empty


def _is_curve(rows: pd.DataFrame) -> pd.Series:
    if "attacker_samples" not in rows.columns:
        return pd.Series(False, index=rows.index)
    return pd.to_numeric(rows["attacker_samples"], errors="coerce").notna()


def _keys(row) -> dict:
    return {c: row[c] for c in KEY_COLUMNS}


def _reading(row) -> tuple:
    """(level, layer, k, attribute) of a row, NA as None."""
    return tuple(None if pd.isna(row[c]) else row[c] for c in ("level", "layer", "k", "attribute"))


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """A detail table with the results table's key types (``layer`` and ``k`` nullable integers)."""
    for c in ("layer", "k"):
        if c in df.columns:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    return df


def split_attack(rows: pd.DataFrame, probeset=None, attributes: Sequence[str] = ()) -> tuple[pd.DataFrame,
                                                                                              AttackTables]:
    """``(results, attack tables)`` of a sweep's rows: the audit's rows without the cost-curve rows
    and detail columns, and those moved to :class:`AttackTables`. ``probeset`` (a
    :class:`~logitleak.data.probeset.ProbeSet`) names the exposure table's records and their values
    of ``attributes``."""
    sample_names = None if probeset is None else [probeset.row_name(i) for i in range(len(probeset))]
    labels = {a: probeset.labels(a) for a in attributes} if probeset is not None else None
    rows = to_frame(rows).reset_index(drop=True)
    curve_mask = _is_curve(rows)
    main = rows[~curve_mask].reset_index(drop=True)
    if "attacker_samples" not in main.columns:
        main["attacker_samples"] = pd.NA
    main["attacker_samples"] = pd.array([pd.NA] * len(main), dtype="Int64")
    attacked = main["auc"].notna() if "auc" in main.columns else pd.Series(False, index=main.index)
    roc, values, exposure = [], [], []
    for _, row in main[attacked].iterrows():
        keys = _keys(row)
        curve = np.asarray(row.get("roc_curve"), dtype=np.float64).ravel() if row.get("roc_curve") is not None else []
        roc += [{**keys, "fpr": float(f), "tpr": float(t)} for f, t in zip(CURVE_FPR, curve)]
        for value, fig in json.loads(row["roc_values"]).items() if isinstance(row.get("roc_values"), str) else []:
            values.append({**keys, "value": value, **fig})
        post = np.asarray(row.get("posterior_true"), dtype=np.float64).ravel()
        idx = np.flatnonzero(np.isfinite(post))
        truth = labels.get(str(row["attribute"])) if labels else None
        part = pd.DataFrame({"sample": idx, "posterior_true": post[idx].astype(np.float32)})
        part["name"] = None if sample_names is None else np.asarray(sample_names, dtype=object)[idx]
        part["value"] = None if truth is None else np.asarray(truth).astype(str)[idx]
        exposure.append(part.assign(**keys)[[*KEY_COLUMNS, "sample", "name", "value", "posterior_true"]])
    costed = {_reading(r) for _, r in rows[curve_mask].iterrows()}       # the readings with curves, and their last point
    full = main[attacked & (main["probe"] == "linear") & np.array([_reading(r) in costed for _, r in main.iterrows()],
                                                                  dtype=bool)]
    curve = to_frame(pd.concat([rows[curve_mask], full], ignore_index=True)) if curve_mask.any() else to_frame([])
    curve = curve.drop(columns=[c for c in DETAIL_COLUMNS if c in curve.columns])
    if len(curve):
        curve["attacker_samples"] = pd.to_numeric(curve["attacker_samples"], errors="coerce").astype("Int64")
    main = main.drop(columns=[c for c in DETAIL_COLUMNS if c in main.columns])
    exposure_df = pd.concat(exposure, ignore_index=True) if exposure else pd.DataFrame()
    return to_frame(main), AttackTables(curve, *(_typed(df) for df in (pd.DataFrame(roc), pd.DataFrame(values),
                                                                          exposure_df)))


def write_attack(tables: AttackTables, out_dir: str | Path) -> None:
    """Save the tables beside the results (atomically; an empty table removes a stale file)."""
    out = Path(out_dir)
    if len(tables.curve):
        write_results(tables.curve, out, stem=CURVE_STEM)
    else:
        for ext in ("parquet", "csv", "json"):
            (out / f"{CURVE_STEM}.{ext}").unlink(missing_ok=True)
    for name, file in FILES.items():
        df = getattr(tables, name)
        if len(df):
            atomic_write(out / file, lambda tmp, df=df: df.to_parquet(tmp, index=False))
        else:
            (out / file).unlink(missing_ok=True)


def read_attack(out_dir: str | Path) -> AttackTables:
    """The tables :func:`write_attack` saved in ``out_dir`` (empty frames for missing files)."""
    out = Path(out_dir)
    curve = read_results(out, stem=CURVE_STEM) if (out / f"{CURVE_STEM}.parquet").is_file() else to_frame([])
    parts = {name: _typed(pd.read_parquet(out / file)) if (out / file).is_file() else pd.DataFrame()
             for name, file in FILES.items()}
    return AttackTables(curve, **parts)
