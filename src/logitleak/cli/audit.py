"""The `logitleak audit` and `logitleak demo` commands."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from logitleak.cli.flags import config_command, flag_names
from logitleak.errors import LogitleakError

if TYPE_CHECKING:
    from logitleak.config import AuditConfig

DEMO_ATTRIBUTES: tuple[str, ...] = ("shape", "size", "position", "background", "center_x", "center_y")
"""The demo's attributes besides the task (colour): the categorical ones and the shape's centre."""
DEMO_SAMPLES = 800
"""The demo's probe set size: the audit's statistics finish in about a minute on 2 cores."""


def finish(result, console=None) -> None:
    """Terminal summary and where the files are."""
    from rich.console import Console

    from logitleak.report import print_summary

    console = console or Console()
    print_summary(result.results, console=console)
    utility = (result.run_info or {}).get("utility") or {}
    parts = [f"{name.replace('_', ' ')} {utility[name]:.3f}" for name in ("first_token_accuracy", "response_accuracy")
             if isinstance(utility.get(name), float)]
    if parts:
        console.print("Answer quality: " + ", ".join(parts) + f" (n={utility.get('n')}).")
    for problem in result.problems:
        console.print(f"[yellow]warning:[/yellow] {problem}")
    console.print(f"\nResults, run record and report written to [bold]{result.out_dir}[/bold] "
                  f"(open {result.report_path}).")


def register(app: typer.Typer) -> None:
    @app.command()
    @config_command()
    def audit(
        overrides: dict,
        config: Optional[Path] = typer.Option(None, "--config", help="YAML or TOML audit configuration; flags override it."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    ) -> None:
        """Audit a model (or an endpoint) on a probe set at every representational level."""
        from logitleak.audit import run_audit
        from logitleak.config import resolve_config

        cfg = resolve_config(config, overrides, flags=flag_names())
        if cfg.endpoint and not cfg.served_model:
            raise LogitleakError("A black-box audit needs --served-model NAME alongside --endpoint URL.")
        finish(run_audit(cfg, progress=not quiet))

    @app.command()
    def demo(
        out: str = typer.Option("logitleak-demo", help="Output directory."),
        samples: int = typer.Option(DEMO_SAMPLES, help="Number of probe samples."),
        seed: int = typer.Option(0, help="Random seed."),
        force: bool = typer.Option(False, "--force", help="Replace a different audit's results in --out."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    ) -> None:
        """The organism on the shapes set, asked for the colour: every level, k in 1,2,5,10,20, the
        five categorical attributes and the shape's centre (the numeric example)."""
        from rich.console import Console

        from logitleak.audit import run_audit
        from logitleak.models.organism_train import ensure_organism

        console = Console()
        model_dir = ensure_organism(seed=0, progress=not quiet)
        _print_organism(model_dir, console)
        finish(run_audit(demo_config(out=out, samples=samples, seed=seed, force=force), progress=not quiet), console)


def demo_config(**values) -> "AuditConfig":
    """The demo's audit: the same statistics as `logitleak audit` at its defaults (no cut-down probe
    settings) on the demo's own scope. The box corners and area restate the centre and size, so of
    the numeric attributes only the centre is audited (`logitleak audit` takes them all)."""
    from logitleak.config import make_config

    return make_config({"model": "organism", "data": "shapes", "task": "color", "samples": DEMO_SAMPLES,
                        "attributes": list(DEMO_ATTRIBUTES), "out": "logitleak-demo", **values}, source="demo")


def _print_organism(model_dir: Path, console) -> None:
    import json

    from rich.table import Table

    metrics_file = Path(model_dir) / "metrics.json"
    if not metrics_file.exists():
        return
    metrics = json.loads(metrics_file.read_text())
    table = Table(title=f"Organism ({model_dir}): held-out answer accuracy per question type")
    table.add_column("question")
    table.add_column("accuracy", justify="right")
    for attr, acc in metrics.get("heldout_accuracy", {}).items():
        table.add_row(attr, f"{acc:.3f}")
    console.print(table)
