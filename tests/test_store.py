"""The activation store: round trip, atomic shards, interrupted extraction resumes identically."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from interrupts import Interrupt, interrupt_after
from tiny_models import probeset_for, tiny_model_dir

from logitleak.capture.forward import capture
from logitleak.capture.store import ActivationStore, StoredCapture
from logitleak.errors import LogitleakError
from logitleak.levels.features import build_features
from logitleak.models.loading import load_model

N, SHARD, BATCH = 11, 4, 3  # 3 shards, the last one short; batches straddle nothing


@pytest.fixture(scope="module")
def adapter():
    return load_model(tiny_model_dir("llava"), device="cpu")


@pytest.fixture(scope="module")
def probeset(adapter):
    return probeset_for(adapter, N, seed=11)


@pytest.fixture(scope="module")
def clean(adapter, probeset, tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    return ActivationStore(root).extract(adapter, probeset, shard_size=SHARD, batch_size=BATCH, progress=False)


def _stop(i, path):
    raise Interrupt


def _arrays(stored: StoredCapture):
    return [stored.layer(layer) for layer in range(stored.n_layers + 1)] + [stored.logits()]


def test_round_trip_matches_capture(adapter, probeset, clean):
    cap = capture(adapter, probeset, batch_size=BATCH, progress=False)
    assert len(clean) == N and clean.n_layers == adapter.n_layers
    for layer in range(adapter.n_layers + 1):
        x = clean.layer(layer)
        assert x.dtype == np.float32 and x.shape == (N, adapter.d_model)  # the store's CPU default
        # batches differ (shards cut them), so padding differs: equal up to rounding
        np.testing.assert_allclose(x.astype(np.float32), cap.hidden[:, layer].numpy(), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(clean.logits(), cap.logits.numpy(), rtol=1e-4, atol=1e-4)
    assert clean.logits().dtype == np.float32
    back = clean.to_capture()
    assert back.hidden.shape == (N, adapter.n_layers + 1, adapter.d_model) and back.hidden.dtype == torch.float32
    assert back.meta["model_fingerprint"] == adapter.fingerprint()


def test_layout_and_manifest(clean):
    files = sorted(p.name for p in clean.path.iterdir())
    assert files == ["manifest.json", "shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"]
    mf = json.loads((clean.path / "manifest.json").read_text())
    assert mf["complete"] and mf["n"] == N and [s["stop"] for s in mf["shards"]] == [4, 8, 11]
    assert clean.path.parent.name == mf["probeset_fingerprint"]


def test_interrupted_extraction_resumes_to_the_same_arrays(adapter, probeset, clean, tmp_path):
    store = ActivationStore(tmp_path)
    written: list[int] = []
    stop_after_two = interrupt_after(2, written)

    with pytest.raises(Interrupt):
        store.extract(adapter, probeset, shard_size=SHARD, batch_size=BATCH, progress=False, on_shard=stop_after_two)
    (path,) = [p.parent for p in tmp_path.rglob("manifest.json")]
    assert not json.loads((path / "manifest.json").read_text())["complete"]
    assert sorted(p.name for p in path.glob("shard-*")) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    with pytest.raises(LogitleakError, match="incomplete"):
        StoredCapture(path)

    resumed_shards = []
    # a different shard size on resume is ignored: the original sharding keeps the arrays identical
    stored = store.extract(adapter, probeset, shard_size=5, batch_size=2, progress=False,
                           on_shard=lambda i, p: resumed_shards.append(i))
    assert resumed_shards == [2]
    for a, b in zip(_arrays(stored), _arrays(clean)):
        np.testing.assert_array_equal(a, b)


def test_partial_and_corrupt_shards_are_redone(adapter, probeset, clean, tmp_path):
    store = ActivationStore(tmp_path)
    with pytest.raises(Interrupt):
        store.extract(adapter, probeset, shard_size=SHARD, batch_size=BATCH, progress=False,
                      on_shard=_stop)
    (path,) = [p.parent for p in tmp_path.rglob("manifest.json")]
    shard0 = path / "shard-00000.safetensors"
    shard0.write_bytes(shard0.read_bytes()[:100])  # a torn file (what a non-atomic write would leave)
    (path / ".shard-00001.safetensors.abc.tmp").write_bytes(b"half written")  # a killed writer's temp file
    redone = []
    stored = store.extract(adapter, probeset, shard_size=SHARD, batch_size=BATCH, progress=False,
                           on_shard=lambda i, p: redone.append(i))
    assert redone == [0, 1, 2]
    assert not list(path.glob("*.tmp"))
    for a, b in zip(_arrays(stored), _arrays(clean)):
        np.testing.assert_array_equal(a, b)


def test_finished_capture_is_reused_without_the_model(adapter, probeset, clean, monkeypatch):
    store = ActivationStore(clean.path.parents[2])

    def no_forward(*a, **k):
        raise AssertionError("the model ran again")

    monkeypatch.setattr(adapter.model, "forward", no_forward)
    again = store.extract(adapter, probeset, shard_size=SHARD, batch_size=BATCH, progress=False)
    assert again.path == clean.path


def test_open_finds_what_extract_stored_under_the_same_key(adapter, probeset, clean, tmp_path):
    store = ActivationStore(clean.path.parents[2])
    assert store.open(adapter, probeset).path == clean.path        # a VLM capture: the vision pooling is in its key
    other = ActivationStore(tmp_path)
    edited = other.extract(adapter, probeset, shard_size=SHARD, edit_hooks={1: lambda h: h}, edit_key="same",
                           hidden_dtype="float32", progress=False)
    assert other.open(adapter, probeset, edit_key="same", hidden_dtype="float32").path == edited.path
    with pytest.raises(LogitleakError):
        other.open(adapter, probeset, edit_key="another")        # nothing stored under that key


def test_keys_separate_settings(adapter, probeset, clean, tmp_path):
    store = ActivationStore(tmp_path)
    other = store.extract(adapter, probeset, shard_size=SHARD, read_position=-2, hidden_dtype="float16", progress=False)
    assert other.layer(0).dtype == np.float16
    assert other.path.name != clean.path.name
    assert other.path.parent.name == clean.path.parent.name  # same probe set
    with pytest.raises(LogitleakError, match="edit_key"):
        store.extract(adapter, probeset, edit_hooks={1: lambda h: h}, progress=False)
    with pytest.raises(LogitleakError, match="transform_key"):
        store.extract(adapter, probeset, logits_transform=lambda x: x, progress=False)


def test_levels_read_a_stored_capture_lazily(adapter, clean):
    readout = adapter.readout()
    kw = dict(levels=["residual", "logit_lens_topk", "logits", "topk_logprobs"], layers=[0, 2], ks=[1, 3])
    lazy = build_features(clean, readout, **kw)
    eager = build_features(clean.to_capture(), readout, **kw)
    assert lazy.keys() == eager.keys()
    for key in lazy:
        np.testing.assert_array_equal(lazy[key], eager[key])


def test_extraction_progress_in_a_log_counts_batches_not_shards(adapter, probeset, tmp_path, monkeypatch, capsys):
    """A log sees the count move within a shard (one shard here holds every sample), at least every interval."""
    import time

    import logitleak.capture.forward as capture_module
    import logitleak.progress as progress_module

    monkeypatch.setattr(progress_module, "LOG_INTERVAL_S", 0.15)
    real = capture_module.capture_inputs

    def slow(*a, **k):
        time.sleep(0.4)
        return real(*a, **k)

    monkeypatch.setattr(capture_module, "capture_inputs", slow)
    ActivationStore(tmp_path).extract(adapter, probeset, shard_size=N, batch_size=BATCH, progress=True)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("[extract]")]
    counts = {int(ln.split()[1].split("/")[0]) for ln in lines}
    assert {0, BATCH, 2 * BATCH, N} <= counts, lines         # batch by batch, though the shard is one
    assert lines[-1].startswith(f"[extract] {N}/{N}") and lines[-1].endswith("done")
