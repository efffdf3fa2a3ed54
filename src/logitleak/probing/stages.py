"""Probe stages side by side: independent sweeps run in single-threaded worker processes, one per core.

An audit's probing is many small, independent sweeps (one per stage: feature sets that share a
width and probe families, see :func:`logitleak.probing.resume.probe_with_resume`). At audit sizes each
sweep's cost is mostly Python and small tensor operations, which one process runs on one core
whatever torch's thread count; separate processes use every core. Each worker runs one thread, so a
stage's results are the same whichever worker, and however many workers, computed it.

The workers are loky's (joblib's process pool): they start from a fresh interpreter and never
re-import the caller's main module, so probing in workers works from the command line, from a
script without an ``if __name__ == "__main__":`` guard, from standard input and from a notebook.
Where worker processes cannot start at all, the stages run in this process, one thread each (the
same results), and the audit says so. :func:`make_pool` is the one place the pool is chosen.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, wait

import pandas as pd

from logitleak.errors import LogitleakError, first_line
from logitleak.progress import make_progress

MAX_WORKERS = 4
"""The default never starts more workers than this (each holds its stage's features and torch)."""


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def stage_workers(setting: int | None, device: str | None) -> int:
    """Worker processes for probing: ``setting`` when given (0 = in this process); by default one
    per usable core up to :data:`MAX_WORKERS` when probing on the CPU with two or more cores, else 0
    (a GPU runs one sweep at a time in this process)."""
    if setting is not None:
        return int(setting)
    import torch

    on_gpu = (device or ("cuda" if torch.cuda.is_available() else "cpu")) != "cpu"
    cores = usable_cores()
    return 0 if on_gpu or cores < 2 else min(cores, MAX_WORKERS)


STAGE_WORK = 2**22
"""A stage's feature sets are split into even chunks of at most ``STAGE_WORK / (n x d)`` sets,
so wide levels of a real model (31 residual layers of width 576) are probed side by side instead
of in one process while the others wait. The split depends only on the sizes, never on the
worker count, so results and resumed runs do not either."""


def split_stage(keys: Sequence, n: int, d: int) -> list[list]:
    """``keys`` (feature sets of one width ``d``, ``n`` samples) as even consecutive chunks."""
    limit = max(1, STAGE_WORK // max(1, n * d))
    n_chunks = -(-len(keys) // limit)
    size = -(-len(keys) // max(1, n_chunks))
    return [list(keys[i: i + size]) for i in range(0, len(keys), size)]


_STARTED: dict[int, Executor] = {}
_WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "TOKENIZERS_PARALLELISM": "false"}


def _warm_up() -> None:
    import torch

    importlib.import_module("logitleak.probing.sweep")  # the imports are most of a worker's start
    torch.set_num_threads(1)


def make_pool(workers: int) -> Executor:
    """A pool of ``workers`` single-threaded probe processes (loky's: see the module docstring)."""
    from joblib.externals.loky import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=workers, timeout=300, initializer=_warm_up, env=dict(_WORKER_ENV))


def start_workers(workers: int) -> None:
    """Start ``workers`` probe processes now, so their imports overlap the capture; the next
    :func:`run_stages` with as many workers uses them (idle workers exit with this process). Where
    they cannot start, :func:`run_stages` finds out and probes here."""
    if workers > 0 and workers not in _STARTED:
        try:
            pool = make_pool(workers)
            for _ in range(workers):
                pool.submit(_warm_up)
        except (OSError, ImportError, RuntimeError):
            return
        _STARTED[workers] = pool


def run_stage(features: Mapping, labels: Mapping, kwargs: Mapping) -> pd.DataFrame:
    """One stage in a worker process (the local pool's or a Ray task's): one torch thread, so the same bits."""
    import torch

    from logitleak.probing.sweep import evaluate_sweep

    torch.set_num_threads(1)
    return evaluate_sweep(features, labels, **kwargs)


def stop_workers() -> None:
    """End the probe processes :func:`start_workers` started that no :func:`run_stages` took (a run
    that failed before probing), without waiting for their start-up, so the process exits at once."""
    while _STARTED:
        _, pool = _STARTED.popitem()
        try:
            pool.shutdown(wait=False, kill_workers=True)
        except TypeError:  # a pool without loky's kill_workers
            pool.shutdown(wait=False)


def run_in_process(stage: tuple[Mapping, Mapping], labels: Mapping, progress: bool) -> pd.DataFrame:
    """One stage in this process, on one torch thread as in a worker (so the results are the same)."""
    import torch

    before = torch.get_num_threads()
    try:
        features, kwargs = stage
        return run_stage(dict(features), labels, {**kwargs, "progress": progress})
    finally:
        torch.set_num_threads(before)


def run_stages(stages: Sequence[tuple[Mapping, Mapping]], labels: Mapping, *, workers: int, progress: bool,
               on_done: Callable[[int, pd.DataFrame], None]) -> str | None:
    """Run ``evaluate_sweep(features, labels, **kwargs)`` for every ``(features, kwargs)`` stage and
    call ``on_done(index, results)`` in this process as each one finishes (so finished stages are
    saved while others run). ``workers`` 0: one after another here, with ``progress`` per sweep;
    otherwise in that many single-threaded worker processes, with one progress line or bar for all.
    Returns a note when worker processes could not start and the stages ran here instead."""
    if workers <= 0:
        from logitleak.probing.sweep import evaluate_sweep

        for i, (features, kwargs) in enumerate(stages):
            on_done(i, evaluate_sweep(features, labels, **kwargs, progress=progress))
        return None
    n = min(workers, len(stages))
    if n == 0:
        return None
    finished: set[int] = set()
    try:
        pool = _STARTED.pop(workers, None) or make_pool(n)
        _in_pool(pool, stages, labels, n, progress, on_done, finished)
    except Exception as err:  # noqa: BLE001 - sorted below: a pool that never started, or one that broke
        if not _never_started(err, finished):
            raise _worker_failure(err) from None
        for i, stage in enumerate(stages):
            on_done(i, run_in_process(stage, labels, progress))
        return (f"Probe worker processes could not start ({type(err).__name__}: {first_line(err)}), so the stages "
                "were probed in this process, one thread each (the same results; slower on several cores).")
    return None


def _in_pool(pool: Executor, stages, labels, n: int, progress: bool, on_done, finished: set[int]) -> None:
    pending: dict = {}
    try:
        with make_progress(progress) as prog:
            task = prog.add_task(f"probing ({n} processes)", total=sum(len(f) for f, _ in stages))
            pending = {pool.submit(run_stage, dict(features), labels, {**kwargs, "progress": False}): i
                       for i, (features, kwargs) in enumerate(stages)}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in sorted(done, key=pending.get):  # in stage order: the same on every run
                    i = pending.pop(fut)
                    on_done(i, fut.result())
                    finished.add(i)
                    prog.advance(task, len(stages[i][0]))
    except BaseException:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=False)
        raise
    pool.shutdown(wait=True)


def _never_started(err: BaseException, finished: set[int]) -> bool:
    """A pool that failed before any stage finished, for a reason of the machine (no processes,
    no semaphores, a broken pool), not of the probing itself."""
    from concurrent.futures import BrokenExecutor

    return not finished and isinstance(err, (OSError, ImportError, BrokenExecutor)) and not isinstance(
        err, MemoryError)


def _worker_failure(err: BaseException) -> BaseException:
    """A worker that died mid-way is one sentence; an error raised by the probing itself stays as it is."""
    from concurrent.futures import BrokenExecutor

    if isinstance(err, BrokenExecutor):
        return LogitleakError(f"A probe worker process stopped ({first_line(err)}), perhaps out of memory; the stages "
                              "that finished are saved, so rerun the same command to resume, with --probe-workers 0 "
                              "to probe in this process (less memory).")
    return err
