"""Regression probes for numeric attributes (a box, a centre, an area): held-out R², error and bits.

:func:`evaluate_regression` is the numeric twin of :func:`logitleak.probing.sweep.evaluate_sweep`
(which hands numeric attributes here). For every attribute it builds one *plan*: the real values,
a control relabelling and ``n_permutations`` permuted relabellings ("variants"), all sharing one
label-free grouped k-fold split and, inside every training fold, one inner split. Because the
splits are shared, the ridge probe is fitted for all variants, all strengths and all feature sets
of one width at once: one eigendecomposition per (feature set, fold), then every variant is one
more column of a matrix product, so the permutation test costs columns, not refits.

Families:

* ``linear``: ridge regression on features standardised on the training rows, its strength
  chosen per (feature set, variant, fold) on the inner split of the training fold only;
* ``mlp``: one hidden ReLU layer (:mod:`logitleak.probing.regression_mlp`).

Measures, all held out: ``r2`` (``1 - SSE / SSE_baseline``, the baseline predicting the training
fold's mean), ``mae`` in the attribute's units beside ``baseline_mae``, information in bits under
a Gaussian predictive family ``v_info_bits = ½·log₂(MSE_baseline / MSE)`` (so bits compare with
the categorical rows' V-information), group-bootstrap intervals for R² and bits, the p-value of the held-out gain test
(:mod:`logitleak.probing.heldout`; the default, ``p_test = 'heldout'``) or, with permutations, of the
permutation test (refits on permuted values, ``p_test = 'permutation'``), and a control task
giving selectivity (``r2 - control_r2``).

The held-out test scores the folds ``1..S-1`` of the shared split with probes trained on the
folds before them (forward chaining, like the classifiers). A sample of block ``b`` gains
``(y_i - ȳ_b)(ŷ_i - mean_b ŷ)``: the Gaussian log-likelihood gain of its prediction over the
training-fold mean, doubly centred within the block (what is left of ``(y - ȳ)² - (y - ŷ)²``
once the terms that no assignment of the block's values changes are removed), so under
"values independent of features" its expectation is exactly 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from logitleak.decisions.multiplicity import PERMUTATION_TEST
from logitleak.errors import LogitleakError
from logitleak.probing import metrics as M
from logitleak.probing.families import REGRESSION_MLP_OPTIONS, check_probe_params
from logitleak.probing.permutations import permutation_index, permutation_key, permuted
from logitleak.probing.rows import permutation_columns
from logitleak.probing.splits import check_features, seeded_rng
from logitleak.results import to_frame

ALPHAS: tuple[float, ...] = tuple(10.0 ** np.arange(-5, 3))
"""Ridge strengths tried, as multiples of the number of fitting rows (features are standardised)."""

REGRESSION_COLUMNS: tuple[str, ...] = (
    "target", "r2", "r2_ci_low", "r2_ci_high", "mae", "baseline_mae", "mse", "baseline_mse", "control_r2",
    "gauss_gain_bits", "p_test", "p_value_heldout", "p_value_permutation", "v_info_p_value", "n_permutations",
    "n_folds", "n_groups", "ridge_alpha", "permutation_stats", "permutation_key",
)
"""Columns regression rows add after ``RESULT_COLUMNS`` (``target`` is ``"numeric"``)."""


def is_numeric_labels(values) -> bool:
    """A label array that a regression probe reads: floating-point values."""
    return np.asarray(values).dtype.kind == "f"


def split_numeric(labels: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
    """``(numeric, categorical)`` label dicts: float arrays are numeric, everything else classes."""
    numeric = {a: v for a, v in labels.items() if is_numeric_labels(v)}
    return numeric, {a: v for a, v in labels.items() if a not in numeric}


def forward_gains(y: np.ndarray, pred: np.ndarray, block: np.ndarray) -> np.ndarray:
    """``(F, n)`` centred held-out gains ``(y_i - ȳ_b)(ŷ_i - mean_b ŷ)`` of forward-chained
    predictions ``pred`` ``(F, n)`` for the samples of each block ``b >= 1`` (NaN elsewhere),
    weighted like the classifiers' (:func:`logitleak.probing.heldout.block_weights`)."""
    from logitleak.probing.heldout import block_weights

    out = np.full(pred.shape, np.nan)
    for b in np.unique(block[block >= 1]):
        rows = block == b
        yc = y[rows] - y[rows].mean()
        out[:, rows] = yc[None] * (pred[:, rows] - pred[:, rows].mean(1, keepdims=True))
    return out * block_weights(np.where(block >= 1, block, -1))[None]


