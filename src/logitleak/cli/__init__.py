"""The ``logitleak`` command. Each sub-command lives in its own module with a ``register(app)``."""

from __future__ import annotations

import os

# Before torch loads OpenMP: worker threads that sleep instead of spin-waiting. On a shared CPU
# (more runnable processes than cores) spinning made the batched probes up to 16x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer  # noqa: E402

app = typer.Typer(
    name="logitleak",
    help="What do your logits know? Audit how much each representational level of a model leaks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register_all() -> None:
    from logitleak.cli import audit, compare, defend, guard, organism, probe, serve

    for module in (organism, probe, audit, defend, compare, serve, guard):
        module.register(app)


@app.command()
def version() -> None:
    """Print the installed logitleak version."""
    from logitleak import __version__

    typer.echo(__version__)


_register_all()


def main() -> None:
    """Entry point: user errors end in one clear line on stderr (exit 2), bugs in a traceback."""
    from logitleak.cli.failures import run_cli

    run_cli(app)
