"""Probes on fold-fitted projections: the ``pca`` level, with its components fitted on training folds only.

A ``("pca", layer, d)`` feature set holds the raw residual. Every outer fold of one label-free
grouped k-fold split fits the principal components on its training rows, projects every row onto
the top ``d`` of them, and the probes (the same batched classifiers and regressors as every other
level) train on the fold's training rows and predict its held-out rows. The real labels, the
control task and the permutations share the fold's projection and are fitted together, so the
permutation p-value, intervals and V-information mean what they mean at every other level.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from logitleak import metrics as M
from logitleak.errors import LogitleakError
from logitleak.results import to_frame
from logitleak.transition import FOLD_LEVELS


def split_fold_levels(features: Mapping) -> tuple[dict, dict]:
    """``(fold-projected feature sets, the others)``."""
    fold = {k: v for k, v in features.items() if tuple(k)[0] in FOLD_LEVELS}
    return fold, {k: v for k, v in features.items() if k not in fold}


def fold_pca(X: np.ndarray, train: np.ndarray, d_max: int) -> list[np.ndarray]:
    """For every fold ``s``, ``(n, d_max)`` every row projected on the top ``d_max`` principal
    components of ``X[train[s]]`` (centred on the training mean; components by SVD)."""
    out = []
    Xt = torch.as_tensor(np.asarray(X, dtype=np.float64))
    for s in range(train.shape[0]):
        rows = torch.as_tensor(train[s])
        mu = Xt[rows].mean(0, keepdim=True)
        _, _, Vh = torch.linalg.svd(Xt[rows] - mu, full_matrices=False)
        V = Vh[:d_max].T
        Z = (Xt - mu) @ V
        if Z.shape[1] < d_max:  # fewer training rows than components: pad with constant columns
            Z = torch.cat([Z, torch.zeros(Z.shape[0], d_max - Z.shape[1], dtype=Z.dtype)], 1)
        out.append(Z.numpy())
    return out


def _projections(features: Mapping, train: np.ndarray) -> dict:
    """``{key: [fold s -> (n, d)]}``, one SVD per distinct residual array and fold."""
    by_array: dict[int, list] = {}
    for key, X in features.items():
        by_array.setdefault(id(X), []).append(key)
    out = {}
    for keys in by_array.values():
        X = features[keys[0]]
        d_max = max(k[2] for k in keys)
        if d_max > X.shape[1]:
            raise LogitleakError(f"PCA dimension {d_max} exceeds the width {X.shape[1]} of layer {keys[0][1]}; pass d up "
                                 f"to {X.shape[1]}.")
        Z = fold_pca(X, train, d_max)
        for key in keys:
            out[key] = [np.ascontiguousarray(z[:, : key[2]], dtype=np.float32) for z in Z]
    return out


def _class_plan(name, values, groups, train, test, fit, val, n_permutations, n_bootstrap, seed, n_folds):
    from logitleak.evaluate import AttributePlan, _check_attribute, _rng, encode_labels

    classes, codes = encode_labels(name, values)
    _check_attribute(name, classes, codes, groups, n_folds, None)
    K = len(classes)
    variants = [codes, M.control_labels(codes, _rng(seed, name, "control"), groups)]
    rng = _rng(seed, name, "permutations")
    variants += [M.permute_labels(codes, rng, groups) for _ in range(n_permutations)]
    labels = np.stack(variants)
    V, S = len(variants), train.shape[0]
    tr, te = np.broadcast_to(train, (V, S, train.shape[1])), np.broadcast_to(test, (V, S, test.shape[1]))
    prior = np.stack([M.prior_loss_bits(labels[v], train, test, K) for v in range(V)])
    tested = te.any(1)
    boot = M.bootstrap_weights(int(tested[0].sum()), n_bootstrap, _rng(seed, name, "bootstrap"),
                               None if groups is None else np.asarray(groups)[tested[0]])
    return AttributePlan(name, classes, codes, labels, tr, te, np.broadcast_to(fit, tr.shape),
                         np.broadcast_to(val, tr.shape), prior, tested, M.majority_baseline(codes, train, test, K), boot)


def _fit_classes(family, X, plan, s, params, seed):
    """Log-probabilities ``(F, n, V, K)`` of every variant's probe on fold ``s`` and its C."""
    from logitleak.evaluate import _fit_family

    V = plan.n_variants
    y = plan.labels
    tr = np.ascontiguousarray(np.broadcast_to(plan.train[0, s], (V, y.shape[1])))
    fi = np.ascontiguousarray(np.broadcast_to(plan.inner_fit[0, s], tr.shape))
    va = np.ascontiguousarray(np.broadcast_to(plan.inner_val[0, s], tr.shape))
    seeds = np.array([seed * 7919 + 31 * s + v for v in range(V)], dtype=np.int64)
    return _fit_family(family, X, y, tr, fi, va, plan.n_classes, params, seeds)


