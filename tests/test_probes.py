"""Batched torch probes: agreement with scikit-learn, batching independence, MLP capacity."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from logitleak.errors import LogitleakError
from logitleak.probing.estimators import (
    LinearProbe,
    MLPProbe,
    fit_linear_batched,
    fit_mlp_batched,
    masked_standardisation,
    prepare_features,
    stratified_holdout,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian_classes(rng, n, d, K, sep, scale_spread=True):
    y = rng.integers(0, K, n)
    means = rng.normal(0, sep, (K, d))
    X = rng.normal(size=(n, d)) + means[y]
    if scale_spread:  # unequal column scales and offsets: standardisation must matter
        X = X * rng.uniform(0.1, 20, d) + rng.normal(0, 50, d)
    return X, y


def sklearn_oof(X, y, folds, C):
    """The reference path: StandardScaler + LogisticRegression per fold, out-of-fold probabilities."""
    K = len(np.unique(y))
    proba = np.zeros((len(y), K))
    for tr, te in folds:
        sc = StandardScaler().fit(X[tr])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = LogisticRegression(C=C, tol=1e-8, max_iter=10_000).fit(sc.transform(X[tr]), y[tr])
        proba[te] = m.predict_proba(sc.transform(X[te]))
    return proba


def batched_oof(X, y, folds, C, dtype=torch.float32):
    """All folds fitted as one batch of problems on the shared feature matrix."""
    Xt, _, _ = prepare_features([X], "cpu", dtype)
    fit_mask = np.zeros((len(folds), len(y)), bool)
    for s, (tr, _) in enumerate(folds):
        fit_mask[s, tr] = True
    fit = fit_linear_batched(Xt, np.tile(y, (len(folds), 1)), fit_mask, C=C)
    assert bool(fit.converged.all())
    logp = fit.log_proba(Xt)[0].double().numpy()          # (n, P, K)
    proba = np.zeros((len(y), logp.shape[-1]))
    for s, (_, te) in enumerate(folds):
        proba[te] = np.exp(logp[te, s])
    return proba


@pytest.mark.parametrize("K,d,C", [(3, 20, 1.0), (2, 10, 0.05), (4, 40, 0.3)])
def test_batched_linear_matches_sklearn_on_same_folds(K, d, C):
    rng = np.random.default_rng(K * 100 + d)
    X, y = gaussian_classes(rng, 600, d, K, sep=0.5)
    folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(X, y))
    ref = sklearn_oof(X, y, folds, C)
    got = batched_oof(X, y, folds, C)
    acc_ref = (ref.argmax(1) == y).mean()
    acc_got = (got.argmax(1) == y).mean()
    assert abs(acc_ref - acc_got) <= 0.01
    assert np.abs(ref - got).max() < 0.01          # same optimum, float32 + tolerance
    assert 0.4 < acc_ref < 0.99                    # a non-trivial problem


def test_float64_agrees_with_sklearn_tightly():
    rng = np.random.default_rng(7)
    X, y = gaussian_classes(rng, 400, 15, 3, sep=0.6)
    folds = list(StratifiedKFold(5, shuffle=True, random_state=1).split(X, y))
    ref = sklearn_oof(X, y, folds, 0.5)
    got = batched_oof(X, y, folds, 0.5, dtype=torch.float64)
    assert np.abs(ref - got).max() < 1e-3


def test_estimator_matches_sklearn_and_follows_conventions():
    rng = np.random.default_rng(3)
    X, y_int = gaussian_classes(rng, 500, 8, 3, sep=0.7)
    y = np.array(["cat", "dog", "eel"])[y_int]
    probe = LinearProbe(C=1.0).fit(X[:400], y[:400])
    sc = StandardScaler().fit(X[:400])
    ref = LogisticRegression(C=1.0, tol=1e-8, max_iter=10_000).fit(sc.transform(X[:400]), y[:400])
    p = probe.predict_proba(X[400:])
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
    assert np.abs(p - ref.predict_proba(sc.transform(X[400:]))).max() < 0.01
    assert list(probe.classes_) == ["cat", "dog", "eel"]
    assert probe.predict(X[400:]).dtype == y.dtype
    assert probe.coef_.shape == (3, 8) and probe.intercept_.shape == (3,)
    # coef_/intercept_ act on raw features
    logits = X[400:] @ probe.coef_.T + probe.intercept_
    np.testing.assert_array_equal(logits.argmax(1), p.argmax(1))
    assert probe.score(X[400:], y[400:]) == pytest.approx((probe.predict(X[400:]) == y[400:]).mean())
    assert clone(probe).get_params()["C"] == 1.0
    assert not hasattr(clone(probe), "coef_")


def test_inner_split_chooses_strong_regularisation_when_features_are_noise():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 50))
    y = rng.integers(0, 2, 300)
    probe = LinearProbe().fit(X, y)
    assert probe.C_ in probe.Cs
    assert probe.C_ <= 0.01                          # noise: the grid's strong end wins
    X2, y2 = gaussian_classes(rng, 2000, 3, 2, sep=1.5, scale_spread=False)
    assert LinearProbe().fit(X2, y2).C_ >= 0.1       # clean low-d signal: weak regularisation


def test_problems_in_a_batch_are_independent():
    """Fitting problems together gives the same solution as fitting each alone."""
    rng = np.random.default_rng(11)
    X, y = gaussian_classes(rng, 300, 12, 3, sep=0.6)
    Xt, _, _ = prepare_features([X, X[:, ::-1] * 2.0])
    masks = np.stack([rng.random(300) < f for f in (0.5, 0.7, 0.9)])
    labels = np.stack([y, rng.permutation(y), y])
    Cs = np.array([0.01, 1.0, 10.0])
    together = fit_linear_batched(Xt, labels, masks, C=Cs)
    lp = together.log_proba(Xt)
    for p in range(3):
        alone = fit_linear_batched(Xt, labels[p:p + 1], masks[p:p + 1], C=float(Cs[p]))
        np.testing.assert_allclose(alone.log_proba(Xt)[:, :, 0].exp().numpy(), lp[:, :, p].exp().numpy(), atol=2e-3)


def test_standardisation_uses_training_rows_only():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(50, 4)) * [1, 10, 100, 0] + [0, 5, -3, 7]
    Xt, shift, scale = prepare_features([X], "cpu", torch.float64)
    mask = np.zeros((2, 50), bool)
    mask[0, :30] = True
    mask[1, 20:] = True
    mu, sd = masked_standardisation(Xt, torch.as_tensor(mask))
    for p in range(2):
        rows = X[mask[p]]
        np.testing.assert_allclose(mu[0, p].numpy() * scale[0] + shift[0], rows.mean(0), atol=1e-9)
        expect = rows.std(0)
        expect[expect == 0] = 1.0 / scale[0][expect == 0]   # constant column: unit scale (as StandardScaler)
        np.testing.assert_allclose(sd[0, p].numpy() * scale[0], expect, rtol=1e-9)


def xor_data(rng, n, d=2):
    X = rng.normal(size=(n, d))
    y = ((X[:, 0] > 0) ^ (X[:, 1] > 0)).astype(int)
    return X, y


def test_mlp_beats_linear_on_xor():
    rng = np.random.default_rng(0)
    X, y = xor_data(rng, 600, d=4)
    Xte, yte = xor_data(rng, 2000, d=4)
    mlp = MLPProbe(random_state=0).fit(X, y)
    lin = LinearProbe().fit(X, y)
    assert mlp.score(Xte, yte) > 0.85
    assert lin.score(Xte, yte) < 0.62
    assert mlp.n_epochs_ < mlp.max_epochs             # stopped early, on its validation loss


def test_mlp_batched_early_stopping_is_per_problem():
    """A problem with real signal trains longer than a permuted copy, whose validation loss stops
    improving almost at once; each keeps its own best epoch."""
    rng = np.random.default_rng(1)
    X, y = xor_data(rng, 400)
    Xt, _, _ = prepare_features([X])
    fi, va = stratified_holdout(y, 0.25, rng)
    fit_mask = np.zeros((2, 400), bool)
    fit_mask[:, fi] = True
    val_mask = np.zeros((2, 400), bool)
    val_mask[:, va] = True
    labels = np.stack([y, rng.permutation(y)])
    fit = fit_mlp_batched(Xt, labels, fit_mask, val_mask, seed=0)
    epochs = fit.n_epochs[0].numpy()
    assert epochs[0] > 5 * max(epochs[1], 1)
    acc = (fit.log_proba(Xt)[0].argmax(-1).numpy().T == labels)[:, va].mean(1)
    assert acc[0] > 0.85 and acc[1] < 0.7


def test_probe_input_errors():
    with pytest.raises(LogitleakError, match="single class"):
        LinearProbe().fit(np.zeros((10, 2)), np.ones(10))
    with pytest.raises(LogitleakError, match="NaN"):
        LinearProbe().fit(np.full((10, 2), np.nan), np.arange(10) % 2)
    with pytest.raises(LogitleakError, match="10 feature rows but 9 labels"):
        MLPProbe().fit(np.zeros((10, 2)), np.arange(9) % 2)


def test_estimators_follow_scikit_learn_conventions_and_say_when_they_did_not_converge():
    from sklearn.base import clone
    from sklearn.exceptions import ConvergenceWarning

    lin = LinearProbe(C=0.5, max_iter=1)
    assert lin.get_params()["C"] == 0.5 and clone(lin).max_iter == 1 and repr(lin) == "LinearProbe(C=0.5, max_iter=1)"
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    y = (X[:, 0] + rng.normal(size=200) > 0).astype(int)
    with pytest.warns(ConvergenceWarning, match=r"LinearProbe stopped before converging \(L-BFGS reached max_iter=1"):
        lin.fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LinearProbe(C=0.5).fit(X, y)                         # converged: no warning
    with pytest.warns(ConvergenceWarning, match=r"MLPProbe stopped before converging \(early stopping never"):
        MLPProbe(hidden=4, max_epochs=2).fit(X, y)
