"""The `logitleak defend` command: the audit's flags plus a defence grid."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from logitleak.cli.flags import check_fail_on, config_command, exit_on_gate, fail_on_option, flag_names
from logitleak.errors import LogitleakError

DEFEND_EXCLUDES = ("levels", "layers", "pca_dims", "vision_pool", "generate")
"""Config keys defend has no flag for: it measures the API levels of the first answer token."""


DEFEND_FAIL_ON_HELP = ("CI gate on what would be deployed (the recommended defence, or none when none is "
                       "recommended): exit code 3 when under it a task-irrelevant attribute is readable at an API level "
                       "('leak'), or any attribute is ('readable'); 'none' (default): never. verdict.json holds every "
                       "defence's decisions.")

RECOMMENDATION_STYLE: dict[str, str] = {"recommended": "bold green", "none_needed": "bold green",
                                         "none_found": "bold red", "untestable": "bold yellow"}
"""The recommendation's terminal style by its ``kind`` (plain bold otherwise)."""


def tradeoff_table(rec):
    """The rich trade-off table: per defence and task-irrelevant attribute, the reading the decision
    rests on (the strongest one, as in the verdict), its Holm p, and the call."""
    from rich.table import Table

    from logitleak.decisions import strongest_rows
    from logitleak.report.wording import fmt_interval, fmt_num, fmt_p, where

    table = Table(title=f"Defences: leakage at the API level vs answer accuracy (strongest reading per row, "
                        f"alpha={rec.alpha:g}, Holm-corrected per defence)")
    for col in ("defence", "attribute", "call", "reading (probe)", "accuracy [CI] vs base", "Holm p", "bits",
                "answer acc."):
        table.add_column(col)
    for _, r in strongest_rows(rec).iterrows():
        call = "[bold red]LEAK[/]" if r["leak"] else "[green]no leak[/]"
        acc = (fmt_num(r["accuracy"], 3) + fmt_interval(r["ci_low"], r["ci_high"], 3)
               + f" vs {fmt_num(r['baseline_accuracy'], 3)}")
        table.add_row(str(r["defense_label"]), str(r["attribute"]), call, f"{where(r)} ({r['probe']})", acc,
                      fmt_p(r["p_holm"]), fmt_num(r["v_info_bits"], 3), fmt_num(r["utility_accuracy"], 3))
    return table


def register(app: typer.Typer) -> None:
    @app.command()
    @config_command(exclude=DEFEND_EXCLUDES, helps={
        "k": "top_logprobs the API returns: the largest value is used.",
        "samples": "Number of probe samples (half, or --fit-samples, fit erasers and train bottlenecks; the rest are measured).",
        "out": "Output directory (default: logitleak-defend).",
        "force": "Replace a different run's results in --out."})
    def defend(
        overrides: dict,
        config: Optional[Path] = typer.Option(None, "--config", help="YAML or TOML audit configuration; flags override it."),
        defenses: Optional[str] = typer.Option(None, "--defenses", help="Defence grid, e.g. 'topk:1,2,5;round:2,1;gauss:0.5,1;leace:all' (default: a standard grid)."),
        max_loss: float = typer.Option(0.05, "--max-loss", help="Largest answer-accuracy loss a recommended defence may cost."),
        protect: Optional[str] = typer.Option(None, "--protect", help="Attributes a bottleneck hides, comma-separated (default: every task-irrelevant class attribute)."),
        bottleneck_at: str = typer.Option("output", "--bottleneck-at", help="Where a bottleneck makes them unreadable: 'output' or 'layer:L' (the residual stream from layer L on)."),
        bottleneck_tune: str = typer.Option("auto", "--bottleneck-tune", help="Fine-tune every weight ('full'), LoRA adapters only ('lora'), or 'auto' (full for small models)."),
        bottleneck_steps: int = typer.Option(600, "--bottleneck-steps", help="Training steps per bottleneck lambda."),
        fit_samples: Optional[int] = typer.Option(None, "--fit-samples", help="Samples that fit erasers and train bottlenecks (default: half of --samples); the rest are measured."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
        fail_on: str = fail_on_option(DEFEND_FAIL_ON_HELP),
    ) -> None:
        """Sweep defences and report leakage at the API level against answer accuracy."""
        from rich.console import Console

        from logitleak.cli.audit import print_phases
        from logitleak.config import resolve_config
        from logitleak.defend import run_defend
        from logitleak.defenses.bottleneck import BottleneckSettings
        from logitleak.defenses.spec import parse_defenses
        from logitleak.report.console import print_table
        from logitleak.report.gate import defend_failing

        gate = check_fail_on(fail_on)
        if not 0 <= max_loss <= 1:
            raise LogitleakError(f"--max-loss {max_loss} is not an accuracy loss; pass a number between 0 and 1, "
                                 "e.g. 0.05.")
        if overrides.get("out") is None and not config:
            overrides["out"] = "logitleak-defend"
        cfg = resolve_config(config, overrides, flags=flag_names())
        grid = parse_defenses(defenses)
        settings = BottleneckSettings(protect=tuple(protect.split(",")) if protect else None, at=bottleneck_at,
                                      tune=bottleneck_tune, steps=bottleneck_steps)
        result = run_defend(cfg, grid, max_loss=max_loss, progress=not quiet, bottleneck=settings,
                            fit_samples=fit_samples)
        console = Console()
        rec = result.decision
        print_table(console, tradeoff_table(rec))
        console.print(rec.text, style=RECOMMENDATION_STYLE.get(rec.kind, "bold"), highlight=False, soft_wrap=True)
        print_phases(console, result.run_info)
        console.print(f"Trade-off table, verdict.json and report written to [bold]{result.out_dir}[/bold].",
                      soft_wrap=True)
        exit_on_gate(console, gate, defend_failing(rec, gate))
