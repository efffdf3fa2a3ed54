"""The attacker's view of one result row: ROC and low-FPR figures and per-record exposure, with intervals.

Computed from the row's out-of-fold posteriors (every tested sample scored by a probe that never
saw its label), for the levels an attacker sees (the sweep's ``attack_levels``):

* ``auc``, ``tpr_at_1pct_fpr``, ``tpr_at_0_1pct_fpr`` per attribute (the mean over its values,
  one-vs-rest; :mod:`logitleak.probing.roc`), each with ``_ci_low`` / ``_ci_high``;
* ``exposed_posterior_0_9`` / ``_0_5`` beside ``exposed_prior_0_9`` / ``_0_5``
  (:mod:`logitleak.probing.exposure`);
* detail columns the audit moves to their own files (:data:`DETAIL_COLUMNS`): ``roc_values`` (JSON:
  the same figures per attribute value), ``roc_curve`` (the per-attribute TPR at
  :data:`~logitleak.probing.roc.CURVE_FPR`) and ``posterior_true`` (each sample's posterior on its
  true value, NaN where untested).

Intervals. The bootstrap resamples the tested samples with their predictions held fixed, which
misses one source of variance: in cross-validation the probe that scores fold ``f`` was trained on
the other folds' labels, so the folds' figures are positively correlated. For a probe that is
linear in its training labels the pooled figure's null variance is exactly twice the per-sample
variance (the argument of :mod:`logitleak.probing.heldout`); the half-widths of these intervals
are therefore scaled by ``sqrt(2)`` (:data:`CV_VARIANCE_RATIO`) about the estimate, which keeps
their nominal coverage on null data (``tests/test_attack_calibration.py``) where the plain
percentile interval covers about 84%.
"""

from __future__ import annotations

import json
import math

import numpy as np

from logitleak.probing.exposure import exposure_columns, threshold_name
from logitleak.probing.roc import CURVE_FPR, FPR_POINTS, macro, one_vs_rest, percentile_interval

ROC_RESAMPLES = 200
"""Bootstrap resamples behind the attacker's view's intervals (the first of the row's resamples; also the cost
curves'): each costs a pass over every tested sample per attribute value, so the attacker's view takes 200
rather than the accuracy interval's 1,000 (a fifth of the cost; the calibration test checks the intervals'
coverage with them)."""
CV_VARIANCE_RATIO = 2.0
"""The null variance of a pooled cross-validated figure over what resampling its predictions shows."""
FPR_NAMES: tuple[str, ...] = tuple(f"tpr_at_{threshold_name(100 * a)}pct_fpr" for a in FPR_POINTS)
"""The column of each of :data:`~logitleak.probing.roc.FPR_POINTS`: ``tpr_at_1pct_fpr``, ``tpr_at_0_1pct_fpr``."""
SUMMARY_COLUMNS: tuple[str, ...] = ("auc", "auc_ci_low", "auc_ci_high") + tuple(
    f"{n}{s}" for n in FPR_NAMES for s in ("", "_ci_low", "_ci_high"))
DETAIL_COLUMNS: tuple[str, ...] = ("roc_values", "roc_curve", "posterior_true")
"""Per-value, per-curve-point and per-sample columns (lists / JSON): moved off the results table."""


def widened(estimate: np.ndarray, lo: np.ndarray, hi: np.ndarray, low: float = 0.0,
            high: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A percentile interval's half-widths scaled by ``sqrt(CV_VARIANCE_RATIO)`` about ``estimate``,
    clipped to ``[low, high]`` (see the module docstring)."""
    r = math.sqrt(CV_VARIANCE_RATIO)
    est = np.asarray(estimate, dtype=np.float64)
    return (np.clip(est - r * (est - lo), low, high), np.clip(est + r * (hi - est), low, high))


def _figures(proba: np.ndarray, codes: np.ndarray, K: int, boot: np.ndarray) -> dict:
    """Point estimates and widened intervals of per-value and per-attribute AUC / TPR."""
    auc_v, tpr_v = one_vs_rest(proba, codes, K)
    out = {"auc_v": auc_v[0], "tpr_v": tpr_v[0], "auc": macro(auc_v)[0], "tpr": macro(tpr_v)[0]}
    if boot.shape[0]:
        bauc_v, btpr_v = one_vs_rest(proba, codes, K, boot)
        for name, est, draws in (("auc_v", out["auc_v"], bauc_v), ("tpr_v", out["tpr_v"], btpr_v),
                                 ("auc", out["auc"], macro(bauc_v)), ("tpr", out["tpr"], macro(btpr_v))):
            out[name + "_ci"] = widened(est, *percentile_interval(draws))
    else:
        for name in ("auc_v", "tpr_v", "auc", "tpr"):
            nan = np.full(np.shape(out[name]), np.nan)
            out[name + "_ci"] = (nan, nan.copy())
    return out


def _num(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def attack_columns(proba: np.ndarray, codes: np.ndarray, classes: np.ndarray, tested: np.ndarray,
                   prior: np.ndarray, boot: np.ndarray) -> dict:
    """The attacker-view columns of one row (see the module docstring).

    ``proba`` ``(n, K)`` out-of-fold posteriors (rows of untested samples are ignored), ``codes``
    ``(n,)`` the true values, ``classes`` their names, ``tested`` ``(n,)`` the samples scored,
    ``prior`` ``(n,)`` each sample's training-fold prior on its true value, ``boot`` ``(B, n_tested)``
    the bootstrap resamples of the tested samples."""
    K = len(classes)
    p, y = np.asarray(proba, dtype=np.float64)[tested], np.asarray(codes)[tested]
    boot = boot[:ROC_RESAMPLES]
    f = _figures(p, y, K, boot)
    row = {"auc": float(f["auc"]), "auc_ci_low": float(f["auc_ci"][0]), "auc_ci_high": float(f["auc_ci"][1])}
    for j, name in enumerate(FPR_NAMES):
        row[name] = float(f["tpr"][j])
        row[f"{name}_ci_low"], row[f"{name}_ci_high"] = float(f["tpr_ci"][0][j]), float(f["tpr_ci"][1][j])
    post = p[np.arange(len(y)), y]
    ex = exposure_columns(post, np.asarray(prior, dtype=np.float64)[tested], boot)
    for key in [k for k in ex if k.startswith("exposed_posterior_") and not k.endswith(("_low", "_high"))]:
        ex[f"{key}_ci_low"], ex[f"{key}_ci_high"] = (float(v) for v in widened(
            ex[key], ex[f"{key}_ci_low"], ex[f"{key}_ci_high"]))
    row.update(ex)
    values = {}
    for c in range(K):
        values[str(classes[c])] = {
            "auc": _num(f["auc_v"][c]), "auc_ci_low": _num(f["auc_v_ci"][0][c]), "auc_ci_high": _num(f["auc_v_ci"][1][c]),
            **{name: _num(f["tpr_v"][c, j]) for j, name in enumerate(FPR_NAMES)},
            "n": int((y == c).sum())}
    row["roc_values"] = json.dumps(values)
    row["roc_curve"] = [float(v) for v in macro(one_vs_rest(p, y, K, fprs=tuple(CURVE_FPR))[1])[0]]
    full = np.full(len(tested), np.nan)
    full[np.asarray(tested, dtype=bool)] = post
    row["posterior_true"] = [float(v) for v in full]
    return row

