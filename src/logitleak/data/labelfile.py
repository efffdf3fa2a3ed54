"""Reading a user's label file (CSV, JSONL/JSON records, parquet), and the one rule that types its labels.

A label file fails in one sentence when it is empty, not UTF-8, malformed, repeats a key in a JSON
record, or holds empty cells (named by row). Labels follow one rule whatever the format: a column is
numbers (``1``, ``1.0`` and, in CSV where every cell is text, ``"1.0"`` are one class, written ``1``),
true/false values, or strings compared exactly as written; a column mixing those kinds (JSON ``1`` and
``"1"``, ``true`` and ``"true"``) is an error naming the column and a row of each kind.
"""

from __future__ import annotations

import io
import json
import math
import numbers
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from logitleak.config import MAX_INT_DIGITS, unique_keys
from logitleak.errors import LogitleakError, first_line
from logitleak.userpaths import existing_file

LABEL_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")


def _text(p: Path) -> str:
    data = p.read_bytes()
    if b"\x00" in data[:4096]:
        raise LogitleakError(f"Label file {p} is binary, not text; pass a CSV, JSONL or parquet file.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise LogitleakError(f"Label file {p} is not UTF-8 text (byte {err.start}); save it as UTF-8.") from None


def _json_records(p: Path, text: str, lines: bool) -> pd.DataFrame:
    """JSON Lines (one object per line) or a JSON list of objects, cells exactly as parsed."""
    kind = "JSON Lines (one object per line)" if lines else "a JSON list of objects"

    def parse(chunk: str, where: str):
        try:
            return json.loads(chunk, object_pairs_hook=lambda pairs: unique_keys(pairs, f"Label file {p}{where}"))
        except RecursionError:
            raise LogitleakError(f"Label file {p}{where} nests values too deeply; give one flat object per "
                                 "sample.") from None
        except ValueError as err:  # JSONDecodeError, and Python's bound on integer literals
            why = first_line(err).split(";")[0]
            raise LogitleakError(f"Label file {p} is not valid {kind}{where} ({why}); fix the file.") from None

    if lines:
        records = [parse(line, f" (line {i + 1})") for i, line in enumerate(text.splitlines()) if line.strip()]
    else:
        records = parse(text, "")
        if not isinstance(records, list):
            raise LogitleakError(f"Label file {p} must be a JSON list of objects (one per sample); fix the file.")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            where = f"line {i + 1}" if lines else f"item {i + 1}"
            raise LogitleakError(f"Label file {p} holds {str(rec)[:40]!r} at {where}, not an object of named "
                                 "columns; write one JSON object per sample.")
    columns = list(dict.fromkeys(k for rec in records for k in rec))
    return pd.DataFrame({c: pd.Series([rec.get(c) for rec in records], dtype=object) for c in columns},
                        columns=columns)


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
    if suffix != ".csv":
        return _json_records(p, text, lines=suffix == ".jsonl")
    try:
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise LogitleakError(f"Label file {p} is not valid CSV ({first_line(err)}); fix the file.") from None


def read_records(path: str | Path) -> pd.DataFrame:
    """A CSV, JSONL/JSON (records) or parquet file as a table of cells as parsed (CSV cells are text,
    a JSON cell keeps its type, so a ``messages`` cell may be a list); ``None`` where a record lacks a key."""
    p = existing_file(path, "Label file", "CSV, JSONL or parquet file")
    suffix = p.suffix.lower()
    if suffix not in LABEL_SUFFIXES:
        raise LogitleakError(f"Label file {p} has an unsupported extension {suffix!r}; use one of "
                             f"{', '.join(LABEL_SUFFIXES)}.")
    table = _read(p, suffix)
    if isinstance(table, pd.Series) or not all(isinstance(c, str) for c in table.columns):
        raise LogitleakError(f"Label file {p} must be a table with named columns (a header row, or one JSON object "
                             "per row); fix the file.")
    table = table.reset_index(drop=True)
    table.attrs["text_cells"] = suffix == ".csv"
    return table


def read_label_table(path: str | Path) -> pd.DataFrame:
    """A label file with every column typed by :func:`label_strings`; empty cells stay ``None``."""
    table = read_records(path)
    return label_strings(table, list(table.columns), f"label file {path}")


def _missing(v) -> bool:
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and math.isnan(v))


