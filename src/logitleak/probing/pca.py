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

from logitleak.errors import LogitleakError
from logitleak.levels.table import FOLD_LEVELS
from logitleak.probing import metrics as M
from logitleak.probing.families import REGRESSION_MLP_OPTIONS, check_probe_params, control_reuses_c, fit_family
from logitleak.probing.permutations import permutation_index, permutation_key, permuted
from logitleak.results import to_frame


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


def _fits(splits, block, fwd):
    """Every fit the probes make: ``(train, test, inner_fit, inner_val, cv)`` masks ``(n,)``; the
    cross-validation splits (all variants) then the extra forward-chained fits (real labels only)."""
    train, test, fit, val = splits
    out = [(train[s], test[s], fit[s], val[s], True) for s in range(train.shape[0])]
    out += [(tr[0], te[0], fi[0], va[0], False) for tr, te, fi, va in fwd]
    return out


def _projections(features: Mapping, fits) -> dict:
    """``{key: [fit -> (n, d)]}``: one SVD per distinct residual array and fit, on its training rows."""
    by_array: dict[int, list] = {}
    for key, X in features.items():
        by_array.setdefault(id(X), []).append(key)
    out = {}
    train = np.stack([f[0] for f in fits])
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


def _class_plan(name, values, groups, splits, block, fwd, n_permutations, n_bootstrap, seed, n_folds):
    from logitleak.probing.plans import AttributePlan
    from logitleak.probing.splits import check_attribute, encode_labels, seeded_rng

    train, test, fit, val = splits
    classes, codes = encode_labels(name, values)
    check_attribute(name, classes, codes, groups, n_folds, None)
    K = len(classes)
    shared = permuted(name, codes, permutation_index(len(codes), n_permutations, seed, groups), groups)
    labels = np.concatenate([np.stack([codes, M.control_labels(codes, seeded_rng(seed, name, "control"), groups)]), shared])
    V, S, n = len(labels), train.shape[0], train.shape[1]

    def each(m):
        return np.broadcast_to(m, (V, S, n)).copy()

    prior = np.stack([M.prior_loss_bits(labels[v], train, test, K) for v in range(V)])
    tested = test.any(0)[None].repeat(V, 0)
    boot = M.bootstrap_weights(int(tested[0].sum()), n_bootstrap, seeded_rng(seed, name, "bootstrap"),
                               None if groups is None else np.asarray(groups)[tested[0]])
    seq = [np.concatenate([f[i] for f in fwd]) if fwd else np.zeros((0, n), bool) for i in range(4)]
    source = {b: ("cv", S - 1) if b == S - 1 else ("seq", b - 1) for b in range(1, S)}
    key = permutation_key(seed, n, n_permutations, groups) if n_permutations else None
    return AttributePlan(name, classes, codes, labels, each(train), each(test), each(fit), each(val), prior, tested,
                         M.majority_baseline(codes, train, test, K), boot, *seq, block, source, key)


def _class_rows(keys, proj, fits, name, values, groups, splits, block, fwd, probes, params, task, n_permutations,
                n_bootstrap, seed, n_folds) -> list[dict]:
    from logitleak.probing.heldout_exact import heldout_test_pvalues, row_seed
    from logitleak.probing.intervals import optimism
    from logitleak.probing.rows import result_rows

    plan = _class_plan(name, values, groups, splits, block, fwd, n_permutations, n_bootstrap, seed, n_folds)
    n, V, S, K = len(plan.codes), plan.n_variants, splits[0].shape[0], plan.n_classes
    F = len(keys)
    n_groups = None if groups is None else int(len(np.unique(groups)))
    rows = []
    for fam in probes:
        lp = np.zeros((F, V, n), np.float32)
        pr = np.zeros((F, V, n), np.int64)
        lk = np.zeros((F, n, K))
        C = np.full((F, S), np.nan)
        seen, n_seen = np.zeros((F, n)), np.zeros(n)          # in-sample log-probabilities of the real labels
        for f_i, (tr, te, fi, va, cv) in enumerate(fits):
            X = torch.as_tensor(np.stack([proj[k][f_i] for k in keys]))
            y = plan.labels if cv else plan.labels[:1]
            P = y.shape[0]
            masks = [np.broadcast_to(m, (P, n)).copy() for m in (tr, fi, va)]
            seeds = np.array([seed * 7919 + 31 * f_i + v for v in range(P)], dtype=np.int64)
            fam_params = params.get(fam, {})
            if cv and P > 1 and control_reuses_c(fam, fam_params):
                # the control task reuses the C chosen for the real labels (as in classify._fit_order)
                rest = [v for v in range(P) if v != 1]
                logp_r, Cs_r, _ = fit_family(fam, X, y[rest], *(m[rest] for m in masks), K, fam_params, seeds[rest])
                logp_c, _, _ = fit_family(fam, X, y[1:2], *(m[1:2] for m in masks), K, fam_params, seeds[1:2],
                                           C_fixed=Cs_r[:, :1])
                logp = torch.cat([logp_r[:, :, :1], logp_c, logp_r[:, :, 1:]], 2)
                Cs = torch.cat([Cs_r[:, :1], Cs_r[:, :1], Cs_r[:, 1:]], 1)
            else:
                logp, Cs, _ = fit_family(fam, X, y, masks[0], masks[1], masks[2], K, fam_params, seeds)
            yt = torch.as_tensor(y.T.copy()).clamp(0, K - 1)[None, :, :, None]
            lpy = torch.gather(logp, -1, yt.expand(F, -1, -1, -1)).squeeze(-1).float().numpy()   # (F, n, P)
            scored = (plan.block >= 1) & te
            if cv and f_i == S - 1 or not cv:                  # this fit scores a forward-chained block
                lk[:, scored] = logp[:, scored, 0].double().numpy()
            if cv:
                fitted = tr if fam == "linear" else fi             # the rows the kept model fitted
                seen[:, fitted] += lpy[:, fitted, 0]
                n_seen[fitted] += 1
                lp[:, :, te] = lpy[:, te].transpose(0, 2, 1)
                pr[:, :, te] = logp.argmax(-1).numpy()[:, te].transpose(0, 2, 1)
                if Cs is not None:
                    C[:, f_i] = Cs[:, 0].double().numpy()
        p_held = heldout_test_pvalues(lk, plan.codes, plan.block, groups, [row_seed(seed, name, *k) for k in keys])
        opt = optimism(lp[:, 0], seen, n_seen, plan.tested[0])
        rows += result_rows(plan, keys, [k[2] for k in keys], lp, pr, p_held, opt, C if fam == "linear" else None, fam,
                            task_attribute=task, n_groups=n_groups, n_folds_eff=S, n_permutations=n_permutations)
    return rows


