"""Progress a user can see: phases and counted steps, as a rich bar on a terminal or plain lines in a log.

In a log (not a terminal) every counted step prints a line when it starts, one at least every
10 s while it runs, and its ``done`` line once, the moment it reaches its total (or when its
phase closes); after that it is silent. A :func:`phase` (load, capture, probes, ...) indents
whatever starts inside it, so nested steps print under their parent.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager

LOG_INTERVAL_S = 10.0
INDENT = "  "

_OPEN = [0]  # how many phases are open (phases run one inside another, never side by side)


def depth() -> int:
    """How many phases are open (the indentation of the next line)."""
    return _OPEN[0]


def cpu_seconds() -> float:
    """CPU time of this process and of its finished worker processes (user + system)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _is_terminal(stream) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()


@contextmanager
def phase(name: str, enabled: bool = True, stream=None):
    """A named phase: in a log, ``[name]`` when it starts and ``[name] done in W s (CPU C s)`` when
    it ends (``stopped after`` when it raised), with everything printed inside it indented under it;
    on a terminal, only the done line.
    Yields a dict that holds ``wall`` and ``cpu`` seconds once the phase has ended."""
    stream = stream or sys.stderr
    log = enabled and not _is_terminal(stream)
    pad = INDENT * depth()
    if log:
        print(f"{pad}[{name}]", file=stream, flush=True)
    spent: dict[str, float] = {}
    t0, c0 = time.perf_counter(), cpu_seconds()
    _OPEN[0] += 1
    state = "stopped after"
    try:
        yield spent
        state = "done in"
    finally:
        _OPEN[0] -= 1
        spent["wall"], spent["cpu"] = time.perf_counter() - t0, cpu_seconds() - c0
        if enabled:
            print(f"{pad}[{name}] {state} {spent['wall']:.1f} s (CPU {spent['cpu']:.1f} s)", file=stream, flush=True)


class _NullProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *a, **k):
        return 0

    def update(self, *a, **k):
        pass

    def advance(self, *a, **k):
        pass


class LogProgress:
    """The rich ``Progress`` calls used here, written as lines for a log (see the module doc). A
    background timer prints even while one long step is running."""

    def __init__(self, stream=None, interval: float | None = None):
        self.stream = stream or sys.stderr
        self.interval = LOG_INTERVAL_S if interval is None else interval
        self.tasks: dict[int, dict] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self):
        self._thread = threading.Thread(target=self._tick, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        with self._lock:
            for task in self.tasks.values():
                self._finish(task)
        return False

    def _line(self, task: dict, final: bool = False) -> None:
        el = time.monotonic() - task["t0"]
        rate = (task["done"] - task["start"]) / el if el > 0 else 0.0
        total = f"/{task['total']}" if task["total"] is not None else ""
        state = "done" if final else task["description"]
        print(f"{task['pad']}[{task['name']}] {task['done']}{total} ({rate:.1f}/s, {el:.0f} s) {state}",
              file=self.stream, flush=True)

    def _finish(self, task: dict) -> None:
        """The task's ``done`` line, once; it prints nothing after it."""
        if not task["finished"]:
            task["finished"] = True
            self._line(task, final=True)

    def _moved(self, task: dict) -> None:
        if task["total"] is not None and task["done"] >= task["total"]:
            self._finish(task)

    def _tick(self) -> None:
        while not self._stop.wait(min(1.0, self.interval / 3)):
            now = time.monotonic()
            with self._lock:
                for task in self.tasks.values():
                    if not task["finished"] and now - task["last"] >= self.interval:
                        task["last"] = now
                        self._line(task)

    def add_task(self, description: str, total=None, completed: int = 0, **_):
        with self._lock:
            tid = len(self.tasks)
            now = time.monotonic()
            self.tasks[tid] = {"name": description, "description": description, "total": total,
                               "done": int(completed), "start": int(completed), "t0": now, "last": now,
                               "pad": INDENT * depth(), "finished": False}
            self._line(self.tasks[tid])
            self._moved(self.tasks[tid])
            return tid

    def update(self, task_id: int, description: str | None = None, advance: float = 0, **_):
        with self._lock:
            task = self.tasks[task_id]
            if description is not None:
                task["description"] = description
            task["done"] += int(advance)
            self._moved(task)

    def advance(self, task_id: int, advance: float = 1):
        self.update(task_id, advance=advance)


def make_progress(enabled: bool, stream=None):
    """``enabled`` and a terminal: a transient rich bar; enabled, not a terminal: log lines."""
    if not enabled:
        return _NullProgress()
    stream = stream or sys.stderr
    if not _is_terminal(stream):
        return LogProgress(stream)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn(INDENT * depth() + "{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=Console(file=stream), transient=True)


class PhaseBar:
    """One counted phase (capture, extraction, lens training, endpoint queries): a transient rich
    bar on a terminal, log lines elsewhere (see the module doc). Thread-safe ``advance``."""

    def __init__(self, enabled: bool, description: str, total: int, completed: int = 0, stream=None):
        self._lock = threading.Lock()
        self._progress = make_progress(enabled, stream)
        self._progress.__enter__()
        self._task = self._progress.add_task(description, total=total, completed=completed)

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self._progress.advance(self._task, n)

    def close(self) -> None:
        self._progress.__exit__(None, None, None)

    def __enter__(self) -> PhaseBar:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False
