"""Duplicate inputs in a probe set: dropped, refused, or grouped so they never straddle a split.

Duplicates are a leak in the measurement: the same input twice, or one image under several prompts,
must never sit on both sides of a train/test split.

* Rows with the same input (identical image bytes and the same prompt) and the same labels are one
  sample: the repeats are dropped, so a doubled label file measures exactly what the single one does.
* The same input with different labels is an error naming the rows (nothing can read a difference
  the input does not have).
* The same image under different prompts (or a user group) forms one group for the splits; for a
  text set, conversations equal up to case and spacing do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from logitleak.errors import LogitleakError
from logitleak.integrity import file_sha256


def file_digest(path) -> str:
    """SHA-256 of a file's bytes (identical images are identical files, whatever their names)."""
    return file_sha256(path)


@dataclass
class Deduplicated:
    """Rows to keep (indices into the original table), their groups, and what was done."""

    keep: np.ndarray
    groups: np.ndarray
    dropped: int
    notes: list[str]

    def sample(self, samples: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, groups)``: ``samples`` of the kept rows drawn without replacement (all when ``None``
        or more), in file order, with their groups numbered from 0."""
        n = len(self.keep)
        pick = np.arange(n)
        if samples is not None and samples < n:
            pick = np.sort(np.random.default_rng(seed).choice(n, size=samples, replace=False))
        return self.keep[pick], pd.factorize(np.asarray(self.groups)[pick])[0]


def _union_groups(*labellings: Sequence) -> np.ndarray:
    """Connected components of rows sharing a value in any labelling (``None`` values link nothing)."""
    n = len(labellings[0])
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for labels in labellings:
        first: dict = {}
        for i, v in enumerate(labels):
            if v is None:
                continue
            j = first.setdefault(v, i)
            if j != i:
                parent[find(i)] = find(j)
    return pd.factorize(np.array([find(i) for i in range(n)]))[0]


SHARED_IMAGE = ("{n} row(s) of {source} show an image another row shows too; rows sharing an image are kept on one "
                "side of every split.")


def resolve_duplicates(inputs: Sequence[str], images: Sequence[str | None], labels: pd.DataFrame,
                       groups: Sequence | None, source: str, describe: Sequence[str] | None = None,
                       shared_note: str = SHARED_IMAGE) -> Deduplicated:
    """Drop repeated identical samples, refuse conflicting labels, group rows sharing an image.

    ``inputs[i]``: the identity of row ``i``'s whole input (image digest + prompt); ``images[i]``: its
    image digest, or whatever part of the input rows must not split across (``None``: nothing);
    ``groups``: the user's group column or ``None``; ``describe[i]``: how to name row ``i`` in a
    message (e.g. its path); ``shared_note``: the note for rows sharing ``images`` (``{n}``, ``{source}``).
    """
    n = len(inputs)
    describe = list(describe) if describe is not None else [""] * n
    values = labels.astype(str).to_numpy()
    first: dict[str, int] = {}
    keep: list[int] = []
    for i, key in enumerate(inputs):
        j = first.setdefault(key, i)
        if j == i:
            keep.append(i)
            continue
        differ = [c for c, a, b in zip(labels.columns, values[j], values[i]) if a != b]
        if differ:
            col = differ[0]
            what = f" ({describe[j]} and {describe[i]})" if describe[j] else ""
            raise LogitleakError(
                f"Rows {j + 1} and {i + 1} of {source} are the same input{what} but give {col} "
                f"{values[j][list(labels.columns).index(col)]!r} and {values[i][list(labels.columns).index(col)]!r}; "
                "fix the label or remove one of the rows (row 1 = the first data row).")
    keep_arr = np.asarray(keep, dtype=int)
    img = [images[i] for i in keep_arr]
    user = None if groups is None else [groups[i] for i in keep_arr]
    merged = _union_groups(img, *([user] if user is not None else []))
    notes = []
    dropped = n - len(keep_arr)
    if dropped:
        notes.append(f"{dropped} row(s) of {source} repeat an earlier row's input and labels; each input is counted "
                     "once.")
    shared = len(img) - len({v for v in img if v is not None}) - sum(v is None for v in img)
    if shared:
        notes.append(shared_note.format(n=shared, source=source))
    return Deduplicated(keep=keep_arr, groups=merged, dropped=dropped, notes=notes)
