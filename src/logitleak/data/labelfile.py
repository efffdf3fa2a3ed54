"""A user's label file (CSV, JSONL/JSON records, parquet) read into a table of strings.

Or one sentence saying what is wrong with it: empty, not UTF-8, malformed, or with empty cells
(named by row)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from logitleak.errors import LogitleakError, first_line

LABEL_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")


def _text(p: Path) -> str:
    data = p.read_bytes()
    if b"\x00" in data[:4096]:
        raise LogitleakError(f"Label file {p} is binary, not text; pass a CSV, JSONL or parquet file.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise LogitleakError(f"Label file {p} is not UTF-8 text (byte {err.start}); save it as UTF-8.") from None


def _read(p: Path, suffix: str) -> pd.DataFrame:
    if suffix == ".parquet":
        try:
            return pd.read_parquet(p)
        except Exception as err:  # noqa: BLE001 - pyarrow raises many classes for a corrupt file
            raise LogitleakError(f"Label file {p} is not a readable parquet file ({first_line(err)}); "
                                 "rewrite it or use CSV.") from None
    text = _text(p)
    if not text.strip():
        raise LogitleakError(f"Label file {p} is empty; add a header row and one row per sample.")
    try:
        if suffix == ".csv":
            return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
        return pd.read_json(io.StringIO(text), lines=suffix == ".jsonl", dtype=False)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        kind = {".csv": "CSV", ".jsonl": "JSON Lines (one object per line)", ".json": "a JSON list of objects"}[suffix]
        raise LogitleakError(f"Label file {p} is not valid {kind} ({first_line(err)}); fix the file.") from None


def read_label_table(path: str | Path) -> pd.DataFrame:
    """A CSV, JSONL/JSON (records) or parquet label file as strings; empty cells stay ``None``."""
    p = Path(path)
    if p.is_dir():
        raise LogitleakError(f"Label file {p} is a directory; pass a CSV, JSONL or parquet file.")
    if not p.is_file():
        raise LogitleakError(f"Label file {p} does not exist; pass an existing CSV, JSONL or parquet file.")
    suffix = p.suffix.lower()
    if suffix not in LABEL_SUFFIXES:
        raise LogitleakError(f"Label file {p} has an unsupported extension {suffix!r}; use one of "
                             f"{', '.join(LABEL_SUFFIXES)}.")
    table = _read(p, suffix)
    if isinstance(table, pd.Series) or not all(isinstance(c, str) for c in table.columns):
        raise LogitleakError(f"Label file {p} must be a table with named columns (a header row, or one JSON object "
                             "per row); fix the file.")
    return as_strings(table)


def _missing(v) -> bool:
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and math.isnan(v))


def as_strings(frame: pd.DataFrame) -> pd.DataFrame:
    """Every cell as ``str``, missing ones (None, NaN, NA) as ``None``, in object columns."""
    return pd.DataFrame({c: pd.Series([None if _missing(v) else str(v) for v in frame[c].tolist()], dtype=object)
                         for c in frame.columns}, columns=list(frame.columns))


def check_filled(table: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    """Every cell of ``columns`` holds a value; otherwise name the column and the first rows."""
    for col in columns:
        empty = [i for i, v in enumerate(table[col].tolist()) if _missing(v) or not str(v).strip()]
        if empty:
            rows = ", ".join(str(i + 1) for i in empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
            raise LogitleakError(f"Column {col!r} of {source} is empty in row {rows} (row 1 = the first data row); "
                                 "fill those cells or remove the rows.")
