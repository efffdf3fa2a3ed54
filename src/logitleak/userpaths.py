"""Output directories the user names: created up front, or one sentence saying why they cannot be."""

from __future__ import annotations

import os
from pathlib import Path

from logitleak.errors import LogitleakError


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
