"""The `logitleak defend` command: the audit's flags plus a defence grid."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from logitleak.cli.flags import config_command, flag_names
from logitleak.errors import LogitleakError


DEFEND_EXCLUDES = ("levels", "layers", "pca_dims", "vision_pool", "generate")
"""Config keys defend has no flag for: it measures the API levels of the first answer token."""


def register(app: typer.Typer) -> None:
    @app.command()
    @config_command(exclude=DEFEND_EXCLUDES, helps={
        "k": "top_logprobs the API returns: the largest value is used.",
        "samples": "Number of probe samples (half fit erasers, half measure).",
        "out": "Output directory (default: logitleak-defend).",
        "force": "Replace a different run's results in --out."})
    def defend(
        overrides: dict,
        config: Optional[Path] = typer.Option(None, "--config", help="YAML or TOML audit configuration; flags override it."),
        defenses: Optional[str] = typer.Option(None, "--defenses", help="Defence grid, e.g. 'topk:1,2,5;round:2,1;gauss:0.5,1;leace:all' (default: a standard grid)."),
        max_loss: float = typer.Option(0.05, "--max-loss", help="Largest answer-accuracy loss a recommended defence may cost."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    ) -> None:
        """Sweep defences and report leakage at the API level against answer accuracy."""
        from rich.console import Console
        from rich.table import Table

        from logitleak.config import resolve_config
        from logitleak.defend import run_defend
        from logitleak.defenses.spec import parse_defenses

        if not 0 <= max_loss <= 1:
            raise LogitleakError(f"--max-loss {max_loss} is not an accuracy loss; pass a number between 0 and 1, "
                                 "e.g. 0.05.")
        if overrides.get("out") is None and not config:
            overrides["out"] = "logitleak-defend"
        cfg = resolve_config(config, overrides, flags=flag_names())
        grid = parse_defenses(defenses)
        result = run_defend(cfg, grid, max_loss=max_loss, progress=not quiet)
        console = Console()
        table = Table(title="Defences: leakage at the API level vs answer accuracy (strongest probe per row)")
        for col in ("defence", "attribute", "level", "k", "accuracy", "baseline", "p", "bits", "answer acc."):
            table.add_column(col)
        api = result.tradeoff[(result.tradeoff["level"] != "residual") & (~result.tradeoff["task_relevant"].astype(bool))]
        best = api.sort_values("accuracy", ascending=False).groupby(["defense_label", "attribute"], sort=False).head(1)
        for r in best.itertuples():
            table.add_row(r.defense_label, r.attribute, r.level, str(r.k),
                          f"{r.accuracy:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]",
                          f"{r.baseline_accuracy:.3f}", f"{r.p_value:.3g}", f"{r.v_info_bits:.3f}", f"{r.utility_accuracy:.3f}")
        console.print(table)
        console.print(result.recommendation)
        console.print(f"Trade-off table and report written to [bold]{result.out_dir}[/bold].")