def _numeric_rows(keys, proj, fits, name, values, groups, splits, block, fwd, probes, params, task, n_permutations,
                  n_bootstrap, seed) -> list[dict]:
    from logitleak.probing.regression import fit_ridge_cv, plan_regression, regression_rows
    from logitleak.probing.regression_mlp import fit_mlp_regression

    train, test = splits[0], splits[1]
    plan = plan_regression(name, values, groups=groups, n_permutations=n_permutations, n_bootstrap=n_bootstrap,
                           seed=seed)
    Y = torch.as_tensor(plan.values.T.copy(), dtype=torch.float64)
    F, B, n, S = len(keys), Y.shape[1], Y.shape[0], train.shape[0]
    rows = []
    for fam in probes:
        pred, s2 = np.zeros((F, B, n)), np.zeros((F, B, n))
        alpha = np.zeros((F, B, S))
        forward = np.zeros((F, n))
        for f_i, (tr, te, fi, va, cv) in enumerate(fits):
            X = torch.as_tensor(np.stack([proj[k][f_i] for k in keys]), dtype=torch.float64)
            one = tuple(m[None] for m in (tr, te, fi, va))
            Yf = Y if cv else Y[:, :1]
            if fam == "linear":
                p, v, a = fit_ridge_cv(X, Yf, *one)
            else:
                opts = {k: x for k, x in params.get(fam, {}).items() if k in REGRESSION_MLP_OPTIONS}
                p, v = fit_mlp_regression(X, Yf, *one, seed=seed, **opts)
                a = None
            if cv and f_i == S - 1 or not cv:
                forward[:, te] = p[:, 0, te]
            if cv:
                pred[:, :, te], s2[:, :, te] = p[:, :, te], v[:, :, te]
                if a is not None:
                    alpha[:, :, f_i] = a[:, :, 0]
        rows += regression_rows(plan, keys, [k[2] for k in keys], pred, s2, alpha if fam == "linear" else None, fam,
                                train, test, groups, task, n_permutations, forward, block)
    return rows


def evaluate_fold_levels(features: Mapping, labels: Mapping[str, np.ndarray], *, groups=None, task_attribute=None,
                         probes: Sequence[str] = ("linear", "mlp"), n_folds: int = 5, n_permutations: int = 0,
                         n_bootstrap: int = 1000, seed: int = 0, probe_params: Mapping | None = None,
                         **_ignored) -> pd.DataFrame:
    """Rows for fold-projected feature sets (``pca``), class and numeric attributes alike, with
    every column :func:`logitleak.probing.sweep.evaluate_sweep` / :func:`~logitleak.probing.regression.evaluate_regression`
    give. Every fit (cross-validation split or forward-chained block of the held-out test) projects
    on the components of its own training rows."""
    from logitleak.probing.regression import forward_fits, is_numeric_labels, shared_splits
    from logitleak.probing.splits import check_features

    n = len(next(iter(labels.values())))
    features = {tuple(k): check_features(tuple(k), X, n) for k, X in features.items()}
    groups = None if groups is None else np.asarray(groups)
    splits = shared_splits(n, groups, n_folds, seed)
    block, fwd = forward_fits(splits[1], groups, seed)
    fits = _fits(splits, block, fwd)
    proj = _projections(features, fits)
    params = check_probe_params(probe_params, probes)
    by_dim: dict[int, list] = {}
    for key in features:
        by_dim.setdefault(key[2], []).append(key)
    rows: dict[tuple, dict] = {}
    common = dict(fits=fits, groups=groups, splits=splits, block=block, fwd=fwd, probes=probes, params=params,
                  task=task_attribute, n_permutations=n_permutations, n_bootstrap=n_bootstrap, seed=seed)
    for d, keys in by_dim.items():
        for name, values in labels.items():
            if is_numeric_labels(values):
                out = _numeric_rows(keys, proj, name=name, values=values, **common)
            else:
                out = _class_rows(keys, proj, name=name, values=values, **common, n_folds=n_folds)
            for r in out:
                rows[((r["level"], r["layer"], r["k"]), r["attribute"], r["probe"])] = r
    ordered = [rows[(key, a, fam)] for key in features for a in labels for fam in probes]
    return to_frame(ordered)
