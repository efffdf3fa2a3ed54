"""Files a reader can trust: written whole (temp file + rename), checksummed, verified before use.

Every file logitleak writes goes through :func:`atomic_write` (a JSON document through
:func:`write_json`, a directory through :func:`atomic_directory`), so a reader sees the old
bytes or the new ones, never half of them. A cache directory keeps ``checksums.json`` (``{file name: {"sha256", "size"}}``), written atomically
after each recorded file. :meth:`Checksums.verify` is true only for a file whose bytes are exactly
what was recorded, so a truncated, deleted, replaced or bit-flipped file (or a damaged or missing
``checksums.json``) is never trusted: callers recompute it, or stop with one sentence naming it.
The activation store keeps its shards' checksums in its own ``manifest.json`` with the same helpers.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

CHECKSUMS_FILE = "checksums.json"
_VERSION = 1


def atomic_write(path: str | Path, write: Callable[[str], object], checksum: bool = False) -> None:
    """Write ``path`` through ``write(tmp_path)``, flush it to disk, then rename: readers never see a
    half-written file. ``checksum``: also record its SHA-256 in the directory's ``checksums.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if checksum:
        record_checksum(path)


def json_value(v):
    """A JSON-ready value: NaN and missing values as null, numpy scalars as Python, arrays and lists
    (e.g. a row's ``permutation_stats``) element by element, anything else as text."""
    if isinstance(v, (list, tuple)) or getattr(v, "ndim", 0) > 0:
        return [json_value(x) for x in list(v)]
    if v is None or v is getattr(sys.modules.get("pandas"), "NA", None):  # pd.NA (only if pandas is in use)
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "item"):
        return json_value(v.item())
    if isinstance(v, (str, int, float, bool, list, tuple, dict)):
        return v
    return str(v)


def write_json(path: str | Path, obj, checksum: bool = False, indent: int | None = 2) -> None:
    """Write JSON atomically, NaN as null; ``checksum`` as in :func:`atomic_write`."""
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=indent, default=json_value)),
                 checksum=checksum)


@contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """A fresh temporary directory beside ``target`` that replaces ``target`` when the block ends
    without an error (and is removed when it does not): a reader sees the old directory or the new.
    The directory and its files follow the umask (some writers create 0600 files)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        yield tmp
        for f in tmp.iterdir():
            if f.is_file():
                os.chmod(f, 0o666 & ~umask)
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
            os.replace(target, old / "previous")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def file_record(path: str | Path) -> dict:
    """What a manifest stores about one file."""
    return {"sha256": file_sha256(path), "size": os.path.getsize(path)}


def matches(path: str | Path, record: dict | None) -> bool:
    """Whether ``path`` exists and holds exactly the bytes ``record`` describes."""
    p = Path(path)
    if not record or not p.is_file():
        return False
    try:
        if p.stat().st_size != int(record.get("size", -1)):
            return False
        return file_sha256(p) == record.get("sha256")
    except (OSError, TypeError, ValueError):
        return False


class Checksums:
    """The ``checksums.json`` of one cache directory."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.path = self.dir / CHECKSUMS_FILE
        self._files: dict[str, dict] | None = None

    def _load(self) -> dict[str, dict]:
        if self._files is None:
            try:
                data = json.loads(self.path.read_text())
                files = data.get("files", {}) if isinstance(data, dict) else {}
                self._files = {k: v for k, v in files.items() if isinstance(v, dict)}
            except (OSError, ValueError):
                self._files = {}  # missing or damaged: nothing in the directory is trusted
        return self._files

    def record(self, path: str | Path) -> None:
        """Remember the current bytes of ``path`` (a file in this directory)."""
        p = Path(path)
        files = self._load()
        files[p.name] = file_record(p)
        body = json.dumps({"version": _VERSION, "files": files}, indent=1, sort_keys=True)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(body))

    def verify(self, path: str | Path) -> bool:
        """True only when ``path`` holds exactly the bytes recorded for it."""
        return matches(path, self._load().get(Path(path).name))

    def __contains__(self, name: str) -> bool:
        return name in self._load()


def seal(record: dict) -> dict:
    """``record`` plus a ``sha256`` of its other fields (for one line of an append-only JSONL cache)."""
    body = {k: v for k, v in record.items() if k != "sha256"}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return {**body, "sha256": digest}


def is_sealed(record: dict) -> bool:
    """Whether a line read back still matches the checksum :func:`seal` gave it."""
    return isinstance(record, dict) and record.get("sha256") is not None and seal(record)["sha256"] == record["sha256"]


def record_checksum(path: str | Path) -> None:
    """Record ``path`` in the ``checksums.json`` of its directory."""
    Checksums(Path(path).parent).record(path)


def verified(path: str | Path) -> bool:
    """Whether ``path`` matches the checksum recorded in its directory's ``checksums.json``."""
    return Checksums(Path(path).parent).verify(path)
