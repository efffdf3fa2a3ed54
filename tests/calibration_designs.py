"""Null and planted designs for the calibration tests and ``benchmarks/bench_calibration.py``.

Every generator takes a ``numpy`` generator and returns ``(features, labels, groups)`` in the form
:func:`logitleak.probing.sweep.evaluate_sweep` takes, so a test and the benchmark measure the
same scenarios; :func:`forward_chain_logp` scores a design's forward-chained blocks with
scikit-learn, for comparing the held-out test's approximation with its exact null.
"""

from __future__ import annotations

import numpy as np


def zipf_sizes(n: int, n_groups: int, exponent: float = 1.0) -> np.ndarray:
    """Group sizes proportional to ``1 / rank**exponent`` summing to about ``n`` (each at least 1):
    with 65 groups and exponent 1, the 3 largest hold ~80% of the sum of squared sizes."""
    w = 1.0 / np.arange(1, n_groups + 1) ** exponent
    return np.maximum(1, np.round(n * w / w.sum())).astype(int)


def zipf_groups(rng: np.random.Generator, *, n: int = 400, n_groups: int = 65, d: int = 8, n_classes: int = 2,
                n_feats: int = 4, n_attrs: int = 10, effect: float = 1.0, signal: float = 0.0):
    """Zipf-sized groups with a strong group effect in the features (``effect``: its sd, the
    noise's is 1) and labels constant within a group; ``signal`` > 0 shifts every feature set by
    ``signal`` along a class direction of attribute ``a0`` (the others stay null)."""
    groups = np.repeat(rng.permutation(n_groups), zipf_sizes(n, n_groups))
    m = len(groups)
    labels = {f"a{a}": rng.integers(0, n_classes, n_groups)[groups] for a in range(n_attrs)}
    means = rng.normal(size=(n_classes, d))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    feats = {}
    for f in range(n_feats):
        X = effect * rng.normal(size=(n_groups, d))[groups] + rng.normal(size=(m, d))
        feats[("noise", f, None)] = X + signal * means[labels["a0"]]
    return feats, labels, groups


def gaussian_classes(rng: np.random.Generator, *, n: int = 200, d: int = 8, n_classes: int = 2, n_feats: int = 1,
                     n_attrs: int = 1, delta: float = 0.0, prior=None):
    """Independent samples; ``delta`` > 0 puts the class means of attribute ``a0`` at distance
    ``delta`` from the origin along random unit directions (the other attributes stay null)."""
    p = None if prior is None else np.asarray(prior, float) / np.sum(prior)
    labels = {f"a{a}": rng.choice(n_classes, size=n, p=p) for a in range(n_attrs)}
    means = rng.normal(size=(n_classes, d))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    feats = {("gauss", f, None): rng.normal(size=(n, d)) + delta * means[labels["a0"]] for f in range(n_feats)}
    return feats, labels, None


def forward_chain_logp(X: np.ndarray, y: np.ndarray, groups: np.ndarray | None, *, C: float = 1.0, n_folds: int = 5,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(logp (n, K), block (n,))``: the project's folds, block ``b >= 1`` scored by a
    scikit-learn logistic regression trained on the blocks before it (large ``C``: overconfident)."""
    from sklearn.linear_model import LogisticRegression

    from logitleak.probing.splits import cv_splits

    fold = np.zeros(len(y), dtype=int)
    for s, (_, te) in enumerate(cv_splits(y, groups, n_folds, None, seed)):
        fold[te] = s
    K = int(y.max()) + 1
    logp = np.zeros((len(y), K))
    for b in range(1, n_folds):
        tr, te = fold < b, fold == b
        model = LogisticRegression(C=C, max_iter=1000).fit(X[tr], y[tr])
        lp = np.full((int(te.sum()), K), -30.0)
        lp[:, model.classes_] = model.predict_log_proba(X[te])
        logp[te] = lp
    return logp, np.where(fold >= 1, fold, -1)


def class_means(rng: np.random.Generator, d: int, n_classes: int, delta: float) -> np.ndarray:
    """``(K, d)`` class means at distance ``delta`` from the origin along random orthonormal
    directions (``K <= d``), so every pair of classes is ``delta * sqrt(2)`` apart whatever the draw."""
    q, _ = np.linalg.qr(rng.normal(size=(d, n_classes)))
    return delta * q.T


def balanced_labels(rng: np.random.Generator, n: int, n_classes: int) -> np.ndarray:
    return rng.permutation(np.arange(n) % n_classes)


def linear_probe_truth(rng: np.random.Generator, means: np.ndarray, n_train: int, *, n_models: int = 100,
                       n_test: int = 20000) -> tuple[float, float]:
    """``(accuracy, bits)`` the default linear probe (C chosen on an inner 20% split) reaches in
    expectation when trained on ``n_train`` balanced samples of unit-variance Gaussians around
    ``means``: averaged over ``n_models`` fresh training sets, each scored on ``n_test`` fresh
    samples (bits: ``log2 K`` minus the held-out cross-entropy, the prior being uniform). What a
    cross-validated estimate with training folds of ``n_train`` estimates."""
    import torch

    from logitleak.probing.linear import fit_linear_grid_batched
    from logitleak.probing.splits import stratified_holdout
    from logitleak.probing.tensors import prepare_features

    K, d = means.shape
    y_tr, y_te = balanced_labels(rng, n_train, K), balanced_labels(rng, n_test, K)
    X_te = rng.normal(size=(n_test, d)) + means[y_te]
    X = [np.concatenate([rng.normal(size=(n_train, d)) + means[y_tr], X_te]) for _ in range(n_models)]
    y = np.concatenate([y_tr, y_te])[None]
    train = np.zeros(y.shape, bool)
    train[0, :n_train] = True
    fit_rows, val_rows = stratified_holdout(y[0], 0.2, rng, rows=np.arange(n_train))
    fit, val = np.zeros_like(train), np.zeros_like(train)
    fit[0, fit_rows], val[0, val_rows] = True, True
    Xt, _, _ = prepare_features(X, torch.device("cpu"), torch.float32)
    lp = fit_linear_grid_batched(Xt, y, train, fit, val, n_classes=K).log_proba(Xt)[:, n_train:, 0].double().numpy()
    acc = float((lp.argmax(-1) == y_te[None]).mean())
    bits = float(np.log2(K) + lp[:, np.arange(n_test), y_te].mean() / np.log(2))
    return acc, bits
