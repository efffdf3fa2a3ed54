"""One capture interface (in memory or on disk) and one table of levels that the features follow."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import probeset_for, tiny_model_dir

from logitleak.capture.forward import Capture
from logitleak.capture.source import CaptureSource
from logitleak.capture.store import ActivationStore
from logitleak.capture.stored import StoredCapture
from logitleak.errors import LogitleakError
from logitleak.levels.features import available_levels, build_features
from logitleak.levels.table import BY_NAME, ENDPOINT_LEVELS, LEVELS, RESPONSE_LEVELS, TABLE, TRANSITION_LEVELS
from logitleak.models.loading import load_model

N = 9


@pytest.fixture(scope="module")
def adapter():
    return load_model(tiny_model_dir("llava"), device="cpu")


@pytest.fixture(scope="module")
def stored(adapter, tmp_path_factory):
    probeset = probeset_for(adapter, N, seed=5)
    return ActivationStore(tmp_path_factory.mktemp("src")).extract(adapter, probeset, shard_size=4, batch_size=3,
                                                                 progress=False)


@pytest.fixture
def reads(monkeypatch):
    """Names of the arrays a stored capture reads from disk, in order."""
    seen: list[str] = []
    original = StoredCapture._read

    def counting(self, name):
        seen.append(name)
        return original(self, name)

    monkeypatch.setattr(StoredCapture, "_read", counting)
    return seen


def test_both_kinds_give_the_same_reads(stored):
    mem = stored.to_capture()
    assert isinstance(stored, CaptureSource) and isinstance(mem, CaptureSource)
    assert stored.contents == mem.contents and {"hidden", "logits", "vision"} <= stored.contents
    assert stored.n_vision_states == mem.n_vision_states > 0
    for layer in (0, stored.n_layers):
        a, b = stored.read_hidden(layer), mem.read_hidden(layer)
        assert a.dtype == b.dtype == torch.float32 and a.shape == (N, stored.d_model)
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(stored.read_logits(), mem.read_logits())
    for name in ("vision.0", "projector", f"image.{stored.n_layers}"):
        np.testing.assert_array_equal(stored.read_extra(name), mem.read_extra(name))
    assert stored.read_api_topk() is None and mem.read_api_topk() is None
    with pytest.raises(LogitleakError, match="does not exist"):
        mem.read_hidden(stored.n_layers + 1)


def test_stored_logits_are_read_once_per_build(stored, reads):
    levels = ["logits", "topk_ids", "topk_logprobs", "topk_logits", "top1_prob"]
    feats = build_features(stored, None, levels=levels, layers=[], ks=[1, 3])
    assert reads.count("logits") == 1
    assert {key[0] for key in feats} == set(levels)
    reads.clear()
    build_features(stored, None, levels=["residual"], layers=[1], ks=[])
    assert "logits" not in reads and reads == ["hidden.1"]


def test_available_levels_reads_no_array(stored, reads, adapter):
    have = available_levels(stored, lens=object(), answer_token_ids=[1, 2])
    assert reads == []
    expected = [lv for lv in LEVELS if lv not in RESPONSE_LEVELS]  # everything but the response
    assert have == expected


def test_black_box_capture_holds_only_what_an_api_returns():
    lp = torch.log_softmax(torch.randn(6, 4), -1).sort(-1, descending=True).values
    cap = Capture(topk_logprobs=lp, topk_ids=torch.randint(0, 50, (6, 4)))
    assert cap.contents == {"api_topk", "api_ids"}
    assert available_levels(cap) == [lv for lv in ENDPOINT_LEVELS if lv not in RESPONSE_LEVELS]
    with pytest.raises(LogitleakError, match="black-box"):
        cap.read_hidden(0)
    no_ids = Capture(topk_logprobs=lp, topk_ids=torch.full((6, 4), -1))
    assert "topk_ids" not in available_levels(no_ids) and "topk_logprobs" in available_levels(no_ids)


def test_feature_keys_follow_the_table(stored, adapter):
    """Every level's keys carry a layer exactly when the table gives it an axis, and a k exactly
    when the table says it is a top-k level (pca's k is its dimension)."""
    levels = [lv for lv in available_levels(stored, answer_token_ids=[3, 4]) if lv not in TRANSITION_LEVELS]
    feats = build_features(stored, adapter.readout(), levels=levels, layers=[0, 2], ks=[2], answer_token_ids=[3, 4],
                           pca_dims=[2])
    assert {key[0] for key in feats} == set(levels)
    for (level, layer, k), x in feats.items():
        row = BY_NAME[level]
        assert (layer is not None) == (row.axis is not None), level
        assert (k is not None) == (row.k or row.fold), level
        assert x.shape[0] == N and x.dtype == np.float32
    assert [lv.name for lv in TABLE] == list(LEVELS) and len(set(LEVELS)) == len(LEVELS)
