"""A short terminal summary of an audit: one line per attribute, then the verdict in one sentence."""

from __future__ import annotations

import pandas as pd
from rich.console import Console
from rich.table import Table

from logitleak.decisions import Decisions, decide, finite
from logitleak.report.console import print_table
from logitleak.report.verdict import verdict_sentence
from logitleak.report.wording import CALL_WORDS, fmt_acc, fmt_interval, fmt_num, where

HEADLINE_STYLE: dict[str, str] = {"leak": "bold red"}
"""The verdict line's terminal style by the decisions' ``status`` (plain bold otherwise)."""
CALL_STYLE: dict[str, str] = {"leak": "bold red", "no_leak": "green", "readable": "green", "not_readable": "yellow",
                              "not_measured": "dim"}
"""Each call's terminal style."""


def _bits(r, interval: bool = True) -> str:
    if r is None:
        return "—"
    s = fmt_num(r["v_info_bits"])
    return s + fmt_interval(r["v_info_ci_low"], r["v_info_ci_high"]) if interval else s


def summary_table(results: pd.DataFrame, alpha: float = 0.05, *, decisions: Decisions | None = None) -> Table:
    """The per-attribute rich table: the call, the strongest API reading (readable when the call
    says so) with its interval, the smallest k at which it is readable, and the best residual and
    tuned-lens layers -- the same facts, in the same order, as the verdict's leak lines."""
    dec = decisions if decisions is not None else decide(results, alpha)
    table = Table(title=f"logitleak audit (alpha={dec.alpha:g}, Holm-corrected at the API levels)", title_justify="left",
                  caption="*task: the attribute the question asks about (readable is expected). bits: V-information; residual / tuned: best layer.",
                  caption_justify="left")
    for col, kw in (("attribute", {}), ("call", {}), ("strongest API reading (probe)", {}),
                    ("score vs base", {"justify": "right"}), ("API bits [CI]", {"justify": "right"}),
                    ("shown from", {}), ("residual / tuned bits", {"justify": "right"})):
        table.add_column(col, no_wrap=True, **kw)
    for d in dec.attributes.values():
        r = d.strongest
        call = f"[{CALL_STYLE[d.call]}]{CALL_WORDS[d.call]}[/]"
        name = f"{d.attribute} [dim]*task[/]" if d.task_relevant else d.attribute
        inner = f"{_bits(d.residual, False)} / {_bits(d.tuned, False)}"
        if r is None:
            table.add_row(name, call, "—", "—", "—", "—", inner)
            continue
        shown = "—"
        if d.readable and d.first is not None:
            shown = f"k={d.smallest_k}" if d.smallest_k is not None else d.first["level"]
        acc = fmt_acc(r) if not finite(r.get("accuracy")) else f"{fmt_num(r['accuracy'])} vs {fmt_num(r['baseline_accuracy'])}"
        table.add_row(name, call, f"{where(r)} ({r['probe']})", acc, _bits(r), shown, inner)
    return table


def print_summary(results: pd.DataFrame, console: Console | None = None, alpha: float = 0.05, *,
                  decisions: Decisions | None = None) -> None:
    """Print the per-attribute table and the verdict's sentence (``decisions``: already taken on ``results``)."""
    console = console or Console()
    if len(results) == 0:
        console.print("[bold]logitleak audit:[/] the results table is empty.")
        return
    dec = decisions if decisions is not None else decide(results, alpha)
    print_table(console, summary_table(results, alpha, decisions=dec))
    console.print(verdict_sentence(dec), style=HEADLINE_STYLE.get(dec.status, "bold"), highlight=False, soft_wrap=True)
