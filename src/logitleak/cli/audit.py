"""The `logitleak audit` and `logitleak demo` commands."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from logitleak.cli.flags import check_fail_on, config_command, exit_on_gate, fail_on_option, flag_names
from logitleak.errors import LogitleakError

if TYPE_CHECKING:
    from logitleak.config import AuditConfig

DEMO_ATTRIBUTES: tuple[str, ...] = ("shape", "size", "position", "background", "center_x", "center_y")
"""The demo's attributes besides the task (colour): the categorical ones and the shape's centre."""
DEMO_SAMPLES = 800
"""The demo's probe set size: the audit's statistics finish in about a minute on 2 cores."""


def finish(result, console=None, fail_on: str = "none", extra_phases: dict | None = None) -> None:
    """Terminal summary, the time each phase took, where the files are, and the gate."""
    from rich.console import Console

    from logitleak.decisions import decide
    from logitleak.report import print_summary
    from logitleak.report.gate import failing

    console = console or Console()
    dec = result.decisions if result.decisions is not None else decide(result.results)
    print_summary(result.results, console=console, decisions=dec)
    utility = (result.run_info or {}).get("utility") or {}
    parts = [f"{name.replace('_', ' ')} {utility[name]:.3f}" for name in ("first_token_accuracy", "response_accuracy")
             if isinstance(utility.get(name), float)]
    if parts:
        console.print("Answer quality: " + ", ".join(parts) + f" (n={utility.get('n')}).")
    for problem in result.problems:
        console.print(f"[yellow]warning:[/yellow] {problem}", soft_wrap=True)
    print_phases(console, result.run_info, extra_phases)
    console.print(f"\nResults, run record and report written to [bold]{result.out_dir}[/bold] "
                  f"(open {result.report_path}); verdict.json holds the decisions.", soft_wrap=True)
    exit_on_gate(console, fail_on, failing(dec, fail_on))


def print_phases(console, run_info: dict | None, extra: dict | None = None) -> None:
    """One line per phase with its wall and CPU time (``extra``: phases before the run, wall and CPU)."""
    from logitleak.timing import phase_lines

    info = run_info or {}
    wall = {**{k: v[0] for k, v in (extra or {}).items()}, **(info.get("timings") or {})}
    cpu = {**{k: v[1] for k, v in (extra or {}).items()}, **(info.get("cpu_timings") or {})}
    lines = phase_lines(wall, cpu)
    if lines:
        console.print("Time per phase:", highlight=False)
        for line in lines:
            console.print("  " + line, highlight=False)


def register(app: typer.Typer) -> None:
    @app.command()
    @config_command()
    def audit(
        overrides: dict,
        config: Optional[Path] = typer.Option(None, "--config", help="YAML or TOML audit configuration; flags override it."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
        fail_on: str = fail_on_option(),
    ) -> None:
        """Audit a model (or an endpoint) on a probe set at every representational level."""
        from logitleak.audit import run_audit
        from logitleak.config import resolve_config

        gate = check_fail_on(fail_on)
        cfg = resolve_config(config, overrides, flags=flag_names())
        if cfg.endpoint and not cfg.served_model:
            raise LogitleakError("A black-box audit needs --served-model NAME alongside --endpoint URL.")
        finish(run_audit(cfg, progress=not quiet), fail_on=gate)

    @app.command()
    def demo(
        out: str = typer.Option("logitleak-demo", help="Output directory."),
        samples: int = typer.Option(DEMO_SAMPLES, help="Number of probe samples."),
        seed: int = typer.Option(0, help="Random seed."),
        force: bool = typer.Option(False, "--force", help="Replace a different audit's results in --out."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
        fail_on: str = fail_on_option(),
    ) -> None:
        """The organism on the shapes set, asked for the colour: every level, k in 1,2,5,10,20, the
        five categorical attributes and the shape's centre (the numeric example)."""
        from rich.console import Console

        from logitleak.audit import run_audit
        from logitleak.models.organism_train import ensure_organism
        from logitleak.timing import Timer

        gate = check_fail_on(fail_on)
        console = Console()
        timer = Timer(progress=not quiet)
        with timer("organism"):
            model_dir = ensure_organism(seed=0, progress=not quiet)
        _print_organism(model_dir, console)
        result = run_audit(demo_config(out=out, samples=samples, seed=seed, force=force), progress=not quiet)
        finish(result, console, fail_on=gate,
               extra_phases={"organism": (timer.timings["organism"], timer.cpu["organism"])})


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

    from logitleak.report.console import print_table

    metrics_file = Path(model_dir) / "metrics.json"
    if not metrics_file.exists():
        return
    metrics = json.loads(metrics_file.read_text())
    table = Table(title=f"Organism ({model_dir}): held-out answer accuracy per question type", title_justify="left")
    table.add_column("question", no_wrap=True)
    table.add_column("accuracy", justify="right", no_wrap=True)
    for attr, acc in metrics.get("heldout_accuracy", {}).items():
        table.add_row(attr, f"{acc:.3f}")
    print_table(console, table)
