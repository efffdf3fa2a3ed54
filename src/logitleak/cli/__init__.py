"""The ``logitleak`` command. Each sub-command lives in its own module with a ``register(app)``."""

from __future__ import annotations

import os
import sys

# Before torch loads OpenMP: worker threads that sleep instead of spin-waiting. On a shared CPU
# (more runnable processes than cores) spinning made the batched probes up to 16x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer  # noqa: E402

from logitleak.errors import LogitleakError  # noqa: E402

app = typer.Typer(
    name="logitleak",
    help="What do your logits know? Audit how much each representational level of a model leaks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register_all() -> None:
    from logitleak.cli import audit, defend, guard, organism, probe, serve

    for module in (organism, probe, audit, defend, serve, guard):
        module.register(app)


@app.command()
def version() -> None:
    """Print the installed logitleak version."""
    from logitleak import __version__

    typer.echo(__version__)


_register_all()


def main() -> None:
    """Entry point: run the app, turning user errors into one clear line on stderr."""
    try:
        app(standalone_mode=False)
    except LogitleakError as err:
        print(f"Error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except typer.Exit as err:
        raise SystemExit(err.exit_code) from None
    except Exception as err:  # click usage errors and aborts carry their own exit code
        import click

        if isinstance(err, click.ClickException):
            err.show()
            raise SystemExit(err.exit_code) from None
        if isinstance(err, click.exceptions.Abort):
            raise SystemExit(130) from None
        raise
