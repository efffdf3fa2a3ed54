"""The report's HTML building blocks: escaping, badges, key-value tables and figures as <figure>."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping

from logitleak.report.figure import Plot


def esc(v) -> str:
    """Text (any value) escaped for HTML, quotes included."""
    return html.escape("" if v is None else str(v), quote=True)


def plain(v) -> str:
    """A run_info value as text: numbers trimmed, containers as compact JSON."""
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else "n/a"
    if isinstance(v, (dict, list, tuple)):
        try:
            return json.dumps(v, default=str, ensure_ascii=False)
        except (TypeError, ValueError):
            return str(v)
    return str(v)


def kv_table(d: Mapping, unit: str = "") -> str:
    """A two-column table of a mapping (numbers get ``unit``)."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(plain(v))}{esc(unit) if isinstance(v, (int, float)) else ''}</td></tr>"
                   for k, v in d.items())
    return f'<table class="kv">{rows}</table>'


def status(row) -> tuple[str, str]:
    """(CSS class, badge) of an annotated row: LEAK, readable, or nothing."""
    if bool(row["leak"]):
        return "leak", '<span class="badge leak">LEAK</span>'
    if bool(row["readable"]):
        return "readable", '<span class="badge readable">readable</span>'
    return "", ""


def figures(plots: Iterable[Plot]) -> str:
    """Each plot as a <figure> with its title and caption."""
    return "\n".join(f'<figure><h3>{esc(p.title)}</h3><img src="{p.data_uri}" alt="{esc(p.title)}">'
                     f"<figcaption>{esc(p.caption)}</figcaption></figure>" for p in plots)


def details(title: str, body: str, *, open_: bool = False, id_: str | None = None) -> str:
    """A collapsible section (closed unless ``open_``)."""
    ident = f' id="{esc(id_)}"' if id_ else ""
    return f"<details{ident}{' open' if open_ else ''}><summary>{title}</summary>{body}</details>"
