"""How a failed command ends: a user's error in one sentence on stderr and exit code 2, a bug in a traceback.

The one place the ``logitleak`` command decides how a failure ends:

* :class:`~logitleak.errors.LogitleakError` (raised where the input is known): its message, exit 2.
* click usage errors, from ``click`` and from the copy typer vendors as ``typer._click`` (their
  classes differ by typer version): click's own usage text, its exit code (2).
* OS errors on a path the user gave (or a full / read-only disk): one sentence naming the path.
* Running out of memory: one sentence naming the knobs that shrink the run.
* Anything else is a bug: the traceback, then a line asking to report it (exit 1).
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from logitleak.errors import LogitleakError

REPORT_LINE = ("This is a bug in logitleak, not in your input: please report it with the command you ran and the "
               "traceback above.")

# errno values that describe the machine, not the program: always the user's (or their disk's) to fix.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EMFILE, errno.ENAMETOOLONG}
_PATH_FIXES = {
    errno.ENOENT: "check the path exists",
    errno.ENOTDIR: "a part of the path is a file, not a directory; choose another path",
    errno.EISDIR: "it is a directory; pass a file",
    errno.EEXIST: "something already exists there; choose another path",
    errno.EACCES: "you lack permission there; choose a path you can write to",
    errno.EPERM: "the system does not allow it; choose a path you can write to",
    errno.EROFS: "the file system is read-only; choose a writable path",
    errno.ENOSPC: "the disk is full; free some space or choose another disk",
    errno.EDQUOT: "the disk quota is exhausted; free some space",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
    errno.EMFILE: "too many files are open; raise the limit (ulimit -n) or close other programs",
    errno.ELOOP: "it has a symbolic-link loop; fix the link",
    errno.ENXIO: "it is not a regular file; pass a file or directory",
}


def _click_classes(name: str) -> tuple[type, ...]:
    """``name`` from every click the installed typer may use (``click`` and ``typer._click``)."""
    found: list[type] = []
    for module in ("click.exceptions", "typer._click.exceptions"):
        try:
            mod = __import__(module, fromlist=[name])
        except ImportError:
            continue
        cls = getattr(mod, name, None)
        if isinstance(cls, type) and cls not in found:
            found.append(cls)
    return tuple(found)


def _exit_classes() -> tuple[type, ...]:
    found: list[type] = list(_click_classes("Exit"))
    try:
        import typer

        found.append(typer.Exit)
    except ImportError:
        pass
    return tuple(found)


def _user_paths(argv: Sequence[str]) -> list[Path]:
    """Every command-line word that looks like a path (values of ``--flag=value`` included)."""
    paths = []
    for word in argv:
        value = word.split("=", 1)[1] if word.startswith("--") and "=" in word else word
        if value.startswith("-") or not value:
            continue
        try:
            paths.append(Path(value).expanduser().absolute())
        except (OSError, ValueError):
            continue
    return paths


def _is_related(path: Path, roots: Sequence[Path]) -> bool:
    """``path`` is a user path, inside one, or a directory on the way to one (not ``/`` itself)."""
    for root in roots:
        if path == root or root in path.parents or (path in root.parents and path != Path(path.anchor)):
            return True
    return False


def os_error_message(err: OSError, argv: Sequence[str]) -> str | None:
    """One sentence for an OS error on a path the user gave (or of the disk); ``None`` otherwise."""
    filename = getattr(err, "filename", None)
    if filename is None:  # a write into an open file: only a full disk is the machine's, not a bug
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            return (f"A write failed: {(err.strerror or 'no space left').rstrip('.')}; "
                    f"{_PATH_FIXES[err.errno]}, or choose an --out on another disk.")
        return None
    try:
        path = Path(os.fsdecode(filename)).expanduser().absolute()
    except (TypeError, ValueError):
        return None
    user_given = _is_related(path, _user_paths(argv))
    if not user_given and err.errno not in _ENVIRONMENT_ERRNOS:
        return None
    reason = err.strerror or type(err).__name__
    fix = _PATH_FIXES.get(err.errno, "check the path and its permissions")
    return f"Cannot use {os.fsdecode(filename)!r}: {reason.rstrip('.')}; {fix}."


def _memory_message(err: BaseException) -> str:
    return ("Ran out of memory" + (f" ({str(err).splitlines()[0][:160]})" if str(err).strip() else "")
            + "; lower --samples, --batch-size or --layers, or use a machine with more memory.")


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    try:
        import torch

        return isinstance(err, torch.OutOfMemoryError)
    except (ImportError, AttributeError):
        return False


def run_cli(app: Callable, argv: Sequence[str] | None = None) -> None:
    """Run ``app`` (a typer app) and end the process the way this module's docstring says."""
    argv = list(sys.argv[1:] if argv is None else argv)
    usage_errors = _click_classes("ClickException")
    aborts = _click_classes("Abort")
    exits = _exit_classes()
    try:
        code = app(args=argv, standalone_mode=False)  # not standalone, click returns a typer.Exit's code
    except LogitleakError as err:
        _fail(str(err))
    except exits as err:  # type: ignore[misc]
        raise SystemExit(getattr(err, "exit_code", 0)) from None
    except usage_errors as err:  # type: ignore[misc]
        err.show()
        raise SystemExit(getattr(err, "exit_code", 2)) from None
    except (KeyboardInterrupt, *aborts):  # type: ignore[misc]
        print("Interrupted; rerun the same command to resume where it stopped.", file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:
        raise SystemExit(1) from None
    except OSError as err:
        message = os_error_message(err, argv)
        if message is None:
            _bug()
        _fail(message)
    except Exception as err:  # noqa: BLE001 - the last line of defence
        if _is_oom(err):
            _fail(_memory_message(err))
        _bug()
    if isinstance(code, int) and code:
        raise SystemExit(code)


def _fail(message: str) -> None:
    message = " ".join(str(message).split()) if "\n" not in str(message).strip() else str(message).strip()
    print(f"Error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _bug() -> None:
    traceback.print_exc()
    print(REPORT_LINE, file=sys.stderr)
    raise SystemExit(1)
