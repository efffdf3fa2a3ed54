"""Ray: probe stages as Ray tasks and data-parallel capture as Ray actors, on a local Ray instance
the test starts (2 CPUs). Results equal the local pool's and the local store's bit for bit; a Ray
worker killed mid-stage or mid-shard is retried to the same result, and past its retries the run
stops in one sentence and a rerun finishes it, equal to an uninterrupted run."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time

import numpy as np
import pandas as pd
import psutil
import pytest
import torch
from interrupts import Interrupt, interrupt_after
from tiny_models import probeset_for, tiny_model_dir

ray = pytest.importorskip("ray")

from logitleak.capture import ray_capture  # noqa: E402
from logitleak.capture.ray_capture import ray_writer, replica_count  # noqa: E402
from logitleak.capture.store import ActivationStore  # noqa: E402
from logitleak.errors import LogitleakError  # noqa: E402
from logitleak.probing import ray_stages  # noqa: E402
from logitleak.probing.ray_stages import run_ray_stages  # noqa: E402
from logitleak.probing.stages import run_stages  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """A local Ray instance of 2 CPUs for this module (short temp path: Ray's socket paths are bounded)."""
    tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=tmp)
    yield
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture()
def single_thread():
    """The driver on one torch thread, as every Ray task and local worker is (equal bits)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _problem(n: int = 240, seed: int = 0):
    """Three widths of features, one of them carrying the label: (stages, labels)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    noise = rng.normal(size=(n, 24)).astype(np.float32)
    signal = noise.copy()
    signal[:, 0] += 4.0 * y
    feats = {("residual", 1, None): signal, ("residual", 2, None): noise,
             ("topk_logprobs", None, 5): rng.normal(size=(n, 5)).astype(np.float32),
             ("top1_prob", None, None): rng.random((n, 1)).astype(np.float32)}
    kw = dict(probes=["linear"], n_folds=3, n_bootstrap=50, seed=0, device="cpu")
    stages = [({k: feats[k]}, kw) for k in feats]
    return stages, {"a": y}


def _collect(runner, stages, labels, **kw) -> dict[int, pd.DataFrame]:
    out: dict[int, pd.DataFrame] = {}
    runner(stages, labels, progress=False, on_done=lambda i, df: out.__setitem__(i, df), **kw)
    return out


def test_ray_stages_equal_the_local_pool_bit_for_bit():
    stages, labels = _problem()
    local = _collect(run_stages, stages, labels, workers=2)
    remote = _collect(run_ray_stages, stages, labels, address="auto")
    assert sorted(remote) == sorted(local) == list(range(len(stages)))
    for i in local:
        pd.testing.assert_frame_equal(remote[i], local[i], check_exact=True)
    sig = local[0].iloc[0]
    assert sig["accuracy"] > 0.8 and sig["p_value"] < 1e-6  # the planted signal is read
    assert local[1].iloc[0]["p_value"] > 0.01               # the noise is not


def _ray_workers(title: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if title in " ".join(p.info["cmdline"] or [])]


def _kill_first(title: str, timeout: float = 240.0) -> threading.Thread:
    """In the background: kill -9 the first Ray worker whose process title shows ``title`` (Ray
    names a worker after the task it runs), as soon as one appears."""
    killed = []

    def hunt():
        end = time.time() + timeout
        while time.time() < end and not killed:
            for p in _ray_workers(title):
                p.kill()
                killed.append(p.pid)
                break
            time.sleep(0.05)

    t = threading.Thread(target=hunt, daemon=True)
    t.start()
    t.killed = killed
    return t


def _slow_stage():
    """One stage long enough to be caught running (a few seconds)."""
    rng = np.random.default_rng(1)
    n = 1500
    y = rng.integers(0, 4, n)
    x = rng.normal(size=(n, 96)).astype(np.float32)
    x[:, :4] += y[:, None] * 0.3
    return [({("residual", 3, None): x}, dict(probes=["linear"], n_folds=5, n_bootstrap=200, seed=0,
                                              device="cpu"))], {"a": y}


