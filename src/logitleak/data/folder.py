"""User probe sets: an image folder with a label file, or a local `datasets` directory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from logitleak.data.duplicates import Deduplicated, file_digest, resolve_duplicates
from logitleak.data.labelfile import LABEL_SUFFIXES, check_filled, label_strings, read_label_table
from logitleak.data.probeset import IndexedImages, ProbeSet
from logitleak.errors import LogitleakError, first_line

__all__ = ["LABEL_SUFFIXES", "LazyImages", "load_datasets_dir", "load_image_folder", "read_label_table"]
_IMAGE_ERRORS = (FileNotFoundError, UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError,
                 SyntaxError)


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
        except _IMAGE_ERRORS as err:
            raise LogitleakError(f"Cannot read image {path} ({_why(err)}); fix or remove it from the label file.") from None


def _why(err: BaseException) -> str:
    if isinstance(err, Image.DecompressionBombError):
        return "too many pixels for an image: it looks like a decompression bomb"
    return err.__class__.__name__


MAX_SET_PIXELS = 2**32
"""Pixels a probe set's images may hold together (about 4,000 images of 1024 x 1024): each is
decoded and resized once per capture, so more is hours of work before the first result."""


def check_image(path: Path) -> int:
    """Open the header only: a file that is not an image, or is far too large, fails here, by name.
    Returns its pixel count."""
    try:
        with Image.open(path) as img:
            width, height = img.size  # the header is parsed on open; size checks the bomb limit
            return width * height
    except _IMAGE_ERRORS as err:
        raise LogitleakError(f"Cannot read image {path} ({_why(err)}); fix or remove it from the label file.") from None


def _find_label_file(folder: Path) -> Path:
    found = [folder / f"labels{s}" for s in LABEL_SUFFIXES if (folder / f"labels{s}").is_file()]
    if not found:
        raise LogitleakError(f"No label file given and none named labels.csv/.jsonl/.parquet in {folder}; pass --labels FILE.")
    return found[0]


def _build(name: str, table: pd.DataFrame, images, question: str | dict[str, str], task: str,
           group_column: str | None, attributes: Sequence[str] | None, samples: int | None, seed: int,
           drop: Sequence[str], image_keys: Sequence[str | None] | None = None,
           describe: Sequence[str] | None = None) -> ProbeSet:
    if group_column is not None and group_column not in table.columns:
        raise LogitleakError(f"Group column {group_column!r} is not in the label file of {name}; columns are: {', '.join(table.columns)}.")
    attr_cols = list(attributes) if attributes else [c for c in table.columns if c not in set(drop) | {group_column}]
    for col in attr_cols + [task]:
        if col not in table.columns:
            raise LogitleakError(f"Attribute {col!r} is not a column of the label file of {name}; columns are: {', '.join(table.columns)}.")
    if task not in attr_cols:
        attr_cols = [task] + attr_cols
    if len(table) == 0:
        raise LogitleakError(f"The label file of {name} has no rows; add one row per image.")
    check_filled(table, attr_cols + ([group_column] if group_column else []), f"the label file of {name}")
    prompt = question[task] if isinstance(question, dict) else question
    user_groups = None if group_column is None else list(table[group_column])
    if image_keys is not None:
        dedup = resolve_duplicates([f"{k}\x1f{prompt}" for k in image_keys], image_keys, table[attr_cols], user_groups,
                                   f"the label file of {name}", describe)
    else:
        dedup = Deduplicated(keep=np.arange(len(table)), dropped=0, notes=[],
                             groups=np.arange(len(table)) if user_groups is None else pd.factorize(user_groups)[0])
    index, groups = dedup.sample(samples, seed)
    notes = dedup.notes
    imgs = None if images is None else IndexedImages(images, index)
    meta = {"source": name, "question": prompt}
    if notes:
        meta["notes"] = notes
    return ProbeSet(name=name, prompts=[prompt] * len(index),
                    attributes=table[attr_cols].iloc[index].reset_index(drop=True).astype(str),
                    asked=[task] * len(index), groups=groups, images=imgs, meta=meta)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def load_image_folder(folder: str | Path, *, labels: str | Path | None = None, question: str | dict[str, str],
                      task: str, path_column: str = "path", group_column: str | None = None,
                      attributes: Sequence[str] | None = None, samples: int | None = None, seed: int = 0,
                      allow_outside: bool = False) -> ProbeSet:
    """An image folder plus a label file (one column per attribute, a path column, optional group column).

    Every sample is asked ``question`` (the prompt about the task attribute ``task``). Paths in the
    label file are relative to the folder; paths leading outside it (``../``, absolute) are refused
    unless ``allow_outside``. Identical images are found by content (see :mod:`logitleak.data.duplicates`).
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
    check_filled(table, [path_column], f"label file {label_path}")
    paths = []
    for i, p in enumerate(table[path_column]):
        path = Path(p) if Path(p).is_absolute() else root / p
        if not allow_outside and not _inside(path, root):
            raise LogitleakError(f"Row {i + 1} of {label_path} points outside the data folder {root} ({p!r}); move "
                                 "the image into the folder or pass --allow-outside-data.")
        paths.append(path)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise LogitleakError(f"Image file {missing[0]}{more} listed in {label_path} does not exist; fix the path or remove the row.")
    pixels = [check_image(p) for p in paths]
    digests = [file_digest(p) for p in paths]
    ps = _build(str(root), table, LazyImages(paths), question, task, group_column, attributes, samples, seed,
                drop=[path_column], image_keys=digests, describe=[str(p) for p in table[path_column]])
    total = sum(pixels[i] for i in ps.images.index)
    if total > MAX_SET_PIXELS:
        raise LogitleakError(f"The {len(ps)} images of {label_path} hold {total:,} pixels together, more than the "
                             f"{MAX_SET_PIXELS:,} a probe set may hold; audit fewer of them (--samples) or downscale "
                             "them.")
    return ps