# --------------------------------------------------------------------------------------------
# plans


def _control_values(y: np.ndarray, rng: np.random.Generator, groups) -> np.ndarray:
    """Control task: one fixed random value per type (group, else sample), drawn from the real
    values' distribution by permuting the per-type means."""
    if groups is None:
        return y[rng.permutation(len(y))]
    _, inv = np.unique(np.asarray(groups), return_inverse=True)
    unit = np.bincount(inv, weights=y) / np.bincount(inv)
    return unit[rng.permutation(len(unit))][inv]


@dataclass
class RegressionPlan:
    """All relabellings of one numeric attribute; variant 0 real, 1 control, 2.. permutations."""

    name: str
    values: np.ndarray      # (V, n) float64
    boot: np.ndarray        # (B, n) resampling weights over all rows (every row is tested once)
    permutation_key: str | None = None   # names the shared permutations of variants 2.. (None: none)

    @property
    def n_variants(self) -> int:
        return self.values.shape[0]


def shared_splits(n: int, groups, n_folds: int, seed: int, val_fraction: float = 0.2):
    """Label-free grouped k-fold splits and one inner (fit, validation) split per training fold:
    ``(train (S, n), test (S, n), inner_fit (S, n), inner_val (S, n))`` bool arrays."""
    from logitleak.probing.splits import cv_splits, stratified_holdout

    zeros = np.zeros(n, dtype=np.int64)
    splits = cv_splits(zeros, groups, n_folds, None, seed)
    S = len(splits)
    train, test = np.zeros((S, n), bool), np.zeros((S, n), bool)
    fit, val = np.zeros((S, n), bool), np.zeros((S, n), bool)
    inner = seeded_rng(seed, "regression-inner")
    for s, (tr, te) in enumerate(splits):
        if len(tr) < 3 or len(te) == 0:
            raise LogitleakError(f"A regression split came out with {len(tr)} training and {len(te)} test rows; give more "
                                 "samples or groups, or use fewer folds.")
        train[s, tr], test[s, te] = True, True
        fi, va = stratified_holdout(zeros, val_fraction, inner, groups, rows=tr)
        if len(va) == 0 or len(fi) < 2:
            fi, va = tr, tr
        fit[s, fi], val[s, va] = True, True
    return train, test, fit, val


def forward_fits(test: np.ndarray, groups, seed: int, val_fraction: float = 0.2):
    """The forward-chained fits of the held-out test on the shared split: ``(block (n,), [(train,
    test, inner_fit, inner_val) (1, n) masks for blocks 1..S-2])``; block ``S-1`` is scored by
    cross-validation split ``S-1`` (trained on folds ``0..S-2``)."""
    from logitleak.probing.heldout import forward_chain
    from logitleak.probing.splits import stratified_holdout

    S, n = test.shape
    fold = np.argmax(test, axis=0)
    block = np.where(fold >= 1, fold, -1)
    rng = seeded_rng(seed, "regression-forward")
    fits = []
    for b, (tr, te) in enumerate(forward_chain(fold, S), start=1):
        if b == S - 1:
            continue
        fi, va = stratified_holdout(np.zeros(n, np.int64), val_fraction, rng, groups, rows=np.flatnonzero(tr))
        if len(va) == 0 or len(fi) < 2:
            fi = va = np.flatnonzero(tr)
        masks = [tr, te, np.isin(np.arange(n), fi), np.isin(np.arange(n), va)]
        fits.append(tuple(m[None] for m in masks))
    return block, fits


