"""The report's full results table: every row with its interval, baseline, p-values and call."""

from __future__ import annotations

import pandas as pd

from logitleak.decisions import finite
from logitleak.report.markup import esc, status
from logitleak.report.wording import fmt_acc, fmt_int, fmt_interval, fmt_num, fmt_p


def _test(row) -> str:
    """' (heldout)' / ' (permutation)': which test gave the row's p-value (column ``p_test``)."""
    t = row.get("p_test")
    return f" ({t})" if isinstance(t, str) and t else ""


def results_table(ann: pd.DataFrame) -> str:
    """Every row of an annotated table: score beside its interval and baseline, p-values (Holm at the API levels)."""
    if ann.empty:
        return "<p>No rows.</p>"
    df = ann.assign(_lk=ann["layer"].astype("Float64").fillna(-1.0), _kk=ann["k"].astype("Float64").fillna(-1.0))
    df = df.sort_values(["_rank", "attribute", "_lk", "_kk", "probe"], kind="stable")
    head = ("<tr><th>level</th><th>layer</th><th>k</th><th>attribute</th><th>probe</th><th>n</th>"
            "<th>accuracy [CI] vs baseline</th><th>balanced acc.</th><th>bits [CI] of H(Y)</th><th>frac.</th>"
            "<th>p (test)</th><th>Holm p</th><th>selectivity</th><th>status</th></tr>")
    body = []
    for _, r in df.iterrows():
        cls, badge = status(r)
        classes = " ".join(c for c in (cls, "relevant" if r["task_relevant_attr"] else "") if c)
        bits = fmt_num(r["v_info_bits"]) + fmt_interval(r["v_info_ci_low"], r["v_info_ci_high"])
        bits += f" of {fmt_num(r['entropy_bits'])}" if finite(r["entropy_bits"]) else ""
        body.append(
            f'<tr class="{classes}"><td>{esc(r["level"])}</td><td class="num">{fmt_int(r["layer"])}</td>'
            f'<td class="num">{fmt_int(r["k"])}</td><td class="attr">{esc(r["attribute"])}</td><td>{esc(r["probe"])}</td>'
            f'<td class="num">{fmt_int(r["n"])}</td><td class="num">{esc(fmt_acc(r))}</td>'
            f'<td class="num">{esc(fmt_num(r["balanced_accuracy"]))}</td><td class="num">{esc(bits)}</td>'
            f'<td class="num">{esc(fmt_num(r["v_info_frac"]))}</td><td class="num">{esc(fmt_p(r["p_value"]) + _test(r))}</td>'
            f'<td class="num">{esc(fmt_p(r["p_holm"]) if r["is_api"] else "")}</td>'
            f'<td class="num">{esc(fmt_num(r["selectivity"]))}</td><td>{badge}</td></tr>')
    return f'<div class="scroll"><table class="results"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table></div>'
