"""The `logitleak organism` command(s): train the built-in tiny LLaVA, show where it is cached."""

from __future__ import annotations

from pathlib import Path

import typer

from logitleak.errors import LogitleakError

organism_app = typer.Typer(
    help="The built-in model organism: a tiny LLaVA trained here on the shapes set.",
    no_args_is_help=True,
)


def _parse_seed(seed: str) -> int:
    try:
        value = int(str(seed).strip())
    except ValueError:
        raise LogitleakError(f"Seed {seed!r} is not an integer; pass a whole number such as --seed 0.") from None
    if value < 0:
        raise LogitleakError(f"Seed {seed!r} is negative; pass a whole number of 0 or more.")
    return value


def _parse_steps(steps: str | None) -> int | None:
    if steps is None:
        return None
    try:
        value = int(str(steps).strip())
    except ValueError:
        value = 0
    if value < 1:
        raise LogitleakError(f"Steps {steps!r} is not a positive whole number; pass e.g. --steps 1000.")
    return value


def _print_metrics(metrics: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"held-out accuracy, seed {metrics['seed']}")
    table.add_column("question")
    table.add_column("accuracy", justify="right")
    for attr, acc in metrics["heldout_accuracy"].items():
        table.add_row(attr, f"{acc:.3f}")
    console = Console()
    console.print(table)
    console.print(f"trained in {metrics['train_seconds']:.1f} s "
                  f"({metrics.get('vision_steps', '?')} vision + {metrics['steps']} question steps, "
                  f"{metrics['image_size']} px images); saved to {out}")


@organism_app.command("train")
def train(
    out: str = typer.Option(None, "--out", help="Directory to save the organism to (default: the cache)."),
    seed: str = typer.Option("0", "--seed", help="Training seed (a whole number)."),
    quick: bool = typer.Option(False, "--quick", help="A seconds-long run for smoke tests (accuracy not guaranteed)."),
    steps: str = typer.Option(None, "--steps", help="Number of question-answering steps (default: the full plan)."),
) -> None:
    """Train the organism from scratch, print its held-out accuracy per question, write metrics.json."""
    from logitleak.models.organism import organism_dir
    from logitleak.models.organism_train import train_organism

    seed_value = _parse_seed(seed)
    steps_value = _parse_steps(steps)
    path = Path(out).expanduser() if out else organism_dir(seed_value)
    if path.exists() and not path.is_dir():
        raise LogitleakError(f"Output directory {str(path)!r} is an existing file; pass a directory path instead.")
    from logitleak.userpaths import ensure_out_dir

    ensure_out_dir(path)
    metrics = train_organism(path, seed_value, steps=steps_value, quick=quick, progress=True)
    _print_metrics(metrics, path)


@organism_app.command("path")
def path(
    seed: str = typer.Option("0", "--seed", help="Training seed (a whole number)."),
    ensure: bool = typer.Option(False, "--ensure", help="Train the organism first when it is not cached."),
) -> None:
    """Print the cache directory of the organism for SEED (training it first with --ensure)."""
    from logitleak.models.organism import organism_dir
    from logitleak.models.organism_train import ensure_organism

    seed_value = _parse_seed(seed)
    typer.echo(str(ensure_organism(seed_value) if ensure else organism_dir(seed_value)))


def register(app: typer.Typer) -> None:
    """Add the `organism` sub-commands to the app."""
    app.add_typer(organism_app, name="organism")
