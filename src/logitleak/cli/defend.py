"""The `logitleak defend` command: the audit's flags plus a defence grid."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def defend(
        config: Optional[Path] = typer.Option(None, "--config", help="YAML or TOML audit configuration; flags override it."),
        defenses: Optional[str] = typer.Option(None, "--defenses", help="Defence grid, e.g. 'topk:1,2,5;round:2,1;gauss:0.5,1;leace:all' (default: a standard grid)."),
        max_loss: float = typer.Option(0.05, "--max-loss", help="Largest answer-accuracy loss a recommended defence may cost."),
        model: Optional[str] = typer.Option(None, help="Local Hugging Face model directory, or 'organism'."),
        data: Optional[str] = typer.Option(None, help="'shapes', an image folder, a label file, or a saved `datasets` directory."),
        labels: Optional[str] = typer.Option(None, help="Label file for an image folder."),
        task: Optional[str] = typer.Option(None, help="The attribute the question asks about (task-relevant)."),
        question: Optional[str] = typer.Option(None, help="Prompt text asked of every sample."),
        attributes: Optional[str] = typer.Option(None, help="Comma-separated attributes to probe (default: all)."),
        k: Optional[str] = typer.Option(None, "--k", help="top_logprobs the API returns: the largest value is used."),
        samples: Optional[int] = typer.Option(None, help="Number of probe samples (half fit erasers, half measure)."),
        seed: Optional[int] = typer.Option(None, help="Random seed."),
        out: Optional[str] = typer.Option(None, help="Output directory (default: logitleak-defend)."),
        force: bool = typer.Option(False, "--force", help="Replace a different run's results in --out."),
        probes: Optional[str] = typer.Option(None, help="Probe families: linear,mlp."),
        folds: Optional[int] = typer.Option(None, help="Cross-validation folds."),
        permutations: Optional[int] = typer.Option(None, help="Label permutations with a refit each: the exact but costly check (default 0: the held-out test)."),
        batch_size: Optional[int] = typer.Option(None, help="Capture batch size."),
        device: Optional[str] = typer.Option(None, help="torch device."),
        dtype: Optional[str] = typer.Option(None, help="Model dtype."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    ) -> None:
        """Sweep defences and report leakage at the API level against answer accuracy."""
        from rich.console import Console
        from rich.table import Table

        from logitleak.cli.audit import audit_overrides
        from logitleak.config import resolve_config
        from logitleak.defend import run_defend
        from logitleak.defenses.spec import parse_defenses

        overrides = audit_overrides(
            model=model, data=data, labels=labels, task=task, question=question, attributes=attributes,
            levels=None, k=k, layers=None, samples=samples, seed=seed, out=out or ("logitleak-defend" if not config else None),
            force=force, probes=probes, folds=folds, permutations=permutations, batch_size=batch_size,
            device=device, dtype=dtype)
        cfg = resolve_config(config, overrides)
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
