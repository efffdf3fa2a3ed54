"""Tables on a terminal or in a log, never a cell wrapped into fragments or cut short.

In a log every table gets the width of its content (at least ``COLUMNS``).
"""

from __future__ import annotations

import os

from rich.console import Console
from rich.table import Table

LOG_WIDTH = 80
"""rich's width for a stream that is not a terminal, when ``COLUMNS`` does not say otherwise."""


def log_width() -> int:
    """``COLUMNS`` when it holds a whole number, else :data:`LOG_WIDTH`."""
    try:
        return max(20, int(os.environ.get("COLUMNS", "")))
    except ValueError:
        return LOG_WIDTH


def natural_width(console: Console, table: Table) -> int:
    """The width ``table``'s columns take with no cell wrapped."""
    wide = console.options.update(width=10_000, max_width=10_000)
    return console.measure(table, options=wide).maximum


def print_table(console: Console, table: Table) -> None:
    """Print ``table``: on a terminal at the terminal's width; in a log (or a recording console) at
    its content's width or ``COLUMNS``, whichever is wider. A title wider than the table is printed
    on its own line above it rather than squeezed into the table's width."""
    if console.is_terminal:
        console.print(table)
        return
    width = max(natural_width(console, table), log_width())
    if isinstance(table.title, str) and len(table.title) > natural_width(console, table):
        console.print(table.title, style="italic", soft_wrap=True, highlight=False)
        table.title = None
    before = console.width
    console.width = width          # (print's own width= is capped at the console's width)
    try:
        console.print(table)
    finally:
        console.width = before
