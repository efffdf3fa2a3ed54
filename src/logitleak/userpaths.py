"""Output directories the user names: made up front, written only when they are logitleak's, held by one run.

A directory is logitleak's when it is empty (or new) or holds a run record (``run.json``) that
logitleak wrote. Anything else is the user's, refused in one sentence and left byte for byte as it
was: ``--force`` reuses a directory of an earlier logitleak run with other settings, never one with
other files. A symbolic link as the directory, or inside it, is refused (logitleak never writes
through a link). While a run writes, it holds a lock file in the directory, so a second run into it
is refused until the first ends (the lock is released by the OS if the process dies).
"""

from __future__ import annotations

import json
import os
import time
from importlib import metadata
from pathlib import Path

from filelock import FileLock, Timeout

from logitleak.errors import LogitleakError
from logitleak.integrity import write_json

RUN_RECORD = "run.json"
LOCK_FILE = ".logitleak.lock"
WRITER = "logitleak"
"""``run.json``'s ``written_by``: the mark of a directory logitleak owns."""


def existing_file(path: str | Path, what: str, kinds: str) -> Path:
    """``path`` when it is an existing file, else one sentence naming it (``what``: e.g. "Config
    file"; ``kinds``: the files that would do, e.g. ".yaml or .toml file")."""
    p = Path(path)
    if p.is_dir():
        raise LogitleakError(f"{what} {p} is a directory; pass a {kinds}.")
    if not p.is_file():
        raise LogitleakError(f"{what} {p} does not exist; pass an existing {kinds}.")
    return p


def ensure_out_dir(path: str | Path, flag: str = "--out") -> Path:
    """Create ``path`` (and its parents) as a writable directory, or raise one clear error naming it."""
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise LogitleakError(f"Output directory {str(out)!r} ({flag}) is an existing file; pass a directory path.")
    for parent in [out, *out.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise LogitleakError(f"Output directory {str(out)!r} ({flag}) cannot be made: {str(parent)!r} is a "
                                     "file; choose a path whose parents are directories.")
            break
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = (err.strerror or type(err).__name__).rstrip(".")
        raise LogitleakError(f"Output directory {str(out)!r} ({flag}) cannot be made ({reason}); choose a path you "
                             "can write to.") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise LogitleakError(f"Output directory {str(out)!r} ({flag}) is not writable; choose a path you can write to.")
    return out


def is_run_record(record) -> bool:
    """Whether a parsed ``run.json`` was written by logitleak (its mark, or, from before the mark, an
    identity beside logitleak's version)."""
    if not isinstance(record, dict) or not isinstance(record.get("identity"), dict):
        return False
    versions = record.get("versions")
    return record.get("written_by") == WRITER or (isinstance(versions, dict) and "logitleak" in versions)


def _symlink_inside(out: Path) -> Path | None:
    """The first symbolic link at or below ``out`` (links are not followed), or ``None``."""
    for root, dirs, files in os.walk(out, followlinks=False):
        for name in dirs + files:
            if (Path(root) / name).is_symlink():
                return Path(root) / name
    return None


def _read_record(out: Path, flag: str, force: bool) -> dict | None:
    """The earlier run's record in ``out`` (``None`` when there is none, or a damaged one and ``force``);
    refuses a directory that is not logitleak's."""
    run_file = out / RUN_RECORD
    entries = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE)
    if not entries:
        return None
    if not run_file.is_file():
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise LogitleakError(f"Output directory {out} ({flag}) holds files logitleak did not write ({shown}) and no "
                             f"run record ({RUN_RECORD}) of an earlier run; choose a new or empty directory (--force "
                             "reuses only a logitleak run's directory, never other files).")
    try:
        record = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        if force:
            return None
        raise LogitleakError(f"The run record {run_file} is damaged, so it cannot tell whether {out} holds this run; "
                             "pass --force to reuse the directory (its verified caches are kept) or choose another "
                             f"{flag}.") from None
    if not is_run_record(record):
        raise LogitleakError(f"Output directory {out} ({flag}) holds a {RUN_RECORD} that logitleak did not write; "
                             "choose a new or empty directory (--force reuses only a logitleak run's directory, never "
                             "other files).")
    return record


class OutDir:
    """An output directory this run holds (its lock) until :meth:`release`; use it as a context manager."""

    def __init__(self, path: Path, lock: FileLock, previous: dict | None, flag: str, force: bool) -> None:
        self.path, self._lock, self.previous, self.flag, self.force = path, lock, previous, flag, force
        self.command: str | None = None
        self.identity: dict | None = None

    def begin(self, identity: dict, command: str) -> None:
        """Refuse a directory holding a different run (unless ``force``); mark a new one as this run's
        with a start record (a rerun resumes from it, :meth:`finish` replaces it). An earlier run's
        record stays until this run finishes, so a run that fails loses none of it."""
        current = json.loads(json.dumps(identity, default=str))
        prev = self.previous
        if prev is not None and not self.force:
            before = prev.get("identity", {})
            diff = sorted(k for k in set(before) | set(current) if before.get(k) != current.get(k))
            if prev.get("command", command) != command:
                diff = ["command", *diff]
            if diff:
                what = prev.get("command", "run")
                raise LogitleakError(f"Output directory {self.path} already holds a different {what}'s results (differs "
                                     f"in: {', '.join(diff)}); choose another {self.flag} or pass --force to replace "
                                     "them.")
        self.command, self.identity = command, current
        if prev is None:
            self._write({"identity": current, "status": "running", "started": time.strftime("%Y-%m-%d %H:%M:%S")})

    def finish(self, record: dict) -> None:
        """Write the finished run's record (``run.json``, with the identity :meth:`begin` was given), marked
        as logitleak's."""
        self._write({"identity": self.identity, **record, "status": "finished"})

    def _write(self, record: dict) -> None:
        try:
            version = metadata.version("logitleak")
        except metadata.PackageNotFoundError:  # pragma: no cover - a source tree without metadata
            version = "unknown"
        write_json(self.path / RUN_RECORD, {"written_by": WRITER, "writer_version": version,
                                            "command": self.command, **record})

    def release(self) -> None:
        """Let another run use the directory."""
        self._lock.release()

    def __enter__(self) -> OutDir:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def claim_out_dir(path: str | Path, *, force: bool = False, flag: str = "--out") -> OutDir:
    """Make or reuse ``path`` as this run's output directory and hold it: refused, with nothing
    written there, when it is a link, holds files logitleak did not write, or another run holds it."""
    out = Path(path).expanduser()
    if out.is_symlink():
        raise LogitleakError(f"Output directory {out} ({flag}) is a symbolic link to {os.readlink(out)}; logitleak "
                             f"writes only into a real directory, so pass {out.resolve()} itself or another {flag}.")
    if out.is_dir():
        link = _symlink_inside(out)
        if link is not None:
            raise LogitleakError(f"Output directory {out} ({flag}) holds a symbolic link, {link} -> "
                                 f"{os.readlink(link)}; logitleak does not write through links, so remove it or choose "
                                 f"another {flag}.")
        _read_record(out, flag, force)  # a directory that is not logitleak's fails before anything is written
    out = ensure_out_dir(out, flag)
    lock = FileLock(out / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise LogitleakError(f"Output directory {out} ({flag}) is in use by another logitleak run (it holds "
                             f"{out / LOCK_FILE}); wait for that run to finish or choose another {flag}.") from None
    try:  # read again under the lock: a run that just finished may have written its record
        previous = _read_record(out, flag, force)
    except BaseException:
        lock.release()
        raise
    return OutDir(out, lock, previous, flag, force)
