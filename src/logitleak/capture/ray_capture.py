"""The audit's capture into the store: here, or under ``--ray`` by model replicas writing its shards.

:func:`audit_capture` extracts with the audit's settings. ``--ray ADDRESS`` (``auto``: the cluster
this machine belongs to; ``local``: start one here; or ``host:port`` / ``ray://host:port``) hands
the missing shards to Ray actors, one model replica per GPU (per CPU without GPUs). Each loads the
same model (its fingerprint must equal the driver's), takes one missing shard at a time and writes
it with :func:`~logitleak.capture.store.write_shard`, exactly as a local extraction would, into the
store directory, which every node must see at the same path (a shared filesystem). The driver
merges their checksums into the one manifest as each shard lands, so an interrupted run resumes
shard by shard. A replica that dies loses only the shard it was writing: Ray restarts it and that
shard is written again. Without ``--ray`` the shards are written here, as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from logitleak.capture.store import ActivationStore, ShardJob, ShardSpec, ShardWriter, write_shard
from logitleak.capture.stored import StoredCapture
from logitleak.errors import LogitleakError, first_line

if TYPE_CHECKING:
    from logitleak.config import AuditConfig
    from logitleak.data.probeset import ProbeSet
    from logitleak.models.adapter import ModelAdapter

RETRIES = 2
"""How often Ray restarts a replica that died (and re-runs the shard it was writing)."""
INSTALL = "pip install 'logitleak[ray]'"


def connect(address: str) -> None:
    """Join the Ray cluster at ``address`` once per process (``local``: start one on this machine);
    one sentence when Ray is missing or nothing answers there."""
    try:
        import ray
    except ImportError:
        raise LogitleakError(f"--ray {address} needs Ray, which is not installed; install it with {INSTALL}.") from None
    if ray.is_initialized():
        return
    local = address == "local"
    if address not in ("auto", "local"):
        _check_reachable(address)  # Ray itself would retry an address where nothing listens for many minutes
    try:
        ray.init(address=None if local else address, log_to_driver=False,
                 **({"include_dashboard": False} if local else {}))
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise LogitleakError(f"--ray {address}: no Ray cluster answered ({first_line(exc)}); start one "
                             "with `ray start --head`, or pass --ray local to start one on this machine.") from None


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """One sentence when nothing accepts connections at ``host:port`` (``ray://`` too)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        raise LogitleakError(f"--ray {address}: no Ray cluster answered ({first_line(exc)}); start one with "
                             "`ray start --head`, or pass --ray local to start one on this machine.") from None


def task_error(exc: BaseException, what: str) -> BaseException:
    """A Ray failure as the user should see it: the task's own one-sentence error unchanged, a dead
    worker as one sentence naming ``what`` it was doing; anything else as it is."""
    import ray

    cause = getattr(exc, "cause", None)
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(cause, LogitleakError):
        return LogitleakError(str(cause))
    if isinstance(exc, (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                        ray.exceptions.NodeDiedError)):
        return LogitleakError(f"A Ray worker died while {what} and Ray's retries ran out ({type(exc).__name__}); "
                              "rerun the same command: finished work is kept and only the rest is redone.")
    return exc


class Replica:
    """One model replica on a Ray worker: loads the model on its first shard, then writes shards on
    request (loading inside a task, not the actor's constructor, so a failure reads as one sentence)."""

    def __init__(self, model_path: str, load: Mapping, probeset: ProbeSet, fingerprint: str) -> None:
        self.model_path, self.load, self.probeset, self.fingerprint = model_path, dict(load), probeset, fingerprint
        self.adapter = None

    def write(self, path: str, job: ShardJob, spec: ShardSpec) -> tuple[int, dict]:
        if self.adapter is None:
            from logitleak.models.loading import load_model

            adapter = load_model(self.model_path, **self.load)
            if adapter.fingerprint() != self.fingerprint:
                raise LogitleakError(f"The Ray worker loaded another model from {self.model_path!r} (fingerprint "
                                     f"{adapter.fingerprint()}, the driver's {self.fingerprint}); give every node the "
                                     "same model files at the same path.")
            self.adapter = adapter
        i, start, stop = job
        return i, write_shard(Path(path), i, self.adapter, self.probeset, start, stop, spec)


def replica_count(resources: Mapping[str, float], jobs: int, replicas: int | None = None) -> tuple[int, bool]:
    """``(replicas, on_gpu)``: ``replicas`` when given, else one per GPU of the cluster, or with no
    GPU one per CPU; never more than there are shards to write."""
    gpus = int(resources.get("GPU", 0))
    n = replicas or gpus or int(resources.get("CPU", 1))
    return max(1, min(n, jobs)), gpus > 0


def ray_writer(address: str, model_path: str | Path, load: Mapping, probeset: ProbeSet, fingerprint: str,
               replicas: int | None = None) -> ShardWriter:
    """A :data:`~logitleak.capture.store.ShardWriter` whose shards are written by Ray actors, each
    holding one replica of the model at ``model_path`` (``load``: :func:`load_model` options; the
    device is the actor's GPU, or ``cpu``)."""
    def write(path: Path, jobs: list[ShardJob], spec: ShardSpec) -> Iterator[tuple[int, dict]]:
        if not jobs:
            return
        connect(address)
        import ray

        n, on_gpu = replica_count(ray.cluster_resources(), len(jobs), replicas)
        actor = ray.remote(num_cpus=1, num_gpus=1 if on_gpu else 0, max_restarts=RETRIES,
                           max_task_retries=RETRIES)(Replica)
        options = {**load, "device": "cuda" if on_gpu else "cpu"}
        data = ray.put(probeset)
        actors = [actor.remote(str(model_path), options, data, fingerprint) for _ in range(n)]
        queue = list(jobs)
        running = {}
        try:
            for a in actors:
                if queue:
                    job = queue.pop(0)
                    running[a.write.remote(str(path), job, spec)] = (a, job)
            while running:
                done, _ = ray.wait(list(running), num_returns=1)
                for ref in done:
                    a, job = running.pop(ref)
                    try:
                        i, record = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - converted to one sentence, or re-raised as it is
                        raise task_error(exc, f"writing shard {job[0]}") from None
                    if queue:
                        nxt = queue.pop(0)
                        running[a.write.remote(str(path), nxt, spec)] = (a, nxt)
                    yield i, record
        finally:
            for a in actors:
                ray.kill(a)
    return write


def audit_capture(cfg: AuditConfig, root: Path, model_path: str | Path, adapter: ModelAdapter, probeset: ProbeSet,
                  progress: bool = True) -> StoredCapture:
    """The audit's stored capture of ``probeset`` under ``root``, with the audit's settings: its
    missing shards written here or, under ``--ray`` (``cfg.ray``), by replicas that load the driver's
    model from the same files in the same dtype."""
    writer = None
    if cfg.ray:
        load = {"dtype": str(adapter.dtype).removeprefix("torch."), "allow_pickle": cfg.allow_pickle}
        writer = ray_writer(cfg.ray, model_path, load, probeset, adapter.fingerprint())
    return ActivationStore(root).extract(adapter, probeset, batch_size=cfg.batch_size, shard_size=cfg.shard_size,
                                         progress=progress, vision_pool=cfg.vision_pool, generate=cfg.generate,
                                         gen_k=max(cfg.k), hidden_dtype=cfg.store_dtype, writer=writer)
