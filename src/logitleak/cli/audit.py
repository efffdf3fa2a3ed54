"""The `logitleak audit` and `logitleak demo` commands."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from logitleak.errors import LogitleakError


def parse_int_list(text: str | None, what: str) -> list[int] | None:
    """'1,2,5' -> [1, 2, 5], with an error naming the flag."""
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LogitleakError(f"{what} {text!r} is not a comma-separated list of integers, e.g. 1,2,5.") from None


def parse_str_list(text: str | None) -> list[str] | None:
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


def audit_overrides(*, model, data, labels, task, question, attributes, levels, k, layers, samples, seed, out,
                    force, probes, folds, permutations, batch_size, device, dtype,
                    endpoint=None, served_model=None, api_key_env=None, concurrency=None, max_requests=None,
                    pca_dims=None, vision_pool=None, generate=None) -> dict:
    """CLI flags -> config overrides (None = not given)."""
    return {
        "model": model, "data": data, "labels": labels, "task": task, "question": question,
        "attributes": parse_str_list(attributes), "levels": parse_str_list(levels),
        "k": parse_int_list(k, "--k"),
        "layers": None if layers is None else ("all" if layers == "all" else parse_int_list(layers, "--layers")),
        "samples": samples, "seed": seed, "out": out, "force": force or None,
        "probes.families": parse_str_list(probes), "probes.folds": folds, "probes.permutations": permutations,
        "batch_size": batch_size, "device": device, "dtype": dtype,
        "endpoint": endpoint, "served_model": served_model, "api_key_env": api_key_env,
        "concurrency": concurrency, "max_requests": max_requests,
        "pca_dims": parse_int_list(pca_dims, "--pca-dims"), "vision_pool": vision_pool, "generate": generate,
    }


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
    def audit(
        config: Optional[Path] = typer.Option(None, "--config", help="YAML or TOML audit configuration; flags override it."),
        model: Optional[str] = typer.Option(None, help="Local Hugging Face model directory, a .gguf file, 'organism' or 'smollm2'."),
        data: Optional[str] = typer.Option(None, help="'shapes', 'personas', a prompt file (prompt/messages column), an image folder (with labels.csv), a label file, or a saved `datasets` directory."),
        labels: Optional[str] = typer.Option(None, help="Label file for an image folder (CSV/JSONL/parquet)."),
        task: Optional[str] = typer.Option(None, help="The attribute the question asks about (task-relevant)."),
        question: Optional[str] = typer.Option(None, help="Prompt text asked of every sample."),
        attributes: Optional[str] = typer.Option(None, help="Comma-separated attributes to probe (default: all)."),
        levels: Optional[str] = typer.Option(None, help="Comma-separated levels (default: all)."),
        k: Optional[str] = typer.Option(None, "--k", help="Comma-separated k values, e.g. 1,2,5,10,20."),
        pca_dims: Optional[str] = typer.Option(None, "--pca-dims", help="Dimensions of the pca level, e.g. 1,4,16,64."),
        vision_pool: Optional[str] = typer.Option(None, "--vision-pool", help="Vision levels: 'mean' of the image tokens or 'cls'."),
        layers: Optional[str] = typer.Option(None, help="Comma-separated hidden-state indices, or 'all'."),
        samples: Optional[int] = typer.Option(None, help="Number of probe samples."),
        seed: Optional[int] = typer.Option(None, help="Random seed (data, splits, probes)."),
        out: Optional[str] = typer.Option(None, help="Output directory."),
        force: bool = typer.Option(False, "--force", help="Replace a different audit's results in --out."),
        probes: Optional[str] = typer.Option(None, help="Probe families: linear,mlp."),
        folds: Optional[int] = typer.Option(None, help="Cross-validation folds."),
        permutations: Optional[int] = typer.Option(None, help="Label permutations with a refit each: the exact but costly check (default 0: the held-out test)."),
        batch_size: Optional[int] = typer.Option(None, help="Capture batch size."),
        device: Optional[str] = typer.Option(None, help="torch device (default: cuda if available, else cpu)."),
        dtype: Optional[str] = typer.Option(None, help="Model dtype, e.g. float32, bfloat16."),
        endpoint: Optional[str] = typer.Option(None, help="OpenAI-compatible base URL for a black-box audit."),
        served_model: Optional[str] = typer.Option(None, help="Model name at the endpoint."),
        api_key_env: Optional[str] = typer.Option(None, help="Environment variable holding the endpoint's API key."),
        concurrency: Optional[int] = typer.Option(None, help="Concurrent requests to the endpoint."),
        max_requests: Optional[int] = typer.Option(None, help="Request budget for the endpoint."),
        generate: Optional[int] = typer.Option(None, help="Generate N tokens (greedy) and read every one: residual and top-k at each generated position, whole-response levels."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    ) -> None:
        """Audit a model (or an endpoint) on a probe set at every representational level."""
        from logitleak.audit import run_audit
        from logitleak.config import resolve_config

        cfg = resolve_config(config, audit_overrides(
            model=model, data=data, labels=labels, task=task, question=question, attributes=attributes,
            levels=levels, k=k, layers=layers, samples=samples, seed=seed, out=out, force=force, probes=probes,
            folds=folds, permutations=permutations, batch_size=batch_size, device=device, dtype=dtype,
            endpoint=endpoint, served_model=served_model, api_key_env=api_key_env, concurrency=concurrency,
            max_requests=max_requests, pca_dims=pca_dims, vision_pool=vision_pool, generate=generate))
        if cfg.endpoint and not cfg.served_model:
            raise LogitleakError("A black-box audit needs --served-model NAME alongside --endpoint URL.")
        finish(run_audit(cfg, progress=not quiet))

    @app.command()
    def demo(
        out: str = typer.Option("logitleak-demo", help="Output directory."),
        samples: int = typer.Option(1000, help="Number of probe samples."),
        seed: int = typer.Option(0, help="Random seed."),
        force: bool = typer.Option(False, "--force", help="Replace a different audit's results in --out."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    ) -> None:
        """The organism on the shapes set, asked for the colour, every level, k in 1,2,5,10,20."""
        from rich.console import Console

        from logitleak.audit import run_audit
        from logitleak.config import make_config
        from logitleak.models.organism import ensure_organism

        console = Console()
        model_dir = ensure_organism(seed=0, progress=not quiet)
        _print_organism(model_dir, console)
        # The same statistics as `logitleak audit` at its defaults (no cut-down probe settings).
        cfg = make_config({"model": "organism", "data": "shapes", "task": "color", "samples": samples,
                           "seed": seed, "out": out, "force": force}, source="demo")
        finish(run_audit(cfg, progress=not quiet), console)


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
