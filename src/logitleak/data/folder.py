"""User probe sets: an image folder with a label file, or a local `datasets` directory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from logitleak.data.probeset import IndexedImages, ProbeSet
from logitleak.errors import LogitleakError

LABEL_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")


class LazyImages(Sequence):
    """Images opened from disk on access, so a large folder needs no memory up front."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return LazyImages(self.paths[i])
        path = self.paths[i]
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (FileNotFoundError, UnidentifiedImageError, OSError) as err:
            raise LogitleakError(f"Cannot read image {path} ({err.__class__.__name__}); fix or remove it from the label file.") from None


def read_label_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV, JSONL/JSON (records) or parquet label file."""
    p = Path(path)
    if not p.is_file():
        raise LogitleakError(f"Label file {p} does not exist; pass an existing CSV, JSONL or parquet file.")
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(p, dtype=str, keep_default_na=False)
    if suffix in (".jsonl", ".json"):
        return pd.read_json(p, lines=suffix == ".jsonl", dtype=False).astype(str)
    if suffix == ".parquet":
        return pd.read_parquet(p).astype(str)
    raise LogitleakError(f"Label file {p} has an unsupported extension {suffix!r}; use one of {', '.join(LABEL_SUFFIXES)}.")


def _find_label_file(folder: Path) -> Path:
    found = [folder / f"labels{s}" for s in LABEL_SUFFIXES if (folder / f"labels{s}").is_file()]
    if not found:
        raise LogitleakError(f"No label file given and none named labels.csv/.jsonl/.parquet in {folder}; pass --labels FILE.")
    return found[0]


def _build(name: str, table: pd.DataFrame, images, question: str | dict[str, str], task: str,
           group_column: str | None, attributes: Sequence[str] | None, samples: int | None, seed: int,
           drop: Sequence[str]) -> ProbeSet:
    if group_column is not None and group_column not in table.columns:
        raise LogitleakError(f"Group column {group_column!r} is not in the label file of {name}; columns are: {', '.join(table.columns)}.")
    attr_cols = list(attributes) if attributes else [c for c in table.columns if c not in set(drop) | {group_column}]
    for col in attr_cols + [task]:
        if col not in table.columns:
            raise LogitleakError(f"Attribute {col!r} is not a column of the label file of {name}; columns are: {', '.join(table.columns)}.")
    if task not in attr_cols:
        attr_cols = [task] + attr_cols
    n = len(table)
    if n == 0:
        raise LogitleakError(f"The label file of {name} has no rows; add one row per image.")
    index = np.arange(n)
    if samples is not None and samples < n:
        index = np.sort(np.random.default_rng(seed).choice(n, size=samples, replace=False))
    prompt = question[task] if isinstance(question, dict) else question
    groups = (pd.factorize(table[group_column])[0] if group_column else np.arange(n))[index]
    imgs = None if images is None else IndexedImages(images, index)
    return ProbeSet(name=name, prompts=[prompt] * len(index),
                    attributes=table[attr_cols].iloc[index].reset_index(drop=True).astype(str),
                    asked=[task] * len(index), groups=groups, images=imgs,
                    meta={"source": name, "question": prompt})


def load_image_folder(folder: str | Path, *, labels: str | Path | None = None, question: str | dict[str, str],
                      task: str, path_column: str = "path", group_column: str | None = None,
                      attributes: Sequence[str] | None = None, samples: int | None = None, seed: int = 0) -> ProbeSet:
    """An image folder plus a label file (one column per attribute, a path column, optional group column).

    Every sample is asked ``question`` (the prompt about the task attribute ``task``).
    Paths in the label file are relative to the folder (or absolute).
    """
    root = Path(folder)
    if root.is_file() and root.suffix.lower() in LABEL_SUFFIXES and labels is None:
        labels, root = root, root.parent
    if not root.is_dir():
        raise LogitleakError(f"Image folder {root} does not exist; pass a folder of images with a label file.")
    label_path = Path(labels) if labels is not None else _find_label_file(root)
    table = read_label_table(label_path)
    if path_column not in table.columns:
        raise LogitleakError(f"Label file {label_path} has no path column {path_column!r}; add it or name it with --path-column.")
    paths = [Path(p) if Path(p).is_absolute() else root / p for p in table[path_column]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise LogitleakError(f"Image file {missing[0]}{more} listed in {label_path} does not exist; fix the path or remove the row.")
    return _build(str(root), table, LazyImages(paths), question, task, group_column, attributes, samples, seed,
                  drop=[path_column])


def load_datasets_dir(path: str | Path, *, question: str | dict[str, str], task: str, image_column: str = "image",
                      group_column: str | None = None, attributes: Sequence[str] | None = None,
                      samples: int | None = None, seed: int = 0, split: str | None = None) -> ProbeSet:
    """A local Hugging Face `datasets` directory written by ``save_to_disk`` (never downloaded)."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise LogitleakError(f"{path} is not a dataset saved with `save_to_disk`; pass such a directory or an image folder.") from None
    if isinstance(ds, datasets.DatasetDict):
        split = split or ("test" if "test" in ds else next(iter(ds)))
        ds = ds[split]
    has_images = image_column in ds.column_names
    table = ds.remove_columns([image_column]).to_pandas().astype(str) if has_images else ds.to_pandas().astype(str)
    images = _DatasetImages(ds, image_column) if has_images else None
    return _build(str(path), table, images, question, task, group_column, attributes, samples, seed, drop=[])


class _DatasetImages(Sequence):
    def __init__(self, ds, column: str):
        self.ds, self.column = ds, column

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):  # type: ignore[override]
        img = self.ds[int(i)][self.column]
        return img.convert("RGB") if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img)).convert("RGB")