def _kind(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "true/false value"
    if isinstance(v, numbers.Number):
        return "number"
    if isinstance(v, str):
        return "string"
    return "other"


def _number_text(x: float | int) -> str:
    """One spelling per value: ``1``, ``1.0`` and ``1e0`` are ``1``; ``2.5`` stays ``2.5``."""
    if isinstance(x, numbers.Integral):
        return str(int(x))
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 2**53 else repr(x)


_DECIMAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _as_number(text: str) -> float | int | None:
    """A CSV cell written as a decimal number (``3``, ``-0.5``, ``1e3``), else ``None``."""
    text = text.strip()
    if not _DECIMAL.fullmatch(text):
        return None
    if text.lstrip("+-").isdigit() and len(text) <= MAX_INT_DIGITS + 1:
        return int(text)
    x = float(text)
    return x if math.isfinite(x) else None


def label_strings(table: pd.DataFrame, columns: Sequence[str], source: str,
                  text_cells: bool | None = None) -> pd.DataFrame:
    """``table`` with ``columns`` typed by the one label rule (module docstring) and written as strings,
    missing cells as ``None``; ``text_cells``: the cells are text (CSV), so a column whose every cell
    reads as a number is numbers (default: ``table.attrs['text_cells']``)."""
    if text_cells is None:
        text_cells = bool(table.attrs.get("text_cells", False))
    out = table.copy()
    for col in columns:
        cells = table[col].tolist()
        if text_cells:
            values = [None if _missing(v) else str(v) for v in cells]
            nums = [_as_number(v) for v in values if v is not None and v.strip()]
            if nums and all(x is not None for x in nums):
                values = [v if v is None or not v.strip() else _number_text(_as_number(v)) for v in values]
        else:
            _one_kind(cells, col, source)
            values = [_spell(v, i, col, source) for i, v in enumerate(cells)]
        out[col] = pd.Series(values, index=out.index, dtype=object)
    return out


def _one_kind(cells: list, col: str, source: str) -> None:
    """Refuse a column of typed cells (JSON, parquet) that mixes numbers, true/false and strings, or
    holds a list or object."""
    first: dict[str, int] = {}
    for i, v in enumerate(cells):
        if not _missing(v):
            first.setdefault(_kind(v), i)
    if "other" in first:
        i = first["other"]
        raise LogitleakError(f"Column {col!r} of {source} holds {str(cells[i])[:40]!r} in row {i + 1}, not a single "
                             "value; give one number or string per cell (row 1 = the first data row).")
    if len(first) > 1:
        (ka, ia), (kb, ib) = sorted(first.items(), key=lambda kv: kv[1])[:2]
        raise LogitleakError(f"Column {col!r} of {source} mixes kinds of value: row {ia + 1} holds the {ka} "
                             f"{json.dumps(_plain(cells[ia]))} and row {ib + 1} the {kb} "
                             f"{json.dumps(_plain(cells[ib]))}; write every value of a column the same way "
                             "(row 1 = the first data row).")


def _spell(v, i: int, col: str, source: str) -> str | None:
    """One typed cell as its label string (``None`` when missing)."""
    if _missing(v):
        return None
    kind = _kind(v)
    if kind == "true/false value":
        return "true" if v else "false"
    if kind == "number":
        if not math.isfinite(float(v)):
            raise LogitleakError(f"Column {col!r} of {source} holds {v} in row {i + 1}, not a finite number; fix the "
                                 "value or remove the row (row 1 = the first data row).")
        return _number_text(v)
    return v


def _plain(v):
    """A cell as a JSON-serialisable value, for quoting it as the file wrote it."""
    return v.item() if isinstance(v, np.generic) else v


def check_filled(table: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    """Every cell of ``columns`` holds a value; otherwise name the column and the first rows."""
    for col in columns:
        empty = [i for i, v in enumerate(table[col].tolist()) if _missing(v) or not str(v).strip()]
        if empty:
            rows = ", ".join(str(i + 1) for i in empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
            raise LogitleakError(f"Column {col!r} of {source} is empty in row {rows} (row 1 = the first data row); "
                                 "fill those cells or remove the rows.")
