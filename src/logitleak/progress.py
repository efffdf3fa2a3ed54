"""Progress a user can see: a rich bar on a terminal, a plain line every 10 s in a log."""

from __future__ import annotations

import sys
import threading
import time

LOG_INTERVAL_S = 10.0


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
    """The rich ``Progress`` calls used here, written as lines for a log: a line when a phase
    starts, one at least every ``interval`` seconds while it runs (count, total, rate, elapsed)
    and one when it ends. A background timer prints even while one long step is running."""

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
                self._line(task, final=True)
        return False

    def _line(self, task: dict, final: bool = False) -> None:
        el = time.monotonic() - task["t0"]
        rate = (task["done"] - task["start"]) / el if el > 0 else 0.0
        total = f"/{task['total']}" if task["total"] is not None else ""
        state = "done" if final else task["description"]
        print(f"[{task['name']}] {task['done']}{total} ({rate:.1f}/s, {el:.0f} s) {state}",
              file=self.stream, flush=True)

    def _tick(self) -> None:
        while not self._stop.wait(min(1.0, self.interval / 3)):
            now = time.monotonic()
            with self._lock:
                for task in self.tasks.values():
                    if now - task["last"] >= self.interval:
                        task["last"] = now
                        self._line(task)

    def add_task(self, description: str, total=None, completed: int = 0, **_):
        with self._lock:
            tid = len(self.tasks)
            now = time.monotonic()
            self.tasks[tid] = {"name": description, "description": description, "total": total,
                               "done": int(completed), "start": int(completed), "t0": now, "last": now}
            self._line(self.tasks[tid])
            return tid

    def update(self, task_id: int, description: str | None = None, advance: float = 0, **_):
        with self._lock:
            if description is not None:
                self.tasks[task_id]["description"] = description
            self.tasks[task_id]["done"] += int(advance)

    def advance(self, task_id: int, advance: float = 1):
        with self._lock:
            self.tasks[task_id]["done"] += int(advance)


def make_progress(enabled: bool, stream=None):
    """``enabled`` and a terminal: a transient rich bar; enabled, not a terminal: log lines."""
    if not enabled:
        return _NullProgress()
    stream = stream or sys.stderr
    if not (hasattr(stream, "isatty") and stream.isatty()):
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

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=Console(file=stream), transient=True)


class PhaseBar:
    """One counted phase (capture, extraction, lens training, endpoint queries): a transient rich
    bar on a terminal, a log line at least every 10 s elsewhere. Thread-safe ``advance``."""

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
