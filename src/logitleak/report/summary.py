"""A short terminal summary of an audit: one line per attribute, then the headline verdict."""

from __future__ import annotations

import pandas as pd
from rich.console import Console
from rich.table import Table

from logitleak.report.verdict import (
    TUNED_LEVELS,
    annotate,
    best_row,
    fmt_interval,
    fmt_num,
    strongest,
    verdict,
    where,
)
from logitleak.results import API_LEVELS


def _bits(r, interval: bool = True) -> str:
    if r is None:
        return "—"
    s = fmt_num(r["v_info_bits"])
    return s + fmt_interval(r["v_info_ci_low"], r["v_info_ci_high"]) if interval else s


def summary_table(results: pd.DataFrame, alpha: float = 0.05) -> Table:
    """The per-attribute rich table: best API output, residual and tuned lens, and the call."""
    ann = annotate(results, alpha)
    best = strongest(ann)
    table = Table(title=f"logitleak audit (alpha={alpha:g}, Holm-corrected at the API levels)", title_justify="left",
                  caption="*task: the attribute the question asks about (readable is expected). bits: V-information; residual / tuned: best layer.",
                  caption_justify="left")
    for col, kw in (("attribute", {}), ("call", {"no_wrap": True}),
                    ("API reading (probe)", {}), ("acc vs base", {"justify": "right"}),
                    ("API bits [CI]", {"justify": "right"}),
                    ("residual / tuned bits", {"justify": "right"})):
        table.add_column(col, **kw)
    for attr in dict.fromkeys(best["attribute"]):
        rows = best[best["attribute"] == attr]
        relevant = bool(rows["task_relevant_attr"].iloc[0])
        api = rows[rows["level"].isin(API_LEVELS)]
        readable = api[api["readable"]]
        if not readable.empty:  # the smallest k that reads it
            k_min = readable["k"].astype("Float64").fillna(1.0).to_numpy(dtype=float)
            r = readable.iloc[int(k_min.argmin())]
        else:
            r = best_row(api)
        res = best_row(rows[rows["level"] == "residual"])
        tun = best_row(rows[rows["level"].isin(TUNED_LEVELS)])
        if r is None:
            call = "[dim]no API rows[/]"
        elif not readable.empty:
            call = "[green]readable[/]" if relevant else "[bold red]LEAK[/]"
        else:
            call = "[yellow]NOT readable[/]" if relevant else "[green]no leak[/]"
        name = f"{attr} [dim]*task[/]" if relevant else attr
        if r is None:
            table.add_row(name, call, "—", "—", "—", f"{_bits(res, False)} / {_bits(tun, False)}")
            continue
        acc = f"{fmt_num(r['accuracy'])} vs {fmt_num(r['baseline_accuracy'])}"
        table.add_row(name, call, f"{where(r)} ({r['probe']})", acc, _bits(r), f"{_bits(res, False)} / {_bits(tun, False)}")
    return table


def print_summary(results: pd.DataFrame, console: Console | None = None, alpha: float = 0.05) -> None:
    """Print the per-attribute table and the headline verdict to the terminal."""
    console = console or Console()
    if len(results) == 0:
        console.print("[bold]logitleak audit:[/] the results table is empty.")
        return
    console.print(summary_table(results, alpha))
    head = next((f for f in verdict(results, alpha) if f.kind == "headline"), None)
    if head is not None:
        style = "bold red" if "CAN read" in head.text else "bold"
        console.print(head.text, style=style, highlight=False)
