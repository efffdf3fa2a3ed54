"""The numeric-attribute statements of the verdict: how close a reading gets, in the attribute's units.

For every numeric attribute (box, centre, area) one statement says how well the API output and the
residual stream read it ("the top-20 logprobs give center_x to within 2.1 px"), beside the
training-mean baseline.
"""

from __future__ import annotations

import math

import pandas as pd

from logitleak.decisions import Decisions, best_row, finite, num
from logitleak.levels.table import API_LEVELS
from logitleak.report.finding import Finding
from logitleak.report.wording import fmt_interval, fmt_num, where


def numeric_findings(dec: Decisions) -> list[Finding]:
    """One statement per numeric attribute: how close the best API-level reading gets, in the
    attribute's units, beside the training-mean baseline and the best residual-stream layer."""
    ann, best = dec.table, dec.best
    if ann.empty or "r2" not in ann.columns:
        return []
    num_rows = best[pd.to_numeric(best["r2"], errors="coerce").notna()]
    out = []
    for attr in dict.fromkeys(num_rows["attribute"]):
        rows = num_rows[num_rows["attribute"] == attr]
        parts = []
        api = rows[rows["level"].isin(API_LEVELS)]
        for level in [lv for lv in ("topk_ids", "topk_logprobs") if lv in set(api["level"])]:
            lv = api[api["level"] == level]
            r = lv.loc[lv["k"].astype("Float64").fillna(0).idxmax()]
            k = f"top-{int(num(r['k']))} " if finite(r.get("k")) else ""
            what = {"topk_ids": "logprobs with ids", "topk_logprobs": "sorted logprobs (no ids)"}[level]
            state = "readable" if bool(r.get("readable")) else "not significant"
            parts.append(f"the {k}{what} give it to within {fmt_num(r['mae'])} on average (R² {fmt_num(r['r2'])}"
                         f"{fmt_interval(r.get('r2_ci_low'), r.get('r2_ci_high'))}, {state})")
        res = rows[rows["level"] == "residual"]
        r = best_row(res)
        if r is not None:
            parts.append(f"the residual stream at its best ({where(r)}) to within {fmt_num(r['mae'])} "
                         f"(R² {fmt_num(r['r2'])}{fmt_interval(r.get('r2_ci_low'), r.get('r2_ci_high'))})")
        if not parts:
            continue
        base = num(rows["baseline_mae"].iloc[0]) if "baseline_mae" in rows else math.nan
        txt = (f"{attr} (numeric, in its own units): " + "; ".join(parts)
               + (f" — predicting the training mean is off by {base:.2f}." if math.isfinite(base) else "."))
        out.append(Finding("numeric", txt, attr))
    return out
