"""The attribute x level matrix of the report's first screen: one cell per attribute and level.

Each cell is the decisions' strongest reading of that attribute at that level
(:attr:`~logitleak.decisions.AttributeDecision.by_level`: best layer, k and probe family, readable
ones first); nothing here re-derives a rule. Internal levels and what an API returns are two
groups of columns; the task attribute is marked.
"""

from __future__ import annotations

from logitleak.decisions import Decisions, finite, level_rank, num
from logitleak.levels.table import API_LEVELS
from logitleak.report.markup import esc
from logitleak.report.wording import CALL_WORDS, fmt_acc, fmt_num, fmt_p, where

SHADES: dict[str, tuple[int, int, int]] = {"leak": (198, 40, 40), "readable": (31, 78, 121)}
"""The cell colour by the reading's call; its opacity grows with the share of the attribute read."""


def share(row) -> float:
    """How much of the attribute a reading holds, in [0, 1]: bits / H(Y), or R² for a numeric attribute."""
    for col in ("v_info_frac", "r2"):
        v = num(row.get(col))
        if finite(v):
            return min(1.0, max(0.0, v))
    return 0.0


def _gain(row) -> str:
    """The second line of a cell: accuracy over the baseline, or R² for a numeric attribute."""
    if finite(row.get("accuracy")) and finite(row.get("baseline_accuracy")):
        return f"{num(row['accuracy']) - num(row['baseline_accuracy']):+.2f}"
    if finite(row.get("r2")):
        return f"R² {fmt_num(row['r2'])}"
    return ""


def _tooltip(attr: str, row) -> str:
    p = row.get("p_holm") if bool(row.get("is_api")) and finite(row.get("p_holm")) else row.get("p_value")
    label = "Holm p" if bool(row.get("is_api")) and finite(row.get("p_holm")) else "p"
    call = "LEAK" if bool(row["leak"]) else ("readable" if bool(row["readable"]) else "not readable")
    return (f"{attr} at {where(row)} ({row['probe']} probe): {fmt_num(row['v_info_bits'])} bits; "
            f"{fmt_acc(row)}; {label} {fmt_p(p)}; {call}")


def _cell(attr: str, row, first_api: bool) -> str:
    edge = " ll-api-edge" if first_api else ""
    if row is None:
        return f'<td class="ll-cell ll-none{edge}">·</td>'
    kind = "leak" if bool(row["leak"]) else ("readable" if bool(row["readable"]) else "weak")
    style = ""
    if kind in SHADES:
        r, g, b = SHADES[kind]
        a = 0.12 + 0.78 * share(row)
        ink = "#fff" if a > 0.55 else "#1d1d1f"
        style = f' style="background: rgba({r},{g},{b},{a:.2f}); color: {ink}"'
    return (f'<td class="ll-cell ll-{kind}{edge}"{style} title="{esc(_tooltip(attr, row))}">'
            f'{esc(fmt_num(row["v_info_bits"]))}<small>{esc(_gain(row))}</small></td>')


def matrix_html(dec: Decisions) -> str:
    """The matrix as an HTML table (empty string when nothing was measured)."""
    if not dec.attributes:
        return ""
    levels = sorted({lv for d in dec.attributes.values() for lv in d.by_level}, key=level_rank)
    inner = [lv for lv in levels if lv not in API_LEVELS]
    api = [lv for lv in levels if lv in API_LEVELS]
    order = inner + api
    groups = ""
    if inner:
        groups += f'<th class="ll-group" colspan="{len(inner)}">inside the model</th>'
    if api:
        groups += f'<th class="ll-group ll-group-api ll-api-edge" colspan="{len(api)}">what the API returns</th>'
    heads = "".join(f'<th class="ll-level{" ll-api-edge" if api and lv == api[0] else ""}"><span>{esc(lv)}</span></th>'
                    for lv in order)
    body = []
    for attr, d in dec.attributes.items():
        mark = ' <span class="ll-task" title="the attribute the question asks about">task</span>' if d.task_relevant else ""
        call = CALL_WORDS[d.call]
        cells = "".join(_cell(attr, d.by_level.get(lv), bool(api) and lv == api[0]) for lv in order)
        body.append(f'<tr><th class="ll-attr">{esc(attr)}{mark}</th><td class="ll-call ll-call-{d.call}">{call}</td>'
                    f"{cells}</tr>")
    return (f'<table class="ll-matrix" id="matrix"><caption>{esc(LEGEND)}</caption><thead><tr><th></th><th></th>{groups}</tr>'
            f'<tr><th class="ll-attr">attribute</th><th class="ll-call">call</th>{heads}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


LEGEND = ("Each cell: bits (V-information, strongest probe family, best layer and k) and, below, accuracy over "
          "the majority baseline (R² for a numeric attribute). Red: LEAK, a task-irrelevant attribute readable from "
          "what the API returns; blue: readable; no colour: not readable (not significant after Holm, or the "
          "interval reaches the baseline). The deeper the colour, the larger the share of the attribute read "
          "(bits / H(Y); R²). Hover a cell for its interval and p-value.")
