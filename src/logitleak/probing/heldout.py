"""The default significance test: a one-sided held-out gain test on forward-chained blocks.

Why not the per-sample gains of ordinary K-fold cross-validation: the probe that scores fold
``f`` was trained on the labels of every other fold, so under the null the fold scores are
positively correlated (for a probe that is linear in its training labels, the covariance of the
pooled score equals its variance: the null variance is twice what a per-sample test assumes,
for any number of folds). A test that ignores this is anti-conservative exactly where the probe
learns nothing. Forward chaining removes the dependence: the samples are dealt to blocks
``0..B-1`` (the cross-validation folds), and block ``b >= 1`` is scored by a probe trained on
blocks ``0..b-1`` only. Under "labels independent of features" each block's labels are then
independent of everything that scores them, so the per-block centred scores form a martingale
difference sequence and their studentised sum is asymptotically standard normal -- one fit per
block, no refit per permutation.

The centring is the exact permutation mean of the block (what the same predictions would score
on the block's labels dealt out at random), so the test asks "do the predictions match *these*
labels better than a random assignment of them?" and does not rely on the probe beating the
class prior. :func:`heldout_gain_pvalue` takes any per-sample held-out gains whose expectation is
at most 0 under the null given the data that scored them (e.g. a regression probe's Gaussian
log-likelihood gain over the training-fold mean, on the same forward-chained blocks).
"""

from __future__ import annotations

import math

import numpy as np

LN2 = math.log(2.0)
TEST_NAME = "heldout"
"""The value of the results column ``p_test`` for p-values from this test."""


def forward_chain(fold: np.ndarray, n_blocks: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(train_mask, test_mask), ...]`` for blocks ``1..n_blocks-1``: block ``b`` (the samples
    with ``fold == b``) is scored by a probe trained on the samples with ``fold < b``."""
    fold = np.asarray(fold)
    return [(fold < b, fold == b) for b in range(1, n_blocks)]


def centred_gains(logp: np.ndarray, codes: np.ndarray, block: np.ndarray) -> np.ndarray:
    """Per-sample centred log-likelihood gains in bits, NaN where ``block < 0`` (not scored).

    ``logp``: ``(..., n, K)`` held-out log-probabilities (nats) of every class, ``codes``: ``(n,)``
    labels, ``block``: ``(n,)`` block id of each scored sample. With ``a_ik = log q_i(k)``,
    ``pi_b`` the label frequencies of block ``b`` and ``m_b(k)`` the mean of ``a_ik`` over the
    block, sample ``i`` of block ``b`` gains ``a_iy_i - sum_k pi_b(k) a_ik - (m_b(y_i) - sum_k
    pi_b(k) m_b(k))``: doubly centred, so the block sum is the score minus its exact permutation
    mean and the sum of squares matches the permutation variance (Hoeffding 1951) instead of
    also counting how hard each label is on average, which no assignment of labels changes.
    """
    logp = np.asarray(logp, dtype=np.float64)
    codes = np.asarray(codes)
    block = np.asarray(block)
    K = logp.shape[-1]
    out = np.full(logp.shape[:-1], np.nan)
    for b in np.unique(block[block >= 0]):
        rows = np.flatnonzero(block == b)
        pi = np.bincount(codes[rows], minlength=K)[:K] / len(rows)
        lp = logp[..., rows, :]
        own = lp[..., np.arange(len(rows)), codes[rows]]
        col = lp.mean(-2)                                    # (..., K) mean score of each label in the block
        label_effect = col[..., codes[rows]] - (col @ pi)[..., None]
        out[..., rows] = (own - lp @ pi - label_effect) / LN2
    return out


def block_weights(block: np.ndarray) -> np.ndarray:
    """Fixed weights of the scored samples in the test: block ``b`` counts ``max(b, 1)`` times
    (0 where not scored). Later blocks are scored by probes trained on more data, so they carry
    more of the signal; the weights are set before seeing any label, so the test stays valid."""
    block = np.asarray(block)
    return np.where(block >= 0, np.maximum(block, 1), 0).astype(np.float64)


def gain_units(gains: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """The independent units the test studentises: the scored samples' gains, or with ``groups``
    each group's summed gain divided by the square root of its number of scored samples.

    Why the square root: a group's sum has a variance between ``size`` (independent members) and
    ``size²`` (identical members) times a sample's, so with Zipf-sized groups the raw sums of the
    few largest groups carry most of the sum of squares and the t statistic rests on 3-4 units.
    Dividing by ``sqrt(size)`` caps the spread of the units' variances at ``size`` instead of
    ``size²`` (weights fixed by the design, before any label is seen), which keeps the test
    calibrated on Zipf-sized groups and gives the many small groups their share of the evidence."""
    g = np.asarray(gains, dtype=np.float64).ravel()
    ok = np.isfinite(g)
    if groups is None:
        return g[ok]
    groups = np.asarray(groups).ravel()
    if groups.shape != g.shape:
        raise ValueError(f"got {len(groups)} group ids for {len(g)} gains")
    _, inv = np.unique(groups[ok], return_inverse=True)
    return np.bincount(inv, weights=g[ok]) / np.sqrt(np.bincount(inv))


def studentised(units: np.ndarray) -> np.ndarray:
    """``sqrt(m) * mean / sd`` of the last axis (``m`` units; NaN where the spread is 0)."""
    m = units.shape[-1]
    sd = units.std(-1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd > 1e-300, units.mean(-1) / sd * math.sqrt(m), np.nan)


def heldout_gain_pvalue(gains: np.ndarray, groups: np.ndarray | None = None) -> float:
    """One-sided p-value for "the mean held-out gain is above 0".

    ``gains``: ``(n,)`` per-sample held-out gains (any unit; NaN = not scored). Each must come
    from a prediction that saw neither its own label nor the label of any sample scored in the
    same or a later block (see :func:`forward_chain`), and have expectation at most 0 under the
    null given what scored it (the centred gains of :func:`centred_gains`; a regression probe's
    Gaussian log-likelihood gain over the training-fold mean predictor). ``groups``: ``(n,)``
    ids of samples that are not independent of each other (e.g. several questions about one
    photo); the groups are then the independent units (:func:`gain_units`). Gains may be
    multiplied by weights fixed before any label is seen (:func:`block_weights`, as the sweep
    does). A caller with its own probe (e.g. regression) fits one model per block of
    :func:`forward_chain` over the plan's folds and passes the gains of every scored sample.
    Returns the upper tail of Student's t with (units - 1) degrees of freedom at the studentised
    mean of the units; NaN with fewer than 3 scored units.
    """
    units = gain_units(gains, groups)
    m = len(units)
    if m < 3:
        return float("nan")
    from scipy.stats import t as student_t

    tstat = float(studentised(units))
    if not math.isfinite(tstat):
        return 1.0 if units.mean() <= 0 else float(0.5 ** m)     # every unit gained the same: a sign test
    return float(student_t.sf(tstat, m - 1))


def heldout_pvalues(gains: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """:func:`heldout_gain_pvalue` for each row of ``gains`` ``(F, n)``."""
    gains = np.atleast_2d(gains)
    return np.array([heldout_gain_pvalue(row, groups) for row in gains])
