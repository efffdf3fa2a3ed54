"""The attacker's view per attribute: ROC curves on log axes and the records its best reading exposes most.

Both read the audit's decisions (each attribute's strongest API reading) and the attacker's-view
tables the audit wrote (``roc.parquet``, ``exposure.parquet``), handed over in
:class:`~logitleak.decisions.attack.AttackDecisions`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from logitleak.decisions import Decisions, finite, num
from logitleak.report.figure import Plot, attr_title, color, grid, label_axes, legend_below, to_data_uri
from logitleak.report.markup import esc
from logitleak.report.wording import fmt_num

KEYS = ("level", "layer", "k", "attribute", "probe")
ROC_CAPTION = ("Each attribute's strongest API reading as an attacker's detector: the share of an attribute value's "
               "records flagged (true-positive rate, mean over values one-vs-rest) against the share of the other "
               "records flagged (false-positive rate), both on log axes, from out-of-fold posteriors. The dotted "
               "diagonal is guessing; the legend gives AUC and the TPR at 1% FPR with their 95% intervals.")


def _same(rows: pd.DataFrame, reading) -> pd.DataFrame:
    """``rows`` of the reading ``reading`` (same level, layer, k, attribute and probe; NA matches NA)."""
    keep = np.ones(len(rows), bool)
    for c in KEYS:
        v = reading[c]
        col = rows[c]
        keep &= (col.isna() if pd.isna(v) else (col.astype(object) == v)).to_numpy(bool)
    return rows[keep]


def _readings(dec: Decisions) -> list[tuple[str, bool, pd.Series]]:
    """(attribute, task-relevant, strongest API row) of every attribute with an attacker's view, leaks first."""
    out = []
    for attr, d in dec.attributes.items():
        row = d.strongest
        if row is not None and finite(row.get("auc")):
            out.append((attr, d.task_relevant, row))
    return sorted(out, key=lambda t: (t[1], not dec.attributes[t[0]].leak))


def roc_plot(dec: Decisions, roc: pd.DataFrame) -> Plot | None:
    """One panel per attribute: its strongest API reading's ROC curve (log FPR and TPR)."""
    readings = _readings(dec)
    if roc is None or roc.empty or not readings:
        return None
    nrows, ncols = grid(len(readings))
    fig = Figure(figsize=(4.6 * ncols, 3.6 * nrows))
    handles = {}
    for i, (attr, relevant, row) in enumerate(readings):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        pts = _same(roc, row).sort_values("fpr")
        fpr = pts["fpr"].to_numpy(float)
        tpr = np.clip(pts["tpr"].to_numpy(float), 1e-3, 1)
        k = f" k={int(num(row['k']))}" if finite(row.get("k")) else ""
        label = (f"AUC {fmt_num(row['auc'])} [{fmt_num(row['auc_ci_low'])}, {fmt_num(row['auc_ci_high'])}]; "
                 f"TPR@1% {fmt_num(row['tpr_at_1pct_fpr'])}")
        ax.plot(fpr, tpr, "-o", ms=3, color=color(str(row["level"])), label=label)
        handles["guessing"] = ax.plot([1e-3, 1], [1e-3, 1], ":", color="#888888")[0]
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize=7, loc="lower right")
        label_axes(ax, f"{attr_title(attr, relevant)}\n{row['level']}{k}, {row['probe']}", "false-positive rate",
                   "true-positive rate")
    legend_below(fig, handles, 2, 0.05)
    return Plot("ROC at low false-positive rates", ROC_CAPTION, to_data_uri(fig))


def exposure_table(dec: Decisions, exposure: pd.DataFrame, n_top: int = 10) -> str:
    """Per task-irrelevant attribute: the share read with posterior >= 0.9 beside the prior's, and the
    ``n_top`` records its strongest API reading is surest of (``""``: nothing to show)."""
    if exposure is None or exposure.empty:
        return ""
    parts = []
    for attr, relevant, row in _readings(dec):
        if relevant:
            continue
        recs = _same(exposure, row).sort_values(["posterior_true", "sample"], ascending=[False, True]).head(n_top)
        if recs.empty:
            continue
        head = (f"<p><strong>{esc(attr)}</strong> ({esc(row['level'])}, {esc(row['probe'])}): "
                f"{fmt_num(row['exposed_posterior_0_9'])} of the records read with posterior &ge; 0.9 "
                f"[{fmt_num(row['exposed_posterior_0_9_ci_low'])}, {fmt_num(row['exposed_posterior_0_9_ci_high'])}]"
                f"; the prior alone: {fmt_num(row['exposed_prior_0_9'])}.</p>")
        body = "".join(f"<tr><td>{esc(r['name'])}</td><td>{esc(r['value'])}</td>"
                       f'<td class="num">{num(r["posterior_true"]):.3f}</td></tr>' for _, r in recs.iterrows())
        parts.append(head + "<table><thead><tr><th>record</th><th>true value</th><th>attacker's posterior</th></tr>"
                            f"</thead><tbody>{body}</tbody></table>")
    if not parts:
        return ""
    return "<h3>The most exposed records</h3>" + "".join(parts)
