"""The report's Defences section: leakage against answer quality per defence, and the trade-off table.

Both read each defence's decisions (:func:`logitleak.decisions.decide_defences`), taken once per
run by ``defend`` and handed in; a trade-off table that is not a ``defend`` table (no
``defense_label``) is drawn as it is.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from logitleak.decisions import DefenceDecision, finite, num, strongest_rows
from logitleak.report.figure import Plot, attr_title, grid, label_axes, legend_below, to_data_uri
from logitleak.report.markup import esc, status
from logitleak.report.wording import fmt_int, fmt_p

Defences = dict[str, DefenceDecision]


def tradeoff_readings(tradeoff: pd.DataFrame, defences: Defences | None) -> pd.DataFrame:
    """The rows the trade-off plot draws: with ``defences``, each defence's strongest API-level
    reading per task-irrelevant attribute, as the decisions pick it (never an internal level such as
    the erased residual stream); without, the table as it is."""
    if defences:
        best = strongest_rows(defences)
        if len(best):
            return best
    return tradeoff


def tradeoff_plot(tradeoff: pd.DataFrame, relevance: dict[str, bool], defences: Defences | None = None) -> Plot | None:
    """Leakage (bits, or accuracy above baseline) against answer quality, one line per defence."""
    if tradeoff is None or len(tradeoff) == 0:
        return None
    df = tradeoff_readings(tradeoff, defences).copy()
    if "utility_accuracy" not in df.columns or "attribute" not in df.columns:
        return None
    for col in ("v_info_bits", "accuracy", "baseline_accuracy", "utility_accuracy"):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    numeric_strength = True
    if "strength" in df.columns:
        coerced = pd.to_numeric(df["strength"], errors="coerce")
        numeric_strength = not (coerced.isna() & df["strength"].notna()).any()
        df["strength"] = coerced if numeric_strength else df["strength"].astype(str)
    if "defense" not in df.columns:
        df["defense"] = "defence"
    if "strength" not in df.columns:
        df["strength"] = np.nan
    if "v_info_bits" in df.columns and df["v_info_bits"].notna().any():
        df["leak"] = df["v_info_bits"]
        ylabel = "leakage: V-information (bits)"
    elif {"accuracy", "baseline_accuracy"} <= set(df.columns):
        df["leak"] = df["accuracy"] - df["baseline_accuracy"]
        ylabel = "leakage: accuracy − baseline"
    else:
        return None
    df["attribute"] = df["attribute"].astype(str)
    attrs = [a for a in dict.fromkeys(df["attribute"]) if not relevance.get(a, False)] or list(dict.fromkeys(df["attribute"]))
    nrows, ncols = grid(len(attrs), 2)
    fig = Figure(figsize=(5.6 * ncols, 4.0 * nrows))
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#e377c2"]
    handles = {}
    for i, attr in enumerate(attrs):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        sub = df[df["attribute"] == attr]
        for j, (defense, g) in enumerate(sub.groupby(sub["defense"].astype(str), sort=False)):
            agg = g.groupby("strength", dropna=False, sort=numeric_strength).agg(
                leak=("leak", "max"), utility=("utility_accuracy", "mean"))
            c = palette[j % len(palette)]
            (line,) = ax.plot(agg["utility"], agg["leak"], "-o", color=c, lw=1.6, ms=5, label=str(defense))
            handles[str(defense)] = line
            for strength, r in agg.iterrows():
                if math.isfinite(num(r["utility"])) and math.isfinite(num(r["leak"])):
                    ax.annotate(f"{strength:g}" if isinstance(strength, (int, float)) and math.isfinite(strength) else str(strength),
                                (r["utility"], r["leak"]), textcoords="offset points", xytext=(4, 4), fontsize=7, color=c)
        ax.axhline(0, color="#333333", lw=0.6)
        label_axes(ax, attr_title(attr, relevance.get(attr, False)), "utility: answer accuracy", ylabel)
    legend_below(fig, handles, 6, 0.07)
    return Plot(
        "Defences: leakage against answer quality",
        "Each line is one defence over its strengths (labels); the best defence sits bottom-right: little "
        "leakage, answers still right. Leakage is the strongest API-level reading at that strength (the "
        "readable one with the most bits, as the verdict picks it).",
        to_data_uri(fig))


def tradeoff_table(tradeoff: pd.DataFrame, defences: Defences | None = None) -> str:
    """Every trade-off row; with ``defences``, each defence's decision columns (Holm p, LEAK / readable)."""
    if defences:
        tradeoff = pd.concat([d.decisions.table for d in defences.values()], ignore_index=True)
    cols = [c for c in ("defense", "strength", "attribute", "level", "layer", "k", "probe", "accuracy",
                        "baseline_accuracy", "p_value", "p_holm", "v_info_bits", "utility_accuracy", "leak")
            if c in tradeoff.columns and (c != "probe" or "p_holm" in tradeoff.columns)]
    head = "".join(f"<th>{esc({'p_holm': 'Holm p', 'leak': 'status'}.get(c, c))}</th>" for c in cols)
    body = []
    for _, r in tradeoff.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if c == "leak":
                cells.append(f"<td>{status(r)[1]}</td>")
                continue
            if c in ("p_value", "p_holm"):
                s = fmt_p(v) if c == "p_value" or bool(r.get("is_api")) else ""
            elif c in ("layer", "k"):
                s = fmt_int(v)
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                s = f"{num(v):.3g}" if finite(v) else "n/a"
            else:
                s = "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
            cells.append(f"<td>{esc(s)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'