def plan_regression(name: str, values, *, groups=None, n_permutations: int = 0, n_bootstrap: int = 1000,
                    seed: int = 0) -> RegressionPlan:
    """Real values, control task and permutations of one numeric attribute (validated)."""
    y = np.asarray(values, dtype=np.float64)
    if y.ndim != 1:
        raise LogitleakError(f"Values of numeric attribute '{name}' must be one-dimensional, got shape {y.shape}.")
    if not np.isfinite(y).all():
        raise LogitleakError(f"Numeric attribute '{name}' has {int((~np.isfinite(y)).sum())} missing or infinite values; "
                             "fill them or drop those samples before probing.")
    if np.ptp(y) == 0:
        raise LogitleakError(f"Numeric attribute '{name}' takes a single value ({y[0]:g}); a probe needs variation, so "
                             "drop this attribute or add samples with other values.")
    groups = None if groups is None else np.asarray(groups)
    variants = [y, _control_values(y, seeded_rng(seed, name, "control"), groups)]
    variants += list(permuted(name, y, permutation_index(len(y), n_permutations, seed, groups), groups))
    boot = M.bootstrap_weights(len(y), n_bootstrap, seeded_rng(seed, name, "bootstrap"), groups)
    key = permutation_key(seed, len(y), n_permutations, groups) if n_permutations else None
    return RegressionPlan(name, np.stack(variants), boot, key)


# --------------------------------------------------------------------------------------------
# ridge, batched


def ridge_path(Xf: torch.Tensor, Yf: torch.Tensor, Xe: torch.Tensor, lambdas: torch.Tensor) -> torch.Tensor:
    """Ridge predictions for every strength at once: ``Xf`` ``(F, m, d)`` fitting rows, ``Yf``
    ``(m, B)`` targets (B columns fitted together), ``Xe`` ``(F, r, d)`` rows to predict,
    ``lambdas`` ``(L,)``. Intercept unpenalised (fit rows centred). Returns ``(F, L, r, B)``.
    Primal (``d x d`` eigendecomposition) or dual (``m x m``), whichever is smaller."""
    mu = Xf.mean(1, keepdim=True)
    Xc, Xec = Xf - mu, Xe - mu
    ybar = Yf.mean(0, keepdim=True)
    Yc = Yf - ybar
    d, m = Xf.shape[2], Xf.shape[1]
    if d <= m:
        evals, Q = torch.linalg.eigh(Xc.transpose(1, 2) @ Xc)              # (F, d), (F, d, d)
        Z = Q.transpose(1, 2) @ (Xc.transpose(1, 2) @ Yc)                   # (F, d, B)
        E = Xec @ Q                                                         # (F, r, d)
    else:
        evals, U = torch.linalg.eigh(Xc @ Xc.transpose(1, 2))              # (F, m), (F, m, m)
        Z = U.transpose(1, 2) @ Yc                                          # (F, m, B)
        E = (Xec @ Xc.transpose(1, 2)) @ U                                  # (F, r, m)
    evals = evals.clamp_min(0)
    out = []
    for lam in lambdas:
        out.append(E @ (Z / (evals + lam).unsqueeze(-1)) + ybar)
    return torch.stack(out, dim=1)


