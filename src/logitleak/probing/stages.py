"""Probe stages side by side: independent sweeps run in single-threaded worker processes, one per core.

An audit's probing is many small, independent sweeps (one per stage: feature sets that share a
width and probe families, see :func:`logitleak.probing.resume.probe_with_resume`). At audit sizes each
sweep's cost is mostly Python and small tensor operations, which one process runs on one core
whatever torch's thread count; separate processes use every core. Each worker runs one thread, so a
stage's results are the same whichever worker, and however many workers, computed it.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

import pandas as pd

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


_STARTED: dict[int, ProcessPoolExecutor] = {}


def _new_pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def _warm_up() -> None:
    import torch

    importlib.import_module("logitleak.probing.sweep")  # the imports are most of a worker's start
    torch.set_num_threads(1)


def start_workers(workers: int) -> None:
    """Start ``workers`` probe processes now, so their imports overlap the capture; the next
    :func:`run_stages` with as many workers uses them (idle workers exit with this process)."""
    if workers > 0 and workers not in _STARTED:
        pool = _new_pool(workers)
        for _ in range(workers):
            pool.submit(_warm_up)
        _STARTED[workers] = pool


def _run_stage(features: Mapping, labels: Mapping, kwargs: Mapping) -> pd.DataFrame:
    import torch

    from logitleak.probing.sweep import evaluate_sweep

    torch.set_num_threads(1)
    return evaluate_sweep(features, labels, **kwargs)


def run_stages(stages: Sequence[tuple[Mapping, Mapping]], labels: Mapping, *, workers: int, progress: bool,
               on_done: Callable[[int, pd.DataFrame], None]) -> None:
    """Run ``evaluate_sweep(features, labels, **kwargs)`` for every ``(features, kwargs)`` stage and
    call ``on_done(index, results)`` in this process as each one finishes (so finished stages are
    saved while others run). ``workers`` 0: one after another here, with ``progress`` per sweep;
    otherwise in that many spawned single-threaded processes, with one progress line or bar for all."""
    if workers <= 0:
        from logitleak.probing.sweep import evaluate_sweep

        for i, (features, kwargs) in enumerate(stages):
            on_done(i, evaluate_sweep(features, labels, **kwargs, progress=progress))
        return
    n = min(workers, len(stages))
    if n == 0:
        return
    pool = _STARTED.pop(workers, None) or _new_pool(n)
    try:
        with make_progress(progress) as prog:
            task = prog.add_task(f"probing ({n} processes)", total=sum(len(f) for f, _ in stages))
            pending = {pool.submit(_run_stage, dict(features), labels, {**kwargs, "progress": False}): i
                       for i, (features, kwargs) in enumerate(stages)}
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    i = pending.pop(fut)
                    on_done(i, fut.result())
                    prog.advance(task, len(stages[i][0]))
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
