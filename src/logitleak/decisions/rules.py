"""The row-level decision rules every command reads: Holm, readable, leak, strongest family, smallest k.

* **Multiple comparisons.** Every API-level row (levels in ``API_LEVELS``: every attribute,
  level, k and probe family) with a p-value is one test of the family that leak claims come
  from; their p-values are adjusted together (``p_holm``, the family-adjusted p-value;
  ``p_adjustment`` names the method, :mod:`logitleak.decisions.multiplicity`): Westfall–Young
  over the shared permutations when every test is a permutation test, else Holm-Bonferroni.
  Rows of the internal levels (residual, lenses, full logits) keep their per-test p-value: they
  are shown for comparison, never as an API leak claim.
* **Readable.** A row is readable when its p-value (Holm-adjusted at the API levels) is below
  ``alpha`` AND the lower end of its accuracy interval (``ci_low``) is above the majority
  baseline (``baseline_accuracy``; for a numeric attribute: the R² interval above 0). A missing
  p-value or interval is never readable.
* **Leak.** A readable API-level row of a task-irrelevant attribute.
* **Strongest probe family.** For each (level, layer, k, attribute) one row stands for the
  level: among the families that are readable, the one with the most V-information
  (``v_info_bits``, accuracy breaks ties); if none is readable, the one with the most
  V-information overall.
* **Strongest reading** of a set of rows (an attribute at the API levels, or at one level): the
  readable row with the most V-information, or the row with the most V-information when none is.
* **Smallest k.** Among readable rows, the one with the smallest k (``top1_prob`` has no k and
  counts as k=1); the most V-information breaks ties.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from logitleak.decisions.multiplicity import family_adjust
from logitleak.levels.table import API_LEVELS, LEVELS, TUNED_LENS_LEVELS
from logitleak.results import to_frame

TUNED_LEVELS: tuple[str, ...] = TUNED_LENS_LEVELS
NUMERIC_COLUMNS: tuple[str, ...] = (
    "accuracy", "baseline_accuracy", "ci_low", "ci_high", "p_value", "v_info_bits", "v_info_ci_low",
    "v_info_ci_high", "entropy_bits", "v_info_frac", "balanced_accuracy", "control_accuracy", "selectivity",
    "macro_f1", "ce_bits")


def num(v) -> float:
    """Any cell -> float, NaN for null / non-numbers."""
    if v is None or v is pd.NA:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def finite(v) -> bool:
    """Whether a cell holds a finite number."""
    return math.isfinite(num(v))


BITS_RESOLUTION = 1e-5
"""Bits below this are float rounding, not information: the probes' float32 log-probabilities
resolve about 1e-7 bits a sample, and constant features read 2e-9 bits with an interval of
[1.2e-8, 6.9e-8]; no attribute leaks 1e-5 bits in any sense that matters."""


def bits_shown(row) -> bool:
    """Whether the bits' interval lies above zero by more than float rounding
    (:data:`BITS_RESOLUTION`): a bits figure is only claimed when it does."""
    return finite(row.get("v_info_ci_low")) and num(row["v_info_ci_low"]) > BITS_RESOLUTION


def _truthy(v) -> bool:
    if v is None or v is pd.NA:
        return False
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "y", "t")
    try:
        if isinstance(v, float) and math.isnan(v):
            return False
        return bool(v)
    except (TypeError, ValueError):
        return False


def relevance(results: pd.DataFrame) -> dict[str, bool]:
    """attribute -> whether the question asked about it (any row marks it task-relevant)."""
    out: dict[str, bool] = {}
    for attr, flag in zip(results["attribute"], results["task_relevant"]):
        key = str(attr)
        out[key] = out.get(key, False) or _truthy(flag)
    return out


def level_rank(level: str) -> int:
    """Where a level sits in the order information travels (unknown levels last)."""
    return LEVELS.index(level) if level in LEVELS else len(LEVELS)


def annotate(results: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """The table with the decision columns added: ``is_api``, ``task_relevant_attr``, ``p_holm``
    (API rows only: the family-adjusted p-value), ``p_adjustment`` (its method), ``p_used``, ``significant``, ``above_baseline``, ``readable``, ``leak``
    (readable, API level, task-irrelevant) and ``rank_key`` (the family-ranking key; not called
    ``strength``, which a trade-off table already uses for a defence's setting)."""
    df = to_frame(results).reset_index(drop=True)
    for col, missing in (("attribute", "attribute"), ("level", "level"), ("probe", "probe")):
        df[col] = df[col].astype(object).where(df[col].notna(), missing).astype(str)
    for col in NUMERIC_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    rel = relevance(df)
    df["task_relevant_attr"] = df["attribute"].map(rel).astype(bool)
    df["is_api"] = df["level"].isin(API_LEVELS)
    df["p_holm"] = np.nan
    df["p_adjustment"] = None
    api_idx = df.index[df["is_api"]]
    if len(api_idx):
        adjusted, method = family_adjust(df.loc[api_idx])
        df.loc[api_idx, "p_holm"] = adjusted
        df.loc[api_idx, "p_adjustment"] = method
    df["p_used"] = np.where(df["is_api"], df["p_holm"], df["p_value"])
    df["significant"] = np.isfinite(df["p_used"]) & (df["p_used"] < alpha)
    df["above_baseline"] = (np.isfinite(df["ci_low"]) & np.isfinite(df["baseline_accuracy"])
                            & (df["ci_low"] > df["baseline_accuracy"]))
    if "r2_ci_low" in df.columns:  # numeric attributes: the R² interval above the training-mean predictor's 0
        r2_lo = pd.to_numeric(df["r2_ci_low"], errors="coerce").astype(float)
        df["above_baseline"] |= np.isfinite(r2_lo) & (r2_lo > 0)
    df["readable"] = df["significant"] & df["above_baseline"]
    df["leak"] = df["readable"] & df["is_api"] & ~df["task_relevant_attr"]
    bits = df["v_info_bits"].where(np.isfinite(df["v_info_bits"]), -np.inf)
    acc = df["accuracy"].where(np.isfinite(df["accuracy"]), -np.inf)
    df["rank_key"] = list(zip(df["readable"].astype(int), bits, acc))
    df["_rank"] = df["level"].map(level_rank)
    return df


def strongest(ann: pd.DataFrame) -> pd.DataFrame:
    """One row per (level, layer, k, attribute): the strongest probe family (see module doc)."""
    if ann.empty:
        return ann.copy()
    order = sorted(range(len(ann)), key=lambda i: ann["rank_key"].iat[i], reverse=True)
    ranked = ann.iloc[order]
    keyed = ranked.assign(_lk=ranked["layer"].astype("Float64").fillna(-1.0),
                          _kk=ranked["k"].astype("Float64").fillna(-1.0))
    best = keyed.drop_duplicates(subset=["level", "_lk", "_kk", "attribute"], keep="first")
    best = best.sort_values(["_rank", "attribute", "_lk", "_kk"], kind="stable")
    return best.drop(columns=["_lk", "_kk"]).reset_index(drop=True)


def best_row(rows: pd.DataFrame):
    """The row with the most V-information (accuracy breaks ties; readable rows first), or None."""
    if rows.empty:
        return None
    i = max(range(len(rows)), key=lambda j: rows["rank_key"].iat[j][1:] + (rows["readable"].iat[j],))
    return rows.iloc[i]


def strongest_reading(rows: pd.DataFrame):
    """The reading that stands for ``rows`` (e.g. one attribute at one level, or at the API levels):
    the readable row with the most V-information when any is readable, else the row with the most
    V-information; None for no rows."""
    readable = rows[rows["readable"]] if len(rows) else rows
    return best_row(readable) if len(readable) else best_row(rows)


def k_order(row) -> float:
    """The k a row is read at, for "smallest k" (``top1_prob``, with no k, is a k=1 reading)."""
    return num(row["k"]) if finite(row.get("k")) else 1.0


def smallest_k_key(row) -> tuple[float, float]:
    """The "smallest k" ordering: k first, then the most V-information."""
    return (k_order(row), -num(row["v_info_bits"]) if finite(row.get("v_info_bits")) else 0.0)


def smallest_k_row(rows: pd.DataFrame):
    """The row with the smallest k (the most V-information breaks ties), or None."""
    if rows.empty:
        return None
    return min((rows.iloc[i] for i in range(len(rows))), key=smallest_k_key)