def test_a_ray_worker_killed_mid_stage_is_retried_to_the_same_result():
    stages, labels = _slow_stage()
    want = _collect(run_stages, stages, labels, workers=1)
    hunter = _kill_first("ray::run_stage")
    got = _collect(run_ray_stages, stages, labels, address="auto")
    hunter.join(1)
    assert hunter.killed, "no Ray worker was caught running the stage"
    pd.testing.assert_frame_equal(got[0], want[0], check_exact=True)


def test_past_its_retries_the_run_stops_in_one_sentence_and_a_rerun_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    from logitleak.probing.resume import probe_with_resume
    from logitleak.config import make_config
    from logitleak.data import make_shapes

    ps = make_shapes(300, seed=4)
    rng = np.random.default_rng(2)
    y = ps.labels("color")
    codes = np.unique(y, return_inverse=True)[1]
    feats = {("residual", layer, None): (rng.normal(size=(300, 64)) + 0.5 * codes[:, None] * (layer == 1))
             .astype(np.float32) for layer in range(3)}
    feats[("topk_logprobs", None, 5)] = rng.normal(size=(300, 5)).astype(np.float32)
    base = {"task": "color", "attributes": ["color", "shape"],
            "probes": {"families": ["linear"], "bootstrap": 100, "folds": 3, "workers": 1}}
    plain = probe_with_resume(feats, ps, make_config(base), tmp_path / "plain", ["color", "shape"], progress=False)

    monkeypatch.setattr(ray_stages, "RETRIES", 0)
    cfg = make_config({**base, "ray": "auto"})
    hunter = _kill_first("ray::run_stage")
    with pytest.raises(LogitleakError) as err:
        probe_with_resume(feats, ps, cfg, tmp_path / "ray", ["color", "shape"], progress=False)
    hunter.join(1)
    assert hunter.killed
    assert str(err.value).startswith("A Ray worker died while probing stage ")
    assert str(err.value).endswith("and Ray's retries ran out (WorkerCrashedError); rerun the same command: finished "
                                   "work is kept and only the rest is redone.")
    again = probe_with_resume(feats, ps, cfg, tmp_path / "ray", ["color", "shape"], progress=False)
    pd.testing.assert_frame_equal(again, plain, check_exact=True)


# ----------------------------------------------------------------------------- data-parallel capture

N, SHARD = 10, 3  # 4 shards, the last one short


@pytest.fixture(scope="module")
def model():
    from logitleak.models.loading import load_model

    path = tiny_model_dir("llama", n_layers=3)
    return path, load_model(path, device="cpu")


def _arrays(stored):
    return [stored.layer(layer) for layer in range(stored.n_layers + 1)] + [stored.logits()]


def test_replicas_write_the_shards_of_one_store_equal_to_a_local_extraction(model, tmp_path, single_thread):
    path, adapter = model
    ps = probeset_for(adapter, N, seed=7)
    local = ActivationStore(tmp_path / "local").extract(adapter, ps, shard_size=SHARD, batch_size=2, progress=False)
    writer = ray_writer("auto", path, {"dtype": "float32"}, ps, adapter.fingerprint(), replicas=2)
    landed = []
    remote = ActivationStore(tmp_path / "ray").extract(adapter, ps, shard_size=SHARD, batch_size=2, progress=False,
                                                       writer=writer, on_shard=lambda i, p: landed.append(i))
    assert sorted(landed) == [0, 1, 2, 3]
    mf = json.loads((remote.path / "manifest.json").read_text())
    assert mf["complete"] and [s["index"] for s in mf["shards"]] == [0, 1, 2, 3]
    assert [s["stop"] for s in mf["shards"]] == [3, 6, 9, 10]
    assert all(len(s["sha256"]) == 64 and s["dtype"] == "float32" for s in mf["shards"])
    for a, b in zip(_arrays(remote), _arrays(local)):
        np.testing.assert_array_equal(a, b)


