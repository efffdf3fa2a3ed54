"""The `logitleak compare` command: two or more runs side by side, and the decisions that changed."""

from __future__ import annotations

from pathlib import Path

import typer


def calls_table(cmp):
    """The rich table of each attribute's call per run, changed calls marked."""
    from rich.markup import escape
    from rich.table import Table

    from logitleak.report.summary import CALL_STYLE
    from logitleak.report.wording import CALL_WORDS

    changed = {(c["attribute"], c["run"]) for c in cmp.changes}
    table = Table(title=f"logitleak compare: each attribute's call, run by run (! = changed from "
                        f"{escape(cmp.baseline.name)})", title_justify="left")
    table.add_column("attribute", no_wrap=True)
    for run in cmp.runs:
        table.add_column(escape(run.name), no_wrap=True)
    for _, row in cmp.calls.iterrows():
        cells = [f"[{CALL_STYLE[row[r.name]]}]{CALL_WORDS[row[r.name]]}[/]"
                 + (" !" if (row["attribute"], r.name) in changed else "") for r in cmp.runs]
        table.add_row(escape(str(row["attribute"])), *cells)
    return table


def compare(
    runs: list[Path] = typer.Argument(..., help="Two or more output folders of audit, demo, probe or defend runs "
                                                "(the first is the baseline; a defend folder counts once per defence)."),
    out: Path = typer.Option(Path("logitleak-compare"), "--out", help="Folder for compare.html, comparison.csv/json "
                                                                      "and compare.json."),
) -> None:
    """Compare runs: readings on the same attributes and levels, differences with intervals, changed decisions."""
    from rich.console import Console

    from logitleak.report.compare import change_sentences, compare_runs, load_runs
    from logitleak.report.compare_html import write_comparison
    from logitleak.report.console import print_table
    from logitleak.userpaths import ensure_out_dir

    cmp = compare_runs(load_runs(runs))  # bad input fails before anything is written
    ensure_out_dir(out)
    path = write_comparison(cmp, out)
    console = Console()
    print_table(console, calls_table(cmp))
    sentences = change_sentences(cmp)
    say = {"highlight": False, "markup": False, "soft_wrap": True}
    if sentences:
        console.print(f"Decisions that changed against {cmp.baseline.name}:", style="bold", **say)
        for s in sentences:
            console.print("  " + s, **say)
    else:
        console.print(f"No decision changed against {cmp.baseline.name}.", style="bold", **say)
    if cmp.left_out:
        console.print(f"Not in every run, so left out: {', '.join(cmp.left_out)}.", **say)
    console.print(f"Comparison written to {out} (open {path}).", **say)


def register(app: typer.Typer) -> None:
    """Add the ``compare`` command to the app."""
    app.command("compare")(compare)
