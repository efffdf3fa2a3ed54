"""Image folders for tests: the shapes set written as PNG files with a label table beside them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def write_shapes_images(root: Path, n: int, seed: int, name: str = "{i}.png", photo: bool = False):
    """``n`` shapes images saved under ``root`` as ``name.format(i=i)``; returns the probe set and
    its label table (``path`` + every attribute, and a ``photo`` group of two images each if asked)."""
    from logitleak.data import make_shapes

    ps = make_shapes(n, seed=seed)
    rows = []
    for i, img in enumerate(ps.images):
        file = name.format(i=i)
        img.save(Path(root) / file)
        rows.append({"path": file, **ps.attributes.iloc[i].to_dict(), **({"photo": i // 2} if photo else {})})
    return ps, pd.DataFrame(rows)
