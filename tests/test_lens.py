"""Tuned lens: identity start, fitting beats the logit lens, save/load with the readout hash,
and the ground-truth property on the trained organism."""

from __future__ import annotations

import json
import time
import warnings

import numpy as np
import pytest
import torch
from tiny_models import probeset_for, tiny_model_dir

from logitleak.capture.forward import capture
from logitleak.errors import LogitleakError
from logitleak.levels.lens import TunedLens, _split, fit_tuned_lens, heldout_kl
from logitleak.models.loading import load_model
from logitleak.models.readout import Readout


@pytest.fixture(scope="module")
def setup():
    ad = load_model(tiny_model_dir("llava", n_layers=4), device="cpu")
    cap = capture(ad, probeset_for(ad, 240, seed=21), batch_size=60, progress=False)
    return ad, cap, ad.readout()


@pytest.fixture(scope="module")
def fitted(setup):
    _, cap, readout = setup
    t0 = time.perf_counter()
    lens = fit_tuned_lens(cap, readout, steps=200, seed=0)
    lens.fit_seconds = time.perf_counter() - t0
    return lens


def test_translators_start_from_the_least_squares_map_scikit_learn_finds(setup):
    from sklearn.linear_model import Ridge

    from logitleak.levels.lens import least_squares_translator

    _, cap, readout = setup
    lens = fit_tuned_lens(cap, readout, steps=0, seed=0)
    assert lens.train_info_["kl_steps"] == 0
    train, _ = _split(len(cap), 0.2, 0)
    L = cap.n_layers
    for layer in (0, 2):
        h, h_last = cap.hidden[train, layer].double().numpy(), cap.hidden[train, L].double().numpy()
        X1 = np.hstack([h, np.ones((len(h), 1))])
        lam = 1e-3 * float(np.mean(np.sum(X1 * X1, 0)))        # the ridge of least_squares_translator
        ref = Ridge(alpha=lam, fit_intercept=True, solver="cholesky").fit(h, h_last - h)
        np.testing.assert_allclose(lens.weight[layer].numpy(), ref.coef_, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(lens.bias[layer].numpy(), ref.intercept_, rtol=1e-3, atol=1e-4)
        A, b = least_squares_translator(cap.hidden[train, layer], cap.hidden[train, L])
        torch.testing.assert_close(A, lens.weight[layer])
        torch.testing.assert_close(b, lens.bias[layer])
    h = cap.hidden[:, 1]
    torch.testing.assert_close(lens.transform_hidden(h, 1), h + h @ lens.weight[1].T + lens.bias[1])


def test_kl_refinement_is_capped_by_its_work_budget(setup):
    from logitleak.levels.lens import kl_steps

    _, cap, readout = setup
    per_step = 192 * readout.vocab_size * readout.d_model        # 240 samples: 192 train rows < batch 512
    assert kl_steps(300, 512, 192, readout, max_work=per_step * 7 + 1) == 7
    assert kl_steps(300, 512, 192, readout, max_work=per_step - 1) == 0
    capped = fit_tuned_lens(cap, readout, steps=50, seed=0, max_work=per_step * 7 + 1)
    assert capped.train_info_["kl_steps"] == 7 and capped.train_info_["steps"] == 50
    full = fit_tuned_lens(cap, readout, steps=50, seed=0, max_work=None)
    assert full.train_info_["kl_steps"] == 50


def test_fitting_beats_the_logit_lens(setup, fitted):
    _, cap, readout = setup
    L = cap.n_layers
    assert fitted.layers == list(range(L)) and fitted.fit_seconds < 60
    kl = fitted.heldout_kl_
    assert sorted(kl) == list(range(L + 1))
    for layer in range(L):
        assert kl[layer][1] < kl[layer][0], f"layer {layer}: tuned {kl[layer][1]:.4f} >= logit {kl[layer][0]:.4f}"
    assert kl[L] == pytest.approx((0.0, 0.0), abs=1e-6)  # the last state is read out exactly
    assert fitted.train_info_["n_train"] + fitted.train_info_["n_heldout"] == len(cap)
    # the translators are residual: A and b learned away from zero, transform = h + A h + b
    h = cap.hidden[:4, 2]
    torch.testing.assert_close(fitted.transform_hidden(h, 2), h + h @ fitted.weight[2].T + fitted.bias[2])
    assert float(fitted.weight[2].abs().max()) > 0


def test_heldout_kl_function_agrees(setup, fitted):
    _, cap, readout = setup
    train, test = _split(len(cap), 0.2, 0)
    again = heldout_kl(cap, readout, fitted, index=test)
    for layer, (a, b) in fitted.heldout_kl_.items():
        assert again[layer] == pytest.approx((a, b), rel=1e-5, abs=1e-7)


def test_save_load_round_trip_and_hash(setup, fitted, tmp_path):
    ad, cap, readout = setup
    fitted.save(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["readout_hash"] == readout.fingerprint() and cfg["layers"] == fitted.layers
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = TunedLens.load(tmp_path, readout=readout)
    assert back.matches(readout) and back.heldout_kl_ == {k: tuple(v) for k, v in fitted.heldout_kl_.items()}
    h = cap.hidden[:, 1]
    torch.testing.assert_close(back(h, 1), fitted(h, 1))
    other = Readout(norm=None, weight=readout.weight + 1.0)
    with pytest.warns(UserWarning, match="another unembedding"):
        TunedLens.load(tmp_path, readout=other)
    with pytest.raises(LogitleakError, match="d_model"):
        TunedLens.load(tmp_path, readout=Readout(norm=None, weight=torch.zeros(5, 3)))
    with pytest.raises(LogitleakError, match="No tuned lens"):
        TunedLens.load(tmp_path / "missing")


def test_grouped_split_keeps_groups_apart():
    groups = np.repeat(np.arange(10), 3)
    train, test = _split(len(groups), 0.3, 0, groups)
    assert not set(groups[train]) & set(groups[test]) and len(train) + len(test) == 30


def test_errors(setup):
    _, cap, readout = setup
    with pytest.raises(LogitleakError, match="does not exist"):
        fit_tuned_lens(cap, readout, layers=[cap.n_layers + 1], steps=1)
    from logitleak.capture.forward import Capture

    with pytest.raises(LogitleakError, match="hidden states"):
        fit_tuned_lens(Capture(topk_logprobs=torch.zeros(8, 2)), readout, steps=1)


def test_tuned_lens_on_the_trained_organism(organism_dir):
    """On a trained model the tuned lens tracks the final distribution better than the logit lens at
    every layer but the last, and gets closer with depth."""
    from logitleak.data import make_shapes
    ad = load_model(organism_dir, device="cpu")
    ps = make_shapes(300, questions="all", seed=123, image_size=ad.image_size or 32)
    cap = capture(ad, ps, batch_size=100, progress=False)
    lens = fit_tuned_lens(cap, ad.readout(), groups=ps.groups, seed=0)
    kl = lens.heldout_kl_
    L = cap.n_layers
    for layer in range(L):
        assert kl[layer][1] < kl[layer][0], f"layer {layer}: tuned {kl[layer][1]:.4f} >= logit {kl[layer][0]:.4f}"
    tuned = [kl[layer][1] for layer in range(L + 1)]
    assert all(a > b for a, b in zip(tuned, tuned[1:])), f"tuned-lens KL not decreasing with depth: {tuned}"


def test_audit_says_when_the_lens_took_fewer_kl_steps_and_reuses_a_lens_only_for_the_same_settings(
        organism_dir, tmp_path, monkeypatch):
    import logitleak.levels.lens as lens_module
    from logitleak.audit import run_audit
    from logitleak.config import make_config

    base = {"model": str(organism_dir), "data": "shapes", "task": "color", "samples": 160, "layers": [0, 2],
            "levels": ["tuned_lens_topk"], "k": [1], "attributes": ["size"], "out": str(tmp_path / "a"),
            "probes": {"families": ["linear"], "folds": 3, "bootstrap": 20, "workers": 0}, "lens": {"steps": 40}}
    monkeypatch.setattr(lens_module, "kl_steps", lambda *a, **k: 0)          # as for a 49k vocabulary
    first = run_audit(make_config(base), progress=False)
    note = [p for p in first.problems if "tuned lens took 0 of its 40 KL steps" in p]
    assert len(note) == 1 and "least-squares maps to the last layer, as they are" in note[0]
    assert json.loads((tmp_path / "a" / "cache" / "lens" / "config.json").read_text())["train"]["kl_steps"] == 0

    fits = []
    real_fit = lens_module.fit_tuned_lens
    monkeypatch.setattr(lens_module, "fit_tuned_lens", lambda *a, **k: fits.append(k["steps"]) or real_fit(*a, **k))
    monkeypatch.setattr(lens_module, "kl_steps", lambda steps, *a, **k: steps)
    run_audit(make_config(base), progress=False)                             # same settings: the saved lens
    assert fits == []
    again = run_audit(make_config({**base, "lens": {"steps": 30}, "force": True}), progress=False)
    assert fits == [30] and not any("KL steps" in p for p in again.problems)  # other steps: refitted, all taken


def test_the_logit_lens_is_a_lens_with_the_identity_translator(setup):
    from logitleak.levels.features import build_features
    from logitleak.levels.logit_lens import Lens, LogitLens

    _, cap, readout = setup
    logit = LogitLens(readout)
    assert isinstance(logit, Lens) and isinstance(TunedLens(4, 2, [1]), Lens)
    h = cap.hidden[:, 2]
    assert logit.transform_hidden(h, 2) is h
    torch.testing.assert_close(logit(h, 2), readout(h), rtol=0, atol=0)
    untrained = TunedLens(cap.hidden.shape[-1], cap.n_layers, [1, 2], readout=readout)   # zero translators
    torch.testing.assert_close(untrained(h, 2), logit(h, 2))
    kl = heldout_kl(cap, readout, logit, layers=[0, 2])
    assert all(a == b for a, b in kl.values()) and kl[2][0] > 0
    feats = build_features(cap, readout, levels=["logit_lens_topk", "tuned_lens_topk"], layers=[2], ks=[3],
                           lens=untrained)
    np.testing.assert_allclose(feats[("logit_lens_topk", 2, 3)], feats[("tuned_lens_topk", 2, 3)], rtol=1e-6)
    with pytest.raises(LogitleakError, match="This LogitLens has no readout"):
        LogitLens()(h, 2)