def _class_rows(keys, proj, name, values, groups, splits, probes, params, task, n_permutations, n_bootstrap, seed,
                n_folds) -> list[dict]:
    from logitleak.evaluate import _rows_for

    train, test, fit, val = splits
    plan = _class_plan(name, values, groups, train, test, fit, val, n_permutations, n_bootstrap, seed, n_folds)
    n, V, S = len(plan.codes), plan.n_variants, train.shape[0]
    F = len(keys)
    rows = []
    n_groups = None if groups is None else int(len(np.unique(groups)))
    for fam in probes:
        lp = np.zeros((F, V, n), np.float32)
        pr = np.zeros((F, V, n), np.int64)
        C = np.full((F, S), np.nan)
        for s in range(S):
            X = torch.as_tensor(np.stack([proj[k][s] for k in keys]))
            logp, Cs = _fit_classes(fam, X, plan, s, params.get(fam, {}), seed)       # (F, n, V, K)
            yt = torch.as_tensor(plan.labels.T.copy()).clamp(0, plan.n_classes - 1)[None, :, :, None]
            lpy = torch.gather(logp, -1, yt.expand(F, -1, -1, -1)).squeeze(-1).float().numpy()   # (F, n, V)
            pred = logp.argmax(-1).numpy()
            te = test[s]
            lp[:, :, te] = lpy[:, te].transpose(0, 2, 1)
            pr[:, :, te] = pred[:, te].transpose(0, 2, 1)
            if Cs is not None:
                C[:, s] = Cs[:, 0].double().numpy()
        rows += _rows_for(plan, keys, [k[2] for k in keys], lp, pr, C if fam == "linear" else None, fam, task,
                          n_groups, S, n_permutations)
    return rows


def _numeric_rows(keys, proj, name, values, groups, splits, probes, params, task, n_permutations, n_bootstrap,
                  seed) -> list[dict]:
    from logitleak.regression import fit_ridge_cv, plan_regression, regression_rows
    from logitleak.regression_mlp import MLP_KEYS, fit_mlp_regression

    train, test, fit, val = splits
    plan = plan_regression(name, values, groups=groups, n_permutations=n_permutations, n_bootstrap=n_bootstrap,
                           seed=seed)
    Y = torch.as_tensor(plan.values.T.copy(), dtype=torch.float64)
    F, B, n, S = len(keys), Y.shape[1], Y.shape[0], train.shape[0]
    rows = []
    for fam in probes:
        pred, s2 = np.zeros((F, B, n)), np.zeros((F, B, n))
        alpha = np.zeros((F, B, S))
        for s in range(S):
            X = torch.as_tensor(np.stack([proj[k][s] for k in keys]), dtype=torch.float64)
            one = tuple(m[s:s + 1] for m in (train, test, fit, val))
            if fam == "linear":
                p, v, a = fit_ridge_cv(X, Y, *one)
                alpha[:, :, s] = a[:, :, 0]
            else:
                opts = {k: x for k, x in params.get(fam, {}).items() if k in MLP_KEYS}
                p, v = fit_mlp_regression(X, Y, *one, seed=seed, **opts)
            pred[:, :, test[s]] = p[:, :, test[s]]
            s2[:, :, test[s]] = v[:, :, test[s]]
        rows += regression_rows(plan, keys, [k[2] for k in keys], pred, s2, alpha if fam == "linear" else None, fam,
                                train, test, groups, task, n_permutations)
    return rows


def evaluate_fold_levels(features: Mapping, labels: Mapping[str, np.ndarray], *, groups=None, task_attribute=None,
                         probes: Sequence[str] = ("linear", "mlp"), n_folds: int = 5, n_permutations: int = 100,
                         n_bootstrap: int = 1000, seed: int = 0, probe_params: Mapping | None = None,
                         **_ignored) -> pd.DataFrame:
    """Rows for fold-projected feature sets (``pca``), class and numeric attributes alike, with
    every column :func:`logitleak.evaluate.evaluate_sweep` / :func:`~logitleak.regression.evaluate_regression` give."""
    from logitleak.evaluate import _check_features
    from logitleak.regression import is_numeric_labels, shared_splits

    n = len(next(iter(labels.values())))
    features = {tuple(k): _check_features(tuple(k), X, n) for k, X in features.items()}
    groups = None if groups is None else np.asarray(groups)
    splits = shared_splits(n, groups, n_folds, seed)
    proj = _projections(features, splits[0])
    params = {fam: dict((probe_params or {}).get(fam, {})) for fam in probes}
    by_dim: dict[int, list] = {}
    for key in features:
        by_dim.setdefault(key[2], []).append(key)
    rows: dict[tuple, dict] = {}
    common = dict(groups=groups, splits=splits, probes=probes, params=params, task=task_attribute,
                  n_permutations=n_permutations, n_bootstrap=n_bootstrap, seed=seed)
    for d, keys in by_dim.items():
        for name, values in labels.items():
            if is_numeric_labels(values):
                out = _numeric_rows(keys, proj, name, values, **common)
            else:
                out = _class_rows(keys, proj, name, values, **common, n_folds=n_folds)
            for r in out:
                rows[((r["level"], r["layer"], r["k"]), r["attribute"], r["probe"])] = r
    ordered = [rows[(key, a, fam)] for key in features for a in labels for fam in probes]
    return to_frame(ordered)
