"""The report's attacker's-view section: what a leak costs to exploit (cost curves) and the cheapest attack.

It reads the decisions on the curves (:func:`logitleak.decisions.attack.decide_attack`, taken once)
and draws, per attribute, the accuracy of the attacker's linear probe against the number of
labelled samples the attacker holds (log axis), for the reading the audit found strongest on the
curves, with its intervals and the majority baseline.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from logitleak.decisions import Decisions
from logitleak.decisions.attack import AttackDecisions
from logitleak.report.attack_roc import exposure_table, roc_plot
from logitleak.report.figure import (Plot, attr_title, color, error_bars, grid, label_axes, legend_below, to_data_uri,
                                     values)
from logitleak.report.markup import esc, figures

READING = ["level", "layer", "k"]
COST_CAPTION = ("Accuracy of the attacker's linear probe trained on nested subsets of each training fold (the test "
                "folds fixed, so every point is scored on the audit's held-out samples), with 95% intervals; the last "
                "point is the audit's own row (the whole training fold). Filled: readable after Holm over every "
                "curve point.")


def _reading(rows: pd.DataFrame) -> pd.DataFrame:
    """The points of the curve whose full-size row reads the most (V-information, then accuracy)."""
    full = rows[rows["full_size"]]
    pick = full if len(full) else rows
    best = pick.sort_values(["readable", "v_info_bits", "accuracy"], ascending=False, kind="stable").iloc[0]
    same = np.ones(len(rows), bool)
    for c in READING:
        same &= (rows[c].isna() & pd.isna(best[c])) | (rows[c] == best[c]).fillna(False).to_numpy(bool)
    return rows[same].sort_values("samples", kind="stable")


def cost_plot(attack: AttackDecisions) -> Plot | None:
    """Accuracy against attacker samples, one panel per attribute (task-irrelevant first)."""
    ann = attack.curve
    if ann is None or ann.empty:
        return None
    attrs = sorted(dict.fromkeys(ann["attribute"]), key=lambda a: bool(ann.loc[ann["attribute"] == a,
                                                                               "task_relevant_attr"].iloc[0]))
    nrows, ncols = grid(len(attrs))
    fig = Figure(figsize=(5.0 * ncols, 3.5 * nrows))
    handles = {}
    for i, attr in enumerate(attrs):
        rows = ann[ann["attribute"] == attr]
        relevant = bool(rows["task_relevant_attr"].iloc[0])
        pts = _reading(rows)
        ax = fig.add_subplot(nrows, ncols, i + 1)
        x, y = values(pts["samples"]), values(pts["accuracy"])
        c = color(str(pts["level"].iloc[0]))
        ax.errorbar(x, y, yerr=error_bars(y, values(pts["ci_low"]), values(pts["ci_high"])), color=c, lw=1.6,
                    capsize=2)
        readable = pts["readable"].to_numpy(bool)
        handles["readable (Holm p and interval)"] = ax.plot(x[readable], y[readable], "o", color=c, ms=5)[0]
        handles["not readable"] = ax.plot(x[~readable], y[~readable], "o", mfc="white", mec=c, ms=5)[0]
        base = values(pts["baseline_accuracy"])
        if np.isfinite(base).any():
            handles["majority baseline"] = ax.axhline(float(np.nanmedian(base)), color="#888888", ls=":", lw=1.2)
        top = pts.iloc[-1]
        k = f" k={int(top['k'])}" if pd.notna(top["k"]) else ""
        ax.set_xscale("log")
        ax.set_xticks(x, [str(int(v)) for v in x], fontsize=8)
        ax.minorticks_off()
        label_axes(ax, f"{attr_title(attr, relevant)}\n{top['level']}{k}, linear probe", "attacker's labelled samples",
                   "held-out accuracy")
    legend_below(fig, handles, 3, 0.07)
    return Plot("Attack cost", COST_CAPTION, to_data_uri(fig))


def attack_section(attack: AttackDecisions | None, dec: Decisions) -> str:
    """The attacker's-view section: the cheapest attack per attribute, the cost and ROC figures and the
    most exposed records (``""``: the run has no attacker's view)."""
    if attack is None or (attack.curve.empty and (attack.roc is None or attack.roc.empty)):
        return ""
    items = ""
    if not attack.curve.empty:
        order = sorted(attack.cheapest.values(), key=lambda c: (c.task_relevant, c.samples))
        items = "".join(f"<li>{esc(c.sentence())}</li>" for c in order)
        none = sorted(set(attack.curve["attribute"]) - set(attack.cheapest))
        if none:
            items += f"<li>{esc(', '.join(none))}: no attacker size reads it.</li>"
    plots = [p for p in (cost_plot(attack), roc_plot(dec, attack.roc)) if p is not None]
    return ('<h2 id="attacker">The attacker\'s view</h2><p class="section-note">What a leak costs to exploit and '
            "whom it exposes: the fewest labelled queries with which an attacker's probe reads each attribute from "
            "the API output, its detection rate at low false-positive rates, and the records it is surest of.</p>"
            + (f'<ul class="findings">{items}</ul>' if items else "") + figures(plots)
            + exposure_table(dec, attack.exposure))
