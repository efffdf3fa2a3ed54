"""The store's declared dtype: float16 / bfloat16 / float32 round trips, the dtype named beside each
shard's checksum and enforced on reading and resuming, overflow refused, and float16 storage
changing no decision of the organism's audit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import probeset_for, tiny_model_dir

from logitleak.capture.forward import capture
from logitleak.capture.store import ActivationStore, store_dtype_for
from logitleak.capture.stored import StoredCapture
from logitleak.errors import LogitleakError
from logitleak.integrity import file_record
from logitleak.levels.features import build_features
from logitleak.models.loading import load_model

N, SHARD, BATCH = 8, 3, 3  # shards and batches line up: the same padding as one capture


@pytest.fixture(scope="module")
def adapter():
    return load_model(tiny_model_dir("llama"), device="cpu")


@pytest.fixture(scope="module")
def probeset(adapter):
    return probeset_for(adapter, N, seed=3)


@pytest.fixture(scope="module")
def reference(adapter, probeset):
    """The in-memory capture in float32, batched as the store batches it."""
    return capture(adapter, probeset, batch_size=BATCH, progress=False)


def test_default_store_dtype_follows_the_device():
    assert store_dtype_for(None, "cpu") == "float32"
    assert store_dtype_for(None, torch.device("cuda", 1)) == "float16"
    assert store_dtype_for("bfloat16", "cpu") == "bfloat16"
    with pytest.raises(LogitleakError, match=r"^Store dtype 'int8' is not supported; pass --store-dtype "
                                             r"float16 \| bfloat16 \| float32\.$"):
        store_dtype_for("int8", "cpu")


@pytest.mark.parametrize("dtype, torch_dtype, np_dtype", [("float16", torch.float16, np.float16),
                                                           ("bfloat16", torch.bfloat16, np.float32),
                                                           ("float32", torch.float32, np.float32)])
def test_round_trip_in_the_declared_dtype(adapter, probeset, reference, tmp_path, dtype, torch_dtype, np_dtype):
    stored = ActivationStore(tmp_path).extract(adapter, probeset, shard_size=SHARD, batch_size=BATCH,
                                               hidden_dtype=dtype, progress=False)
    mf = json.loads((stored.path / "manifest.json").read_text())
    assert stored.store_dtype == dtype and mf["store_dtype"] == dtype
    assert [s["dtype"] for s in mf["shards"]] == [dtype] * 3 and all(len(s["sha256"]) == 64 for s in mf["shards"])
    raw = load_file(str(stored.path / mf["shards"][0]["file"]))
    assert raw["hidden.0"].dtype == torch_dtype and raw["logits"].dtype == torch.float32
    for layer in range(adapter.n_layers + 1):
        x = stored.layer(layer)
        assert x.dtype == np_dtype and x.shape == (N, adapter.d_model)
        # exactly the float32 capture rounded once to the store dtype (the same batches)
        want = reference.hidden[:, layer].to(torch_dtype).float().numpy()
        np.testing.assert_array_equal(x.astype(np.float32), want)
    np.testing.assert_array_equal(stored.logits(), reference.logits.numpy())


def test_float16_residual_features_stay_float16_and_exact(adapter, probeset, tmp_path):
    stored = ActivationStore(tmp_path).extract(adapter, probeset, shard_size=SHARD, batch_size=BATCH,
                                               hidden_dtype="float16", progress=False)
    feats = build_features(stored, adapter.readout(), levels=["residual", "pca", "topk_logprobs"], layers=[1], ks=[2],
                           pca_dims=[1, 2])
    res = feats[("residual", 1, None)]
    assert res.dtype == np.float16 and feats[("topk_logprobs", None, 2)].dtype == np.float32
    assert feats[("pca", 1, 2)] is res  # one array for the residual and its PCA levels: one SVD per fold
    np.testing.assert_array_equal(res, stored.layer(1))


def _rewrite_shard_as_float32(stored: StoredCapture) -> None:
    """Shard 0 rewritten with float32 states, its checksum updated: a store mixing dtypes."""
    mf_path = stored.path / "manifest.json"
    mf = json.loads(mf_path.read_text())
    f = stored.path / mf["shards"][0]["file"]
    tensors = {k: (v.float() if k.startswith("hidden.") else v) for k, v in load_file(str(f)).items()}
    save_file(tensors, str(f), metadata={"start": "0", "stop": str(SHARD), "index": "0"})
    mf["shards"][0].update(file_record(f))
    mf_path.write_text(json.dumps(mf))


def test_a_shard_in_another_dtype_is_refused_and_recomputed(adapter, probeset, tmp_path):
    store = ActivationStore(tmp_path)
    stored = store.extract(adapter, probeset, shard_size=SHARD, batch_size=BATCH, hidden_dtype="float16", progress=False)
    good = stored.layer(2).copy()
    _rewrite_shard_as_float32(stored)
    shard = stored.path / "shard-00000.safetensors"
    with pytest.raises(LogitleakError) as err:
        StoredCapture(stored.path).layer(2)
    assert str(err.value) == (f"Shard {shard} holds hidden.2 as F32, but the manifest declares float16; rerun the "
                              "extraction (the same command) to recompute the capture.")
    mf = json.loads((stored.path / "manifest.json").read_text())
    mf["complete"] = False  # as if the run had stopped: resuming checks every recorded shard
    (stored.path / "manifest.json").write_text(json.dumps(mf))
    again = store.extract(adapter, probeset, shard_size=SHARD, batch_size=BATCH, hidden_dtype="float16", progress=False)
    assert load_file(str(shard))["hidden.2"].dtype == torch.float16
    np.testing.assert_array_equal(again.layer(2), good)


def test_float16_overflow_is_refused_with_the_layer_and_the_fix(adapter, probeset, tmp_path):
    huge = {2: lambda h: h * 1e6}  # states far beyond float16's 65,504 from layer 2 on
    with pytest.raises(LogitleakError) as err:
        ActivationStore(tmp_path).extract(adapter, probeset, shard_size=SHARD, batch_size=BATCH, hidden_dtype="float16",
                                          edit_hooks=huge, edit_key="x1e6", progress=False)
    assert str(err.value) == ("Hidden states at layer 2 (samples from 0) exceed float16's range (65,504); pass "
                              "--store-dtype bfloat16 or float32.")
    ok = ActivationStore(tmp_path).extract(adapter, probeset, shard_size=SHARD, batch_size=BATCH, hidden_dtype="bfloat16",
                                           edit_hooks=huge, edit_key="x1e6", progress=False)
    assert np.isfinite(ok.layer(2)).all() and np.abs(ok.layer(2)).max() > 65504


def _where(row):
    return None if row is None else (row["level"], row["layer"], row["k"], row["probe"])


def assert_same_calls(full, half) -> None:
    """The audit's calls on a float32 store (``full``) and a float16 one (``half``) agree:

    * every API-level decision (status, readable, leak, smallest k, strongest and first reading);
    * the strongest internal readings (best inside, residual and lens rows) pick the same row, or
      rows tied within the interval: the float16 pick's bits (float32 run) reach the float32 pick's
      interval;
    * every row's bits move by less than its interval's width, and a row changes its readable call
      only where its p-value sat near alpha (within a factor of 10), at most 2% of rows.
    """
    from logitleak.decisions import decide
    from logitleak.decisions.rules import annotate

    d32, d16 = decide(full), decide(half)
    assert d16.status == d32.status
    best = d32.best.set_index(["level", "layer", "k", "attribute", "probe"])
    for attr, a in d32.attributes.items():
        b = d16.attributes[attr]
        assert (b.readable, b.leak, b.smallest_k, _where(b.strongest), _where(b.first)) == \
               (a.readable, a.leak, a.smallest_k, _where(a.strongest), _where(a.first)), attr
        for pick in ("inside", "residual", "tuned"):
            ra, rb = getattr(a, pick), getattr(b, pick)
            if _where(ra) != _where(rb):
                tied = best.loc[(*_where(rb)[:3], attr, _where(rb)[3])]
                assert tied["v_info_bits"] >= ra["v_info_ci_low"], (attr, pick, _where(ra), _where(rb))
    keys = ["level", "layer", "k", "attribute", "probe"]
    both = annotate(full).merge(annotate(half), on=keys, suffixes=("_32", "_16"))
    assert len(both) == len(full) == len(half)
    width = both["v_info_ci_high_32"] - both["v_info_ci_low_32"]
    moved = (both["v_info_bits_32"] - both["v_info_bits_16"]).abs()
    assert (moved < width).all(), both.loc[moved >= width, keys + ["v_info_bits_32", "v_info_bits_16"]]
    assert moved.max() > 0  # float16 did change the hidden-state features: the comparison is not vacuous
    flipped = both[both["readable_32"] != both["readable_16"]]
    edge = flipped[["p_used_32", "p_used_16"]].apply(lambda p: ((p > 0.005) & (p < 0.5)).any(), axis=1)
    assert edge.all(), flipped[keys + ["p_used_32", "p_used_16"]].to_string()
    assert len(flipped) <= 0.02 * len(both)


@pytest.mark.slow
def test_float16_storage_changes_no_decision_on_the_organism(organism_dir, tmp_path, one_thread):
    from logitleak.audit import run_audit
    from logitleak.config import make_config

    def audit(dtype: str):
        cfg = make_config({"model": "organism", "samples": 300, "seed": 0, "store_dtype": dtype,
                           "out": str(tmp_path / dtype), "k": [5], "pca_dims": [4],
                           "levels": ["vision", "projector", "image_residual", "residual", "pca", "logit_lens_topk",
                                      "tuned_lens_topk", "topk_ids"],
                           "attributes": ["color", "shape", "size", "position", "background"],
                           "probes": {"families": ["linear"], "bootstrap": 200, "workers": 1},
                           "lens": {"steps": 20}})
        result = run_audit(cfg, progress=False)
        mf = next((tmp_path / dtype / "cache" / "captures").rglob("manifest.json"))
        assert json.loads(mf.read_text())["store_dtype"] == dtype
        return result.results

    full, half = audit("float32"), audit("float16")
    assert len(full) >= 150 and {"residual", "pca", "image_residual", "vision", "tuned_lens_topk"} <= set(full["level"])
    assert_same_calls(full, half)
