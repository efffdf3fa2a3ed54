"""The probe-set object every audit consumes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from PIL import Image

from logitleak.errors import LogitleakError

CLASS_LIKE_MAX = 20
"""A column of whole numbers with at most this many distinct values is read as class labels
(0/1 flags, digit classes); any other all-number column is numeric (a regression target)."""


def is_numeric_column(values) -> bool:
    """Whether a label column is a numeric attribute: every value a finite number (numbers or
    numeric strings), and not a small set of whole numbers (see :data:`CLASS_LIKE_MAX`)."""
    x = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
    if len(x) == 0 or not np.isfinite(x).all():
        return False
    whole = bool(np.all(x == np.round(x)))
    return not (whole and len(np.unique(x)) <= CLASS_LIKE_MAX)


class IndexedImages(Sequence):
    """A lazy view of some images of another sequence, in the order of ``index``."""

    def __init__(self, base: Sequence, index: Sequence[int]):
        self.base, self.index = base, np.asarray(index, dtype=int)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return IndexedImages(self.base, self.index[i])
        return self.base[int(self.index[i])]



@dataclass
class ProbeSet:
    """Samples to audit: one prompt (and optionally one image) each, with known attributes.

    - ``prompts[i]``: the user question (no chat template; the model adapter adds it).
    - ``images[i]``: a PIL image, or ``None`` for a text-only probe set.
    - ``attributes``: one row per sample, one column per attribute (string labels).
    - ``asked[i]``: the attribute that prompt ``i`` asks about (task-relevant for that sample).
    - ``meta['numeric']``: attributes declared numeric (others are inferred, :func:`is_numeric_column`).
    - ``groups[i]``: samples sharing a group (e.g. several questions about one image) never
      straddle a train/test split.
    - ``messages[i]``: for a chat probe set, the whole conversation (``[{"role", "content"}, ...]``,
      a system turn allowed, ending with the user turn whose reply is read); ``prompts[i]`` is then
      that last user turn. ``None``: every sample is the single user turn ``prompts[i]``.
    - ``meta['rows'][i]``: the row of the source file sample ``i`` came from (1 = the first data row),
      where there is one (:meth:`row_name`).
    - ``answer_texts[i]``: the expected answer when it is not the value of the asked attribute
      (an ``answer`` column); ``None``: :attr:`answers` uses the asked attribute's value.
    """

    name: str
    prompts: list[str]
    attributes: pd.DataFrame
    asked: list[str]
    groups: np.ndarray
    images: Sequence[Image.Image] | None = None
    meta: dict = field(default_factory=dict)
    messages: list[list[dict]] | None = None
    answer_texts: list[str] | None = None

    def __post_init__(self) -> None:
        n = len(self.prompts)
        self.attributes = self.attributes.reset_index(drop=True)
        self.groups = np.asarray(self.groups)
        for what, size in (("attributes", len(self.attributes)), ("asked", len(self.asked)),
                           ("groups", len(self.groups))):
            if size != n:
                raise LogitleakError(f"Probe set {self.name!r} has {n} prompts but {size} {what}; give one per sample.")
        if self.images is not None and len(self.images) != n:
            raise LogitleakError(f"Probe set {self.name!r} has {n} prompts but {len(self.images)} images; give one image per sample.")
        for what, seq in (("conversations", self.messages), ("answers", self.answer_texts)):
            if seq is not None and len(seq) != n:
                raise LogitleakError(f"Probe set {self.name!r} has {n} prompts but {len(seq)} {what}; give one per sample.")

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def attribute_names(self) -> list[str]:
        return list(self.attributes.columns)

    @property
    def has_images(self) -> bool:
        return self.images is not None

    @property
    def answers(self) -> list[str]:
        """The expected one-word answer of each sample: its value of the attribute asked (or the
        probe set's answer column)."""
        if self.answer_texts is not None:
            return list(self.answer_texts)
        return [str(self.attributes.at[i, a]) for i, a in enumerate(self.asked)]

    @property
    def numeric_attributes(self) -> list[str]:
        """Attributes probed by regression: declared in ``meta['numeric']`` or inferred."""
        declared = set(self.meta.get("numeric") or ())
        return [a for a in self.attributes.columns if a in declared or is_numeric_column(self.attributes[a])]

    @property
    def categorical_attributes(self) -> list[str]:
        """Attributes probed by classification (every attribute that is not numeric)."""
        numeric = set(self.numeric_attributes)
        return [a for a in self.attributes.columns if a not in numeric]

    def labels(self, attribute: str) -> np.ndarray:
        """Labels of one attribute: float64 values for a numeric attribute, strings otherwise,
        with a clear error when it does not exist."""
        if attribute not in self.attributes.columns:
            raise LogitleakError(
                f"Unknown attribute {attribute!r} in probe set {self.name!r}; "
                f"choose one of: {', '.join(self.attributes.columns)}."
            )
        if attribute in self.numeric_attributes:
            values = pd.to_numeric(self.attributes[attribute], errors="coerce").to_numpy(dtype=np.float64)
            if not np.isfinite(values).all():
                raise LogitleakError(f"Numeric attribute {attribute!r} has missing or non-numeric values; fill them or "
                                     "drop those samples.")
            return values
        return self.attributes[attribute].astype(str).to_numpy()

    def subset(self, index: Sequence[int] | np.ndarray) -> ProbeSet:
        """A new probe set holding only the samples at ``index`` (in that order)."""
        idx = np.asarray(index, dtype=int)
        return ProbeSet(
            name=self.name,
            prompts=[self.prompts[i] for i in idx],
            attributes=self.attributes.iloc[idx].reset_index(drop=True),
            asked=[self.asked[i] for i in idx],
            groups=self.groups[idx],
            images=None if self.images is None else IndexedImages(self.images, idx),
            meta=self._subset_meta(idx),
            messages=None if self.messages is None else [self.messages[i] for i in idx],
            answer_texts=None if self.answer_texts is None else [self.answer_texts[i] for i in idx],
        )

    def _subset_meta(self, idx: np.ndarray) -> dict:
        meta = dict(self.meta)
        if meta.get("rows") is not None:  # the file rows of the samples, kept aligned
            meta["rows"] = [meta["rows"][i] for i in idx]
        return meta

    def row_name(self, i: int) -> str:
        """How to name sample ``i`` in a message: its row of the source file, or its index."""
        rows = self.meta.get("rows")
        if rows is not None:
            return f"Row {rows[i]} of {self.meta.get('source', self.name)}"
        return f"Sample {i + 1} of probe set {self.name!r}"

    def conversation(self, i: int) -> list[dict]:
        """Sample ``i`` as chat turns (its messages, or one user turn holding its prompt)."""
        if self.messages is not None:
            return [dict(t) for t in self.messages[i]]
        return [{"role": "user", "content": self.prompts[i]}]

    def fingerprint(self) -> str:
        """A short content hash (prompts, labels, groups, pixels) that keys stored captures."""
        h = hashlib.sha256()
        h.update("\x1f".join(self.prompts).encode())
        h.update(self.attributes.to_csv(index=False).encode())
        h.update("\x1f".join(self.asked).encode())
        h.update(np.ascontiguousarray(self.groups).tobytes())
        if self.images is not None:
            for img in self.images:
                h.update(np.asarray(img).tobytes())
        if self.messages is not None:  # absent for prompt-only sets, so their fingerprints are unchanged
            h.update(json.dumps(self.messages, sort_keys=True).encode())
        if self.answer_texts is not None:
            h.update(("answers\x1f" + "\x1f".join(self.answer_texts)).encode())
        return h.hexdigest()[:16]