def _standardised(X: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    mu = X[:, rows].mean(1, keepdim=True)
    sd = X[:, rows].std(1, correction=0, keepdim=True).clamp_min(1e-6)
    return (X - mu) / sd


def fit_ridge_cv(X: torch.Tensor, Y: torch.Tensor, train, test, inner_fit, inner_val,
                 alphas: Sequence[float] = ALPHAS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Out-of-fold ridge predictions for ``F`` feature sets and ``B`` target columns.

    ``X`` ``(F, n, d)``, ``Y`` ``(n, B)``; split masks ``(S, n)``. Per (feature set, column, fold)
    the strength is the one with the lowest inner-validation MSE. Returns ``(pred (F, B, n),
    sigma2 (F, B, n), alpha (F, B, S))``: the held-out predictions, the predictive variance (the
    chosen strength's inner-validation MSE, i.e. measured on training rows only) at every row of
    that fold's test set, and the chosen strength."""
    F, n, _ = X.shape
    B = Y.shape[1]
    S = train.shape[0]
    pred = np.zeros((F, B, n))
    sigma2 = np.zeros((F, B, n))
    alpha = np.zeros((F, B, S))
    a_t = torch.as_tensor(alphas, dtype=X.dtype)
    for s in range(S):
        tr, te = torch.as_tensor(train[s]), torch.as_tensor(test[s])
        fi, va = torch.as_tensor(inner_fit[s]), torch.as_tensor(inner_val[s])
        Xs = _standardised(X, tr)
        inner = ridge_path(Xs[:, fi], Y[fi], Xs[:, va], a_t * int(fi.sum()))       # (F, L, r, B)
        mse = ((inner - Y[va].unsqueeze(0).unsqueeze(0)) ** 2).mean(2)             # (F, L, B)
        best = mse.argmin(1)                                                         # (F, B)
        outer = ridge_path(Xs[:, tr], Y[tr], Xs[:, te], a_t * int(tr.sum()))        # (F, L, r, B)
        chosen = torch.gather(outer, 1, best[:, None, None, :].expand(-1, 1, outer.shape[2], -1))[:, 0]
        te_idx = np.flatnonzero(test[s])
        pred[:, :, te_idx] = chosen.transpose(1, 2).numpy()
        sigma2[:, :, te_idx] = torch.gather(mse, 1, best[:, None, :])[:, 0].clamp_min(1e-12).numpy()[..., None]
        alpha[:, :, s] = a_t[best].numpy()
    return pred, sigma2, alpha


# --------------------------------------------------------------------------------------------
# rows


def _gauss_logpdf_bits(y, mean, var):
    return -0.5 * (np.log(2 * np.pi * var) + (y - mean) ** 2 / var) / M.LN2


def _boot_ratio(weights: np.ndarray, num: np.ndarray, den: np.ndarray, fn) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of ``fn(Σ w·num, Σ w·den)`` over bootstrap rows; ``num`` ``(n, F)``."""
    if weights.shape[0] == 0:
        nan = np.full(num.shape[1], np.nan)
        return nan, nan.copy()
    w = weights.astype(np.float64)
    vals = fn(w @ num, (w @ den)[:, None])
    lo, hi = np.nanquantile(vals, [0.025, 0.975], axis=0)
    return lo, hi


def regression_rows(plan: RegressionPlan, keys, dims, pred: np.ndarray, sigma2: np.ndarray, alpha: np.ndarray | None,
                    family: str, train: np.ndarray, test: np.ndarray, groups, task_attribute, n_permutations,
                    forward: np.ndarray | None = None, block: np.ndarray | None = None) -> list[dict]:
    """Result rows of one attribute x family; ``pred``/``sigma2`` ``(F, V, n)`` out-of-fold,
    ``forward`` ``(F, n)`` the forward-chained predictions of the real values scoring ``block``."""
    from logitleak.probing.heldout import TEST_NAME, heldout_pvalues
    Y = plan.values                                                     # (V, n)
    base = np.zeros_like(Y)
    base_var = np.zeros_like(Y)
    for s in range(train.shape[0]):
        tr, te = train[s], test[s]
        base[:, te] = Y[:, tr].mean(1, keepdims=True)
        base_var[:, te] = np.maximum(Y[:, tr].var(1, ddof=1, keepdims=True), 1e-12)
    se = (pred - Y[None]) ** 2                                          # (F, V, n)
    se_base = (base - Y) ** 2                                           # (V, n)
    sse, sse_base = se.sum(-1), se_base.sum(-1)                         # (F, V), (V,)
    r2 = 1.0 - sse / np.maximum(sse_base, 1e-300)[None]
    bits = 0.5 * np.log2(np.maximum(sse_base, 1e-300)[None] / np.maximum(sse, 1e-300))
    gains = _gauss_logpdf_bits(Y[0], pred[:, 0], sigma2[:, 0]) - _gauss_logpdf_bits(Y[0], base[0], base_var[0])[None]
    r2_lo, r2_hi = _boot_ratio(plan.boot, se[:, 0].T, se_base[0], lambda a, b: 1.0 - a / np.maximum(b, 1e-300))
    b_lo, b_hi = _boot_ratio(plan.boot, se[:, 0].T, se_base[0],
                             lambda a, b: 0.5 * np.log2(np.maximum(b, 1e-300) / np.maximum(a, 1e-300)))
    n = Y.shape[1]
    n_groups = None if groups is None else int(len(np.unique(groups)))
    p_held = (heldout_pvalues(forward_gains(Y[0], forward, block), groups) if forward is not None
              else np.full(len(keys), np.nan))
    rows = []
    for i, key in enumerate(keys):
        ae = np.abs(pred[i, 0] - Y[0])
        p_perm = M.permutation_p_value(bits[i, 0], bits[i, 2:]) if n_permutations else float("nan")
        rows.append({
            "level": key[0], "layer": key[1], "k": key[2], "attribute": plan.name, "probe": family,
            "task_relevant": task_attribute is not None and plan.name == task_attribute,
            "n": int(n), "n_classes": None, "n_features": int(dims[i]),
            "accuracy": float("nan"), "balanced_accuracy": float("nan"), "macro_f1": float("nan"),
            "baseline_accuracy": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
            "p_value": p_perm if n_permutations else float(p_held[i]),
            "ce_bits": float("nan"), "entropy_bits": float("nan"),
            "v_info_bits": float(bits[i, 0]), "v_info_frac": float("nan"),
            "v_info_ci_low": float(b_lo[i]), "v_info_ci_high": float(b_hi[i]),
            "control_accuracy": float("nan"), "selectivity": float(r2[i, 0] - r2[i, 1]),
            "target": "numeric", "r2": float(r2[i, 0]), "r2_ci_low": float(r2_lo[i]), "r2_ci_high": float(r2_hi[i]),
            "mae": float(ae.mean()), "baseline_mae": float(np.abs(base[0] - Y[0]).mean()),
            "mse": float(sse[i, 0] / n), "baseline_mse": float(sse_base[0] / n), "control_r2": float(r2[i, 1]),
            "gauss_gain_bits": float(gains[i].mean()),
            "p_test": PERMUTATION_TEST if n_permutations else TEST_NAME,
            "p_value_heldout": float(p_held[i]), "p_value_permutation": p_perm,
            "v_info_p_value": p_perm,
            "n_permutations": int(n_permutations), "n_folds": int(train.shape[0]), "n_groups": n_groups,
            "ridge_alpha": float(np.median(alpha[i, 0])) if alpha is not None else float("nan"),
            **permutation_columns(bits[i], plan.permutation_key, n_permutations),
        })
    return rows


# --------------------------------------------------------------------------------------------
# the sweep


def evaluate_regression(features: Mapping[tuple, np.ndarray], values: Mapping[str, np.ndarray], *,
                        groups: np.ndarray | None = None, task_attribute: str | None = None,
                        probes: Sequence[str] = ("linear", "mlp"), n_folds: int = 5, n_permutations: int = 0,
                        n_bootstrap: int = 1000, seed: int = 0, probe_params: Mapping[str, Mapping] | None = None,
                        memory_budget: int = 1 << 30, **_ignored) -> pd.DataFrame:
    """Probe every feature set for every numeric attribute with every family (see the module
    docstring). ``features``: ``{(level, layer, k): (n, d)}``; ``values``: ``{attribute: (n,)
    floats}``. Rows in the order feature set, attribute, family."""
    from logitleak.probing.regression_mlp import fit_mlp_regression
    if not values:
        return to_frame([])
    n = len(next(iter(values.values())))
    for a, v in values.items():
        if len(v) != n:
            raise LogitleakError(f"Numeric attribute '{a}' has {len(v)} values but others have {n}; pass one value per sample.")
    if not features:
        raise LogitleakError("No feature sets were given; pass at least one (level, layer, k) -> array.")
    features = {tuple(k): check_features(tuple(k), X, n) for k, X in features.items()}
    groups = None if groups is None else np.asarray(groups)
    if n_permutations < 0 or n_bootstrap < 0:
        raise LogitleakError("n_permutations and n_bootstrap must be zero or positive.")
    plans = [plan_regression(a, v, groups=groups, n_permutations=n_permutations, n_bootstrap=n_bootstrap, seed=seed)
             for a, v in values.items()]
    train, test, fit, val = shared_splits(n, groups, n_folds, seed)
    block, fwd_fits = forward_fits(test, groups, seed)
    Y = torch.as_tensor(np.concatenate([p.values for p in plans]).T.copy(), dtype=torch.float64)   # (n, ΣV)
    offsets = np.cumsum([0] + [p.n_variants for p in plans])
    by_dim: dict[int, list] = {}
    for key, X in features.items():
        by_dim.setdefault(np.asarray(X).shape[1], []).append(key)
    params = check_probe_params(probe_params, probes)
    results: dict[tuple, dict] = {}
    for d, keys in by_dim.items():
        per = n * d * 8 * 4 + min(d, n) ** 2 * 8 * 3 + n * Y.shape[1] * 8 * (len(ALPHAS) + 4)
        chunk = max(1, int(memory_budget // max(per, 1)))
        for c0 in range(0, len(keys), chunk):
            kc = keys[c0:c0 + chunk]
            X = torch.as_tensor(np.stack([np.asarray(features[k], dtype=np.float64) for k in kc]))
            for fam in probes:
                if fam == "linear":
                    alphas = params[fam].get("alphas", ALPHAS)

                    def fit_fn(X_, Y_, tr, te, fi, va):
                        return fit_ridge_cv(X_, Y_, tr, te, fi, va, alphas)
                elif fam == "mlp":
                    opts = {k: v for k, v in params[fam].items() if k in REGRESSION_MLP_OPTIONS}

                    def fit_fn(X_, Y_, tr, te, fi, va):
                        return fit_mlp_regression(X_, Y_, tr, te, fi, va, seed=seed, **opts) + (None,)
                else:
                    raise LogitleakError(f"Unknown probe family '{fam}'; use linear or mlp.")
                pred, s2, alpha = fit_fn(X, Y, train, test, fit, val)
                forward = pred[:, offsets[:-1]].copy()          # (F, A, n): block S-1 from CV split S-1
                for masks in fwd_fits:                           # the other forward-chained blocks, real values
                    p_b = fit_fn(X, Y[:, offsets[:-1]], *masks)[0]
                    te = masks[1][0]
                    forward[:, :, te] = p_b[:, :, te]
                for j, plan in enumerate(plans):
                    sl = slice(offsets[j], offsets[j + 1])
                    rows = regression_rows(plan, kc, [d] * len(kc), pred[:, sl], s2[:, sl],
                                           None if alpha is None else alpha[:, sl], fam, train, test, groups,
                                           task_attribute, n_permutations, forward[:, j], block)
                    for key, row in zip(kc, rows):
                        results[(key, plan.name, fam)] = row
    ordered = [results[(key, a, fam)] for key in features for a in values for fam in probes]
    return to_frame(ordered)
