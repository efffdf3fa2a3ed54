"""Probe stages as Ray tasks: the local pool's single-threaded stages, scheduled across a Ray cluster.

``--ray ADDRESS`` sends each probe stage (:func:`logitleak.probing.stages.run_stage`, the function
the local worker processes run) to Ray as one task of one CPU. Every task runs one torch thread,
as a local worker does, so its results equal the local pool's bit for bit, whichever node ran it.
Stages are saved by the caller as each one finishes; a worker that dies mid-stage is retried by Ray
(``RETRIES`` times), and past that the run stops with one sentence and a rerun redoes only the
stages that were not saved.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pandas as pd

from logitleak.capture.ray_capture import connect, task_error
from logitleak.probing.stages import run_stage, run_stages
from logitleak.progress import make_progress

RETRIES = 3
"""How often Ray re-runs a stage whose worker died (its own default for tasks)."""


def run_ray_stages(stages: Sequence[tuple[Mapping, Mapping]], labels: Mapping, *, address: str, progress: bool,
                   on_done: Callable[[int, pd.DataFrame], None], retries: int | None = None) -> None:
    """:func:`~logitleak.probing.stages.run_stages` on the Ray cluster at ``address``: every
    ``(features, kwargs)`` stage one task, ``on_done(index, results)`` here as each finishes."""
    if not stages:
        return
    connect(address)
    import ray

    task = ray.remote(num_cpus=1, max_retries=RETRIES if retries is None else retries)(run_stage)
    shared = ray.put(dict(labels))
    pending = {task.remote(dict(features), shared, {**kwargs, "progress": False}): i
               for i, (features, kwargs) in enumerate(stages)}
    try:
        with make_progress(progress) as prog:
            bar = prog.add_task(f"probing (Ray, {len(stages)} stages)", total=sum(len(f) for f, _ in stages))
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    i = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - converted to one sentence, or re-raised as it is
                        raise task_error(exc, f"probing stage {i + 1} of {len(stages)}") from None
                    on_done(i, result)
                    prog.advance(bar, len(stages[i][0]))
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)


def run_stages_with(ray: str | None, stages: Sequence[tuple[Mapping, Mapping]], labels: Mapping, *, workers: int,
                    progress: bool, on_done: Callable[[int, pd.DataFrame], None]) -> str | None:
    """The probe stages on the Ray cluster at ``ray``, or without it in this machine's worker
    processes (:func:`~logitleak.probing.stages.run_stages`, whose note it returns): the same results
    either way."""
    if ray:
        run_ray_stages(stages, labels, address=ray, progress=progress, on_done=on_done)
        return None
    return run_stages(stages, labels, workers=workers, progress=progress, on_done=on_done)
