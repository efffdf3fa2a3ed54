"""ROC figures of out-of-fold posteriors: one-vs-rest AUC and the true-positive rate at low false-positive rates.

What membership-inference auditing reports instead of an average accuracy: for each value ``c`` of
an attribute, the probe's posterior ``q_i(c)`` ranks the samples (one-vs-rest); the AUC is the
chance that a sample of value ``c`` ranks above one of another value (ties count one half), and the
TPR at FPR ``a`` is the largest share of the value's samples an attacker flags while flagging at
most a share ``a`` of the others (thresholds on the ranking, no interpolation). Per attribute both
are the unweighted mean over its values (scikit-learn's ``roc_auc_score(multi_class="ovr",
average="macro")``). Everything is computed under any number of resampling weights at once (one
bootstrap resample per row of ``weights``), so intervals come from the same resamples as the
accuracy interval.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FPR_POINTS: tuple[float, ...] = (0.01, 0.001)
"""The false-positive rates whose true-positive rate every row reports (1% and 0.1%)."""
CURVE_FPR: np.ndarray = np.logspace(-3, 0, 25)
"""The false-positive rates at which a row's ROC curve is kept for the report (log-spaced, 0.1% to 1)."""


def _groups(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(order, starts)``: the ascending sort of ``scores`` and where each run of equal scores starts."""
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    return order, starts


def roc_stats(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray | None = None,
              fprs: Sequence[float] = FPR_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """AUC ``(B,)`` and TPR at each of ``fprs`` ``(B, len(fprs))`` of ``scores`` ``(n,)`` for the
    ``positive`` ``(n,)`` samples against the others, under each row of ``weights`` ``(B, n)``
    (multiplicities; ``None``: every sample once, ``B = 1``). NaN where a resample has no positive
    or no negative sample."""
    scores = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    w = np.ones((1, len(scores))) if weights is None else np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order, starts = _groups(scores)
    wo = w[:, order]
    wp, wn = wo * pos[order], wo * ~pos[order]                            # (B, G) positive / negative weight per score
    if len(starts) < len(scores):                                         # tied scores: one entry per distinct score
        wp, wn = np.add.reduceat(wp, starts, axis=1), np.add.reduceat(wn, starts, axis=1)
    P, N = wp.sum(1), wn.sum(1)
    below = np.cumsum(wn, axis=1) - wn                                    # negatives strictly below each score
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (wp * (below + 0.5 * wn)).sum(1) / (P * N)
        # flag every sample scoring at least the g-th highest score: descending cumulative sums, both
        # non-decreasing, so the best TPR within an FPR is the TPR at the last threshold inside it
        tp = np.cumsum(wp[:, ::-1], axis=1) / P[:, None]
        fp = np.cumsum(wn[:, ::-1], axis=1) / N[:, None]
    out = np.zeros((len(w), len(fprs)))
    rows = np.arange(len(w))
    for j, a in enumerate(fprs):
        inside = (fp <= a + 1e-12).sum(1)                                 # thresholds within the FPR
        out[:, j] = np.where(inside > 0, tp[rows, np.maximum(inside - 1, 0)], 0.0)
    bad = ~((P > 0) & (N > 0))
    auc[bad] = np.nan
    out[bad] = np.nan
    return auc, out


def one_vs_rest(proba: np.ndarray, codes: np.ndarray, n_classes: int, weights: np.ndarray | None = None,
                fprs: Sequence[float] = FPR_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Per value: AUC ``(B, K)`` and TPR ``(B, K, len(fprs))`` of the posteriors ``proba`` ``(n, K)``
    for the true values ``codes`` ``(n,)`` (NaN for a value absent from a resample or from ``codes``)."""
    B = 1 if weights is None else np.atleast_2d(weights).shape[0]
    auc = np.full((B, n_classes), np.nan)
    tpr = np.full((B, n_classes, len(fprs)), np.nan)
    for c in range(n_classes):
        pos = np.asarray(codes) == c
        if pos.any() and not pos.all():
            auc[:, c], tpr[:, c] = roc_stats(proba[:, c], pos, weights, fprs)
    return auc, tpr


def macro(values: np.ndarray) -> np.ndarray:
    """The unweighted mean over the values' axis (1) of per-value figures, ignoring values a resample lacks."""
    with np.errstate(invalid="ignore"):
        return np.nanmean(values, axis=1) if np.isfinite(values).any() else np.full(values.shape[:1] + values.shape[2:],
                                                                                      np.nan)


def percentile_interval(draws: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The percentile interval over the first axis of ``draws`` (resamples), NaN when none is finite."""
    draws = np.asarray(draws, dtype=np.float64)
    if draws.shape[0] == 0 or not np.isfinite(draws).any():
        nan = np.full(draws.shape[1:], np.nan)
        return nan, nan.copy()
    a = (1 - level) / 2
    with np.errstate(invalid="ignore"):
        lo, hi = np.nanquantile(draws, [a, 1 - a], axis=0)
    return lo, hi
