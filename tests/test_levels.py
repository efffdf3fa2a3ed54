"""The representational levels: shapes, sortedness, agreement with torch ground truth, the
black-box path, and the readout reproducing the model's logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import probeset_for, tiny_model_dir

from logitleak.capture.forward import Capture, capture
from logitleak.errors import LogitleakError
from logitleak.levels.features import (
    available_levels,
    build_features,
    lens_logits,
    logit_lens,
    residual,
    topk_ids_matrix,
)
from logitleak.levels.lens import TunedLens
from logitleak.levels.table import API_LEVELS, LEVELS
from logitleak.models.loading import load_model
from logitleak.models.readout import Readout

N, L, D, V = 12, 3, 8, 20
KS = [1, 2, 5]


@pytest.fixture(scope="module")
def synthetic():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(N, L + 1, D, generator=g) * 2
    norm = torch.nn.LayerNorm(D)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=g)
    readout = Readout(norm=norm, weight=torch.randn(V, D, generator=g), bias=torch.randn(V, generator=g))
    with torch.no_grad():
        logits = readout(hidden[:, L])
    # a VLM capture also holds the vision tower (2 blocks, width 6), the projector and the image positions;
    # a generated response (4 positions, top 5) fills the response levels
    G, K = 4, 5
    gen_hidden = torch.randn(N, G, L + 1, D, generator=g)
    with torch.no_grad():
        gen_top = torch.topk(torch.log_softmax(readout(gen_hidden[:, :, L]), -1), K)
    gen_mask = torch.ones(N, G, dtype=torch.bool)
    gen_mask[::3, 2:] = False
    return Capture(hidden=hidden, logits=logits, vision=torch.randn(N, 3, 6, generator=g),
                   projector=torch.randn(N, D, generator=g), image_hidden=torch.randn(N, L + 1, D, generator=g),
                   gen_hidden=gen_hidden, gen_topk_logprobs=gen_top.values, gen_topk_ids=gen_top.indices,
                   gen_tokens=gen_top.indices[:, :, 0], gen_mask=gen_mask), readout


ALL_WHITE_BOX = [lv for lv in LEVELS if lv not in ("tuned_lens_topk", "tuned_lens_answers")]


def test_every_level_and_shape(synthetic):
    cap, readout = synthetic
    answers = [3, 7, 11]
    lens = TunedLens(D, L, range(L), readout=readout)
    feats = build_features(cap, readout, levels=LEVELS, layers=[0, 2, L], ks=KS, lens=lens, answer_token_ids=answers,
                           pca_dims=[1, 4, D])
    assert {k[0] for k in feats} == set(LEVELS)
    for (level, layer, k), x in feats.items():
        assert x.dtype == np.float32 and x.shape[0] == N and x.ndim == 2
        assert (layer is None) == (level not in ("residual", "logit_lens_topk", "logit_lens_answers",
                                                 "tuned_lens_topk", "tuned_lens_answers", "vision",
                                                 "image_residual", "pca", "response_residual"))
        assert (k is None) == (level not in ("logit_lens_topk", "tuned_lens_topk", "topk_ids", "topk_logprobs",
                                             "topk_logits", "pca", "response_topk_ids", "response_topk_logprobs"))
        if level in ("logit_lens_topk", "tuned_lens_topk", "topk_logprobs", "topk_logits"):
            assert x.shape[1] == k
            assert np.all(np.diff(x, axis=1) <= 0), f"{level} not sorted descending"
    assert feats[("residual", 2, None)].shape == (N, D)
    assert {key[1] for key in feats if key[0] == "vision"} == {0, 1, 2} and feats[("vision", 2, None)].shape == (N, 6)
    np.testing.assert_array_equal(feats[("image_residual", 2, None)], cap.image_hidden[:, 2].numpy())
    # the pca level hands the probes the residual itself: its components are fitted inside each training fold
    assert {key[2] for key in feats if key[0] == "pca"} == {1, 4, D}
    assert feats[("pca", 2, 4)] is feats[("residual", 2, None)]
    assert feats[("logit_lens_answers", 0, None)].shape == (N, len(answers))
    assert feats[("logits", None, None)].shape == (N, V)
    assert feats[("top1_prob", None, None)].shape == (N, 1)
    assert feats[("response_residual", 2, None)].shape == (N, D)
    assert feats[("response_topk_logprobs", None, 5)].shape == (N, 4 * 5)
    # an identity (untrained) tuned lens is the logit lens
    np.testing.assert_array_equal(feats[("tuned_lens_topk", 2, 5)], feats[("logit_lens_topk", 2, 5)])


def test_values_equal_torch_ground_truth(synthetic):
    cap, readout = synthetic
    feats = build_features(cap, readout, levels=ALL_WHITE_BOX, layers=[1], ks=KS, answer_token_ids=[4, 0])
    logprobs = torch.log_softmax(cap.logits, -1)
    for k in KS:
        top = torch.topk(cap.logits, k)
        np.testing.assert_array_equal(feats[("topk_logits", None, k)], top.values.numpy())
        np.testing.assert_allclose(feats[("topk_logprobs", None, k)], logprobs.gather(1, top.indices).numpy(), atol=1e-6)
        lens_logits = readout.unembed(readout.norm(cap.hidden[:, 1]))
        np.testing.assert_allclose(feats[("logit_lens_topk", 1, k)], torch.topk(lens_logits, k).values.detach().numpy(),
                                   atol=1e-5)
    np.testing.assert_allclose(feats[("top1_prob", None, None)][:, 0], torch.softmax(cap.logits, -1).max(-1).values.numpy(),
                               atol=1e-6)
    np.testing.assert_allclose(feats[("logit_lens_answers", 1, None)], logit_lens(cap, readout, 1)[:, [4, 0]].numpy(),
                               atol=1e-6)
    np.testing.assert_array_equal(feats[("residual", 1, None)], residual(cap, 1))
    # the logit lens at the last layer is the final logits
    torch.testing.assert_close(logit_lens(cap, readout, L), cap.logits)


def test_topk_ids_matrix(synthetic):
    cap, readout = synthetic
    k = 2
    x = build_features(cap, readout, levels=["topk_ids"], layers=[], ks=[k])[("topk_ids", None, k)]
    logprobs = torch.log_softmax(cap.logits, -1)
    top = torch.topk(logprobs, k)
    union = np.unique(top.indices.numpy())
    assert x.shape == (N, len(union))
    floor = float(top.values.min()) - 1.0
    for i in range(N):
        expect = np.full(len(union), floor, dtype=np.float32)
        for j in range(k):
            expect[np.searchsorted(union, int(top.indices[i, j]))] = float(top.values[i, j])
        np.testing.assert_allclose(x[i], expect, atol=1e-6)
    # missing entries (an API that returned fewer alternatives) stay at the floor
    m, u = topk_ids_matrix(torch.tensor([[5, -1], [7, 5]]), torch.tensor([[-0.1, float("nan")], [-0.5, -2.0]]))
    assert u.tolist() == [5, 7]
    np.testing.assert_allclose(m, [[-0.1, -3.0], [-2.0, -0.5]])


def test_black_box_capture():
    lp = torch.tensor([[-0.1, -2.5, -3.0], [-0.7, -0.9, float("nan")]])
    ids = torch.tensor([[4, 9, 1], [9, 2, -1]])
    cap = Capture(topk_logprobs=lp, topk_ids=ids)
    assert available_levels(cap) == ["topk_ids", "topk_logprobs", "top1_prob"]
    feats = build_features(cap, None, levels=["topk_ids", "topk_logprobs", "top1_prob"], layers=[], ks=[1, 3])
    np.testing.assert_allclose(feats[("top1_prob", None, None)][:, 0], np.exp([-0.1, -0.7]), rtol=1e-6)
    np.testing.assert_allclose(feats[("topk_logprobs", None, 1)], [[-0.1], [-0.7]])
    x3 = feats[("topk_logprobs", None, 3)]
    assert np.isfinite(x3).all() and x3[1, 2] < -3.0  # missing value filled below everything seen
    assert feats[("topk_ids", None, 1)].shape == (2, 2)  # union of top-1 ids {4, 9}
    assert feats[("topk_ids", None, 3)].shape == (2, 4)  # {1, 2, 4, 9}
    with pytest.raises(LogitleakError, match="cannot be computed"):
        build_features(cap, None, levels=["logits"], layers=[], ks=[1])
    with pytest.raises(LogitleakError, match="larger than"):
        build_features(cap, None, levels=["topk_logprobs"], layers=[], ks=[4])
    # values only (ids dropped): the ids level is not available, the others are
    values_only = Capture(topk_logprobs=lp, topk_ids=torch.full_like(ids, -1))
    assert "topk_ids" not in available_levels(values_only)
    assert set(API_LEVELS) - {"topk_logits"} >= set(available_levels(values_only))


def test_errors(synthetic):
    cap, readout = synthetic
    with pytest.raises(LogitleakError, match="Unknown level"):
        build_features(cap, readout, levels=["entropy"], layers=[], ks=[1])
    with pytest.raises(LogitleakError, match="larger than"):
        build_features(cap, readout, levels=["topk_logits"], layers=[], ks=[V + 1])
    with pytest.raises(LogitleakError, match="tuned lens"):
        build_features(cap, readout, levels=["tuned_lens_topk"], layers=[1], ks=[1])
    with pytest.raises(LogitleakError, match="answer_token_ids"):
        build_features(cap, readout, levels=["logit_lens_answers"], layers=[1], ks=[1])
    with pytest.raises(LogitleakError, match="does not exist"):
        build_features(cap, readout, levels=["residual"], layers=[L + 1], ks=[1])
    with pytest.raises(LogitleakError, match="readout"):
        build_features(cap, None, levels=["logit_lens_topk"], layers=[1], ks=[1])
    with pytest.raises(LogitleakError, match="needs at least one k"):
        build_features(cap, readout, levels=["topk_logits"], layers=[], ks=[])


def test_tuned_lens_level_uses_the_translator(synthetic):
    cap, readout = synthetic
    lens = TunedLens(D, L, [1], readout=readout)
    lens.bias[1] = torch.ones(D)
    expect = readout(cap.hidden[:, 1] + 1.0)
    torch.testing.assert_close(lens_logits(cap, readout, lens, 1), expect)
    feats = build_features(cap, readout, levels=["tuned_lens_answers"], layers=[1], ks=[], lens=lens,
                           answer_token_ids=[2, 3])
    np.testing.assert_allclose(feats[("tuned_lens_answers", 1, None)], expect[:, [2, 3]].numpy(), atol=1e-6)


@pytest.mark.parametrize("family", ["llava", "gemma2"])
def test_readout_is_standalone_and_exact(family):
    """The readout (final norm + unembedding + Gemma-2's soft-cap) alone reproduces the logits."""
    ad = load_model(tiny_model_dir(family), device="cpu")
    cap = capture(ad, probeset_for(ad, 3, seed=9), progress=False)
    readout = ad.readout()
    assert not isinstance(readout, torch.nn.Module)
    if family == "gemma2":
        assert readout.softcap == ad.model.config.final_logit_softcapping
    torch.testing.assert_close(logit_lens(cap, readout, ad.n_layers), cap.logits, atol=1e-5, rtol=1e-5)
    assert readout.fingerprint() == ad.readout().fingerprint()
    with torch.no_grad():
        ad.final_norm.weight.add_(1.0)  # the readout holds a copy: later model edits do not leak into it
    try:
        torch.testing.assert_close(readout(cap.hidden[:, -1]), cap.logits, atol=1e-5, rtol=1e-5)
        assert readout.fingerprint() != ad.readout().fingerprint()
    finally:
        with torch.no_grad():
            ad.final_norm.weight.sub_(1.0)


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_large_vocabulary_logits_level_is_an_isometry_in_d_features(softcap):
    from logitleak.levels.features import LOGITS_FULL_MAX, logits_features
    from logitleak.models.readout import Readout

    g = torch.Generator().manual_seed(0)
    V, D, N = LOGITS_FULL_MAX + 904, 24, 50
    ro = Readout(norm=None, weight=torch.randn(V, D, generator=g), bias=torch.randn(V, generator=g), softcap=softcap)
    h = torch.randn(N, D, generator=g) * 0.5
    z = ro(h)
    feats = logits_features(z, ro)
    assert feats.shape == (N, D)
    pre = (h @ ro.weight.T).double()                         # the logits before bias and softcap
    d_logits = torch.cdist(pre, pre)
    d_feats = torch.cdist(torch.as_tensor(feats).double(), torch.as_tensor(feats).double())
    torch.testing.assert_close(d_feats, d_logits, rtol=2e-3, atol=2e-3)
    small = Readout(norm=None, weight=ro.weight[:100], bias=None)
    np.testing.assert_array_equal(logits_features(small(h), small), small(h).numpy())   # small V: as they are