def load_datasets_dir(path: str | Path, *, question: str | dict[str, str], task: str, image_column: str = "image",
                      group_column: str | None = None, attributes: Sequence[str] | None = None,
                      samples: int | None = None, seed: int = 0, split: str | None = None) -> ProbeSet:
    """A local Hugging Face `datasets` directory written by ``save_to_disk`` (never downloaded)."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise LogitleakError(f"{path} is not a dataset saved with `save_to_disk`; pass such a directory or an image folder.") from None
    except Exception as err:  # noqa: BLE001 - a damaged dataset directory raises many kinds of errors
        first = first_line(err)
        raise LogitleakError(f"The dataset directory {path} is damaged ({type(err).__name__}: {first}); save it again "
                             "with `save_to_disk`.") from None
    if isinstance(ds, datasets.DatasetDict):
        split = split or ("test" if "test" in ds else next(iter(ds)))
        ds = ds[split]
    has_images = image_column in ds.column_names
    frame = ds.remove_columns([image_column]).to_pandas() if has_images else ds.to_pandas()
    table = label_strings(frame, list(frame.columns), f"the dataset {path}", text_cells=False)
    images = _DatasetImages(ds, image_column) if has_images else None
    keys = _dataset_image_digests(ds, image_column) if has_images else None
    return _build(str(path), table, images, question, task, group_column, attributes, samples, seed, drop=[],
                  image_keys=keys)


def _dataset_image_digests(ds, column: str) -> list[str]:
    """Content hash of every image of a dataset (its encoded bytes, else its pixels)."""
    import hashlib

    import datasets

    try:
        raw = ds.cast_column(column, datasets.Image(decode=False))[column]
    except Exception:  # noqa: BLE001 - not an Image feature: hash the decoded pixels
        raw = None
    out = []
    for i in range(len(ds)):
        item = raw[i] if raw is not None else None
        if isinstance(item, dict) and item.get("bytes"):
            out.append(hashlib.sha256(item["bytes"]).hexdigest())
        elif isinstance(item, dict) and item.get("path"):
            out.append(file_digest(item["path"]))
        else:
            img = ds[i][column]
            arr = np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img)
            out.append(hashlib.sha256(repr(arr.shape).encode() + arr.tobytes()).hexdigest())
    return out


class _DatasetImages(Sequence):
    def __init__(self, ds, column: str):
        self.ds, self.column = ds, column

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):  # type: ignore[override]
        img = self.ds[int(i)][self.column]
        return img.convert("RGB") if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img)).convert("RGB")
