"""What every report figure shares: the ``Plot`` record, PNG data URIs, colours and panel grids.

Figures are drawn with matplotlib's Agg canvas (no pyplot, no global state) and embedded as
base64 PNG data URIs, so the report stays one file with nothing external.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from logitleak.decisions import num
from logitleak.levels.table import LEVEL_COLOURS


@dataclass(frozen=True)
class Plot:
    """One rendered figure: a title, a caption saying how to read it, and its PNG data URI."""

    title: str
    caption: str
    data_uri: str


def color(level: str) -> str:
    """A level's colour in every figure (from the level table)."""
    return LEVEL_COLOURS.get(level, "#555555")


def to_data_uri(fig: Figure, dpi: int = 100) -> str:
    """Render a figure (laid out already, e.g. by ``tight_layout``) to a base64 PNG data URI."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def values(s) -> np.ndarray:
    """Any column -> a float array, NaN for missing cells."""
    return np.array([num(v) for v in s], dtype=float)


def grid(n: int, ncols: int = 3) -> tuple[int, int]:
    """(rows, columns) of a grid of ``n`` panels at most ``ncols`` wide."""
    ncols = max(1, min(ncols, n))
    return math.ceil(n / ncols), ncols


def attr_title(attr: str, relevant: bool) -> str:
    """A panel's title: the attribute and whether the question asked about it."""
    return f"{attr} (task-relevant)" if relevant else f"{attr} (task-irrelevant)"


def error_bars(center: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray | None:
    """matplotlib ``yerr`` from an interval (None when no interval is known)."""
    lo_e = np.where(np.isfinite(lo) & np.isfinite(center), np.clip(center - lo, 0, None), 0.0)
    hi_e = np.where(np.isfinite(hi) & np.isfinite(center), np.clip(hi - center, 0, None), 0.0)
    if not (np.any(lo_e) or np.any(hi_e)):
        return None
    return np.vstack([lo_e, hi_e])


def side_attributes(ann: pd.DataFrame, relevant: bool, within: pd.DataFrame | None = None) -> list[str]:
    """The (task-relevant or irrelevant) attributes in table order; ``within``: only those with rows there."""
    sel = ann[ann["task_relevant_attr"] == relevant]
    out = list(dict.fromkeys(sel["attribute"]))
    return out if within is None else [a for a in out if a in set(within["attribute"])]


def label_axes(ax, title: str, xlabel: str, ylabel: str) -> None:
    """A panel's title, axis labels and light grid, as every report figure draws them."""
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def legend_below(fig: Figure, handles: dict, ncol: int, bottom: float) -> None:
    """One legend for every panel, centred below them, then the layout above it (``bottom``: its share)."""
    fig.legend(list(handles.values()), list(handles.keys()), loc="lower center", ncol=min(ncol, len(handles)),
               fontsize=8, frameon=False, bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, bottom, 1, 1))