def test_an_interrupted_ray_capture_resumes_shard_by_shard(model, tmp_path, single_thread):
    path, adapter = model
    ps = probeset_for(adapter, N, seed=8)
    store = ActivationStore(tmp_path)
    first: list[int] = []
    stop_after_two = interrupt_after(2, first)

    def writer():
        return ray_writer("auto", path, {"dtype": "float32"}, ps, adapter.fingerprint(), replicas=2)

    with pytest.raises(Interrupt):
        store.extract(adapter, ps, shard_size=SHARD, batch_size=2, progress=False, writer=writer(), on_shard=stop_after_two)
    second = []
    resumed = store.extract(adapter, ps, shard_size=SHARD, batch_size=2, progress=False, writer=writer(),
                            on_shard=lambda i, p: second.append(i))
    assert len(second) == 2 and not set(second) & set(first)  # only the missing shards were written again
    clean = ActivationStore(tmp_path / "clean").extract(adapter, ps, shard_size=SHARD, batch_size=2, progress=False)
    for a, b in zip(_arrays(resumed), _arrays(clean)):
        np.testing.assert_array_equal(a, b)


def test_a_replica_killed_mid_shard_is_restarted_and_the_store_is_whole(model, tmp_path, single_thread, monkeypatch):
    path, adapter = model
    ps = probeset_for(adapter, 40, seed=9)
    clean = ActivationStore(tmp_path / "clean").extract(adapter, ps, shard_size=10, batch_size=2, progress=False)
    hunter = _kill_first("ray::Replica.write")
    writer = ray_writer("auto", path, {"dtype": "float32"}, ps, adapter.fingerprint(), replicas=1)
    stored = ActivationStore(tmp_path / "ray").extract(adapter, ps, shard_size=10, batch_size=2, progress=False,
                                                       writer=writer)
    hunter.join(1)
    assert hunter.killed
    for a, b in zip(_arrays(stored), _arrays(clean)):
        np.testing.assert_array_equal(a, b)


def test_a_replica_with_other_model_files_is_refused_in_one_sentence(model, tmp_path):
    path, adapter = model
    other = tiny_model_dir("llama", n_layers=3, seed=1)
    ps = probeset_for(adapter, 4, seed=1)
    writer = ray_writer("auto", other, {"dtype": "float32"}, ps, adapter.fingerprint(), replicas=1)
    with pytest.raises(LogitleakError, match=r"^The Ray worker loaded another model from '.+' \(fingerprint \w+, the "
                                             r"driver's \w+\); give every node the same model files at the same path\.$"):
        ActivationStore(tmp_path).extract(adapter, ps, shard_size=2, progress=False, writer=writer)


def test_replica_count_follows_the_cluster():
    assert replica_count({"CPU": 16.0, "GPU": 8.0}, jobs=100) == (8, True)
    assert replica_count({"CPU": 16.0}, jobs=100) == (16, False)
    assert replica_count({"CPU": 16.0, "GPU": 8.0}, jobs=3) == (3, True)
    assert replica_count({"CPU": 2.0}, jobs=10, replicas=5) == (5, False)


def test_without_ray_installed_the_flag_says_how_to_get_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(LogitleakError, match=r"^--ray auto needs Ray, which is not installed; install it with "
                                             r"pip install 'logitleak\[ray\]'\.$"):
        ray_capture.connect("auto")


def test_the_audit_on_ray_equals_the_audit_without(tmp_path, single_thread):
    from logitleak.audit import run_audit
    from logitleak.config import make_config

    base = {"model": str(tiny_model_dir("llava")), "samples": 90, "task": "shape", "k": [1, 5],
            "attributes": ["shape", "size"], "shard_size": 16,
            "levels": ["vision", "image_residual", "residual", "topk_ids", "topk_logprobs"],
            "probes": {"families": ["linear"], "bootstrap": 50, "folds": 3, "workers": 2}}
    plain = run_audit(make_config({**base, "out": str(tmp_path / "plain")}), progress=False)
    on_ray = run_audit(make_config({**base, "out": str(tmp_path / "ray"), "ray": "auto"}), progress=False)
    assert len(plain.results) > 20 and {"vision", "image_residual"} <= set(plain.results["level"])
    pd.testing.assert_frame_equal(on_ray.results, plain.results, check_exact=True)
