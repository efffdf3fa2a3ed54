"""Honest information measures on held-out predictions.

Everything here is plain numpy on out-of-fold predictions: accuracy and its relatives, the
held-out cross-entropy in bits, the train-fold class-prior baseline, predictive V-information
(Xu et al. 2020) ``H(Y) - CE``, permutation p-values, bootstrap intervals, and the control
task's relabelling (Hewitt & Liang 2019); the permutations themselves are shared by every
attribute of a run (:mod:`logitleak.probing.permutations`). The default p-value,
:func:`~logitleak.probing.heldout.heldout_gain_pvalue`, lives in :mod:`logitleak.probing.heldout`.
"""

from __future__ import annotations

import math

import numpy as np

from logitleak.decisions.multiplicity import permutation_pvalue
from logitleak.probing.permutations import group_blocks

LN2 = math.log(2.0)
PROB_FLOOR = 1e-9
"""Probabilities (model or prior) are floored here, so a held-out loss is at most ~30 bits."""


# --------------------------------------------------------------------------------------------
# classification measures


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    y, pred = np.asarray(y), np.asarray(pred)
    return float((y == pred).mean()) if len(y) else float("nan")


def confusion(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``(K, K)`` counts, rows = true class, columns = predicted class."""
    return np.bincount(np.asarray(y) * n_classes + np.asarray(pred), minlength=n_classes * n_classes).reshape(
        n_classes, n_classes)


def balanced_accuracy(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Mean per-class recall over the classes that occur in ``y``."""
    cm = confusion(y, pred, n_classes)
    support = cm.sum(1)
    present = support > 0
    return float((np.diag(cm)[present] / support[present]).mean())


def macro_f1(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Unweighted mean F1 over the classes that occur in ``y`` or in ``pred``."""
    cm = confusion(y, pred, n_classes)
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(1), cm.sum(0)
    present = (support + predicted) > 0
    denom = (support + predicted)[present]
    return float((2 * tp[present] / denom).mean())


# --------------------------------------------------------------------------------------------
# information in bits


def label_entropy_bits(codes: np.ndarray, n_classes: int | None = None) -> float:
    """Plug-in entropy ``H(Y)`` of the empirical label distribution, in bits."""
    counts = np.bincount(np.asarray(codes), minlength=n_classes or 0)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def class_prior(codes: np.ndarray, n_classes: int) -> np.ndarray:
    counts = np.bincount(np.asarray(codes), minlength=n_classes).astype(float)
    return counts / counts.sum()


def prior_loss_bits(codes: np.ndarray, train_masks: np.ndarray, test_masks: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-sample held-out loss (bits) of the *training-fold* class prior: for each split ``s``,
    ``-log2 prior_train(s)(y_i)`` at each test row ``i`` of ``s``; NaN where a row is never
    tested. This is the honest ``H(Y)`` for V-information: a probe that learns nothing but the
    prior scores about 0 against it, not a positive artefact of comparing a held-out loss with an
    in-sample entropy."""
    codes = np.asarray(codes)
    out = np.full(len(codes), np.nan)
    for tr, te in zip(np.asarray(train_masks), np.asarray(test_masks)):
        prior = np.maximum(class_prior(codes[tr], n_classes), PROB_FLOOR)
        out[te] = -np.log2(prior[codes[te]])
    return out


def majority_baseline(codes: np.ndarray, train_masks: np.ndarray, test_masks: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-sample correctness (NaN where never tested) of predicting each training fold's most
    frequent class (ties: the smallest class code) on its test rows."""
    codes = np.asarray(codes)
    out = np.full(len(codes), np.nan)
    for tr, te in zip(np.asarray(train_masks), np.asarray(test_masks)):
        maj = int(np.bincount(codes[tr], minlength=n_classes).argmax())
        out[te] = (codes[te] == maj).astype(float)
    return out


def v_information_bits(prior_loss: np.ndarray, probe_loss: np.ndarray) -> float:
    """Predictive V-information ``H(Y) - CE`` in bits, both averaged over the same held-out rows."""
    return float(np.mean(np.asarray(prior_loss) - np.asarray(probe_loss)))


def nats_to_bits(x):
    return np.asarray(x) / LN2


# --------------------------------------------------------------------------------------------
# is it real?


def permutation_p_value(observed: float, null: np.ndarray) -> float:
    """``(1 + #{null >= observed}) / (1 + len(null))`` (Phipson & Smyth 2010); NaN without a null.
    Numerically equal statistics count as ties (conservative); the rule is the family
    adjustment's own (:func:`logitleak.decisions.multiplicity.permutation_pvalue`)."""
    return permutation_pvalue(observed, null)


def bootstrap_weights(n: int, n_boot: int, rng: np.random.Generator, groups: np.ndarray | None = None) -> np.ndarray:
    """``(n_boot, n)`` float32 resampling multiplicities: samples drawn with replacement, or whole
    groups drawn with replacement (each sample then counts as often as its group was drawn)."""
    if n_boot <= 0:
        return np.zeros((0, n), dtype=np.float32)
    def counts(units: int) -> np.ndarray:
        draws = rng.integers(0, units, size=(n_boot, units)) + units * np.arange(n_boot)[:, None]
        return np.bincount(draws.ravel(), minlength=n_boot * units).reshape(n_boot, units).astype(np.float32)

    if groups is None:
        return counts(n)
    _, inv = np.unique(np.asarray(groups), return_inverse=True)
    return counts(int(inv.max()) + 1)[:, inv]


def bootstrap_interval(weights: np.ndarray, values: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of the weighted mean of ``values`` (``(n,)`` or ``(n, m)``) under each
    row of ``weights`` ``(B, n)``; returns ``(low, high)`` with the shape of one mean."""
    values = np.asarray(values, dtype=np.float64)
    if weights.shape[0] == 0:
        nan = np.full(values.shape[1:], np.nan)
        return nan, nan.copy()
    w = weights.astype(np.float64)
    means = (w @ values.reshape(len(values), -1)) / np.maximum(w.sum(1, keepdims=True), 1e-12)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2], axis=0)
    return lo.reshape(values.shape[1:]), hi.reshape(values.shape[1:])


# --------------------------------------------------------------------------------------------
# relabellings


def control_labels(codes: np.ndarray, rng: np.random.Generator, groups: np.ndarray | None = None) -> np.ndarray:
    """Control task (Hewitt & Liang 2019): a fixed random label per *type*, with the class
    distribution of the real labels. The type is the group id when groups are given (each group
    gets the label of a randomly chosen group's most frequent label, a permutation over groups),
    otherwise the sample index (a permutation over samples). Nothing about the features can
    predict it, so its held-out accuracy sits at the baseline unless the probe memorises types
    that straddle the split."""
    codes = np.asarray(codes)
    if groups is None:
        return codes[rng.permutation(len(codes))]
    inv, blocks = group_blocks(groups)
    unit = np.array([np.bincount(codes[b]).argmax() for b in blocks])
    return unit[rng.permutation(len(blocks))][inv]


# --------------------------------------------------------------------------------------------
# ground truth helpers (used by the calibration tests and benchmarks)


def binomial_interval(n: int, p: float, level: float = 0.99) -> tuple[int, int]:
    """Central ``level`` interval ``[lo, hi]`` of a Binomial(n, p) count."""
    from scipy.stats import binom

    a = (1 - level) / 2
    return int(binom.ppf(a, n, p)), int(binom.ppf(1 - a, n, p))
