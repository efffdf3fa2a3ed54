"""The held-out test at the edges: Zipf-sized groups for the linear probe and the MLP, Student's t
against the test's exact conditional null in its far tail (where Holm decides), and the exact
sequential p-value that replaces t for groups of unequal sizes."""

from __future__ import annotations

import numpy as np
import pytest
from calibration_designs import balanced_labels, class_means, forward_chain_logp, linear_probe_truth, zipf_groups
from scipy import stats

from logitleak.probing import metrics as M
from logitleak.probing.heldout import block_weights, centred_gains, gain_units, studentised
from logitleak.probing.heldout_exact import EXACT_DRAWS, exact_heldout_null, sequential_exact_pvalue, unequal_groups
from logitleak.probing.sweep import evaluate_sweep

pytestmark = pytest.mark.usefixtures("one_thread")


def test_zipf_grouped_nulls_stay_in_the_binomial_band_for_the_linear_probe_and_the_mlp():
    """Groups of Zipf sizes (the 3 largest of 65 hold ~80% of the squared sizes) with a strong
    group effect: the grouped MLP rejected 10% at 0.05 before the folds dealt groups blind to size."""
    rng = np.random.default_rng(2020)
    for probe in ("linear", "mlp"):
        p = []
        for _ in range(8):
            feats, labels, groups = zipf_groups(rng)
            df = evaluate_sweep(feats, labels, groups=groups, probes=(probe,), n_bootstrap=0, progress=False,
                                probe_params={"mlp": {"hidden": 16}} if probe == "mlp" else None)
            p.append(df.p_value.to_numpy())
        p = np.concatenate(p)
        assert len(p) == 320 and np.isfinite(p).all()
        for alpha in (0.05, 0.01):
            lo, hi = M.binomial_interval(len(p), alpha, 0.99)
            assert lo <= int((p < alpha).sum()) <= hi, (probe, alpha, int((p < alpha).sum()), (lo, hi))


def _tail_ratios(logp, y, block, groups, n_draws=200_000):
    observed, draws = exact_heldout_null(logp, y, block, groups, n_draws=n_draws, seed=1)
    units = gain_units(centred_gains(logp, y, block) * block_weights(block), groups)
    assert observed == pytest.approx(float(studentised(units)))          # the exact null is of the test's own statistic
    m = len(units)
    return {a: np.mean(draws >= stats.t.isf(a, m - 1)) / a for a in (1e-2, 1e-3, 1e-4)}


@pytest.mark.parametrize("n,K,C,group_size", [(300, 3, 100.0, 1), (100, 2, 100.0, 1), (240, 2, 1.0, 3)])
def test_students_t_follows_the_exact_null_into_the_far_tail_for_samples_and_equal_groups(n, K, C, group_size):
    rng = np.random.default_rng(n + K)
    groups = None if group_size == 1 else np.repeat(np.arange(n // group_size), group_size)
    units = n if groups is None else n // group_size
    y = rng.integers(0, K, units)
    y = y if groups is None else y[groups]
    X = rng.normal(size=(n, 4)) + (0.0 if groups is None else rng.normal(size=(units, 4))[groups])
    logp, block = forward_chain_logp(X, y, groups, C=C)
    assert not unequal_groups(y, block, groups)
    ratio = _tail_ratios(logp, y, block, groups)
    assert 0.7 <= ratio[1e-2] <= 1.4 and 0.6 <= ratio[1e-3] <= 1.7 and 0.3 <= ratio[1e-4] <= 2.5, ratio


def test_for_zipf_groups_students_t_misjudges_the_tail_so_the_exact_null_is_used():
    """Given its predictions, a Zipf-grouped data set's exact null can have a tail several times
    Student's at 1e-3 (which tail, and how far off, varies from one data set to the next)."""
    rng = np.random.default_rng(7)
    ratios = []
    for i in range(6):
        feats, labels, groups = zipf_groups(rng, n_classes=3, n_feats=1, n_attrs=1)
        X, y = feats[("noise", 0, None)], labels["a0"]
        logp, block = forward_chain_logp(X, y, groups, C=1.0 if i % 2 else 100.0)
        assert unequal_groups(y, block, groups)
        ratios.append(_tail_ratios(logp, y, block, groups, n_draws=50_000)[1e-3])
    assert max(ratios) > 3, ratios


def test_the_sequential_exact_pvalue_agrees_with_many_draws_and_floors_at_one_over_the_draws():
    rng = np.random.default_rng(4)
    feats, labels, groups = zipf_groups(rng, n_feats=1, n_attrs=1, signal=0.5)
    X, y = feats[("noise", 0, None)], labels["a0"]
    logp, block = forward_chain_logp(X, y, groups)
    observed, draws = exact_heldout_null(logp, y, block, groups, n_draws=50_000, seed=9)
    many = (1 + np.sum(draws >= observed - 1e-9)) / (1 + len(draws))
    seq = sequential_exact_pvalue(logp, y, block, groups, seed=2)
    assert 0.01 < many < 0.5 and seq == pytest.approx(many, rel=0.5)
    strong, strong_labels, strong_groups = zipf_groups(rng, n_feats=1, n_attrs=1, signal=3.0)
    logp, block = forward_chain_logp(strong[("noise", 0, None)], strong_labels["a0"], strong_groups)
    assert sequential_exact_pvalue(logp, strong_labels["a0"], block, strong_groups, max_draws=2000) == 1 / 2001
    # a sweep on groups of unequal sizes reports it (p values of the exact null are multiples of 1/draws or hits/L)
    df = evaluate_sweep(strong, strong_labels, groups=strong_groups, probes=("linear",), n_bootstrap=0, progress=False)
    assert df.p_value.iloc[0] == pytest.approx(1 / (EXACT_DRAWS + 1))


def test_unequal_groups_only_where_groups_differ_in_size_and_labels_are_constant():
    block = np.array([0, 1, 1, 1, 2, 2])
    assert not unequal_groups(np.zeros(6, int), block, None)
    assert unequal_groups(np.array([0, 1, 1, 0, 1, 1]), block, np.array([0, 1, 1, 2, 3, 3]))
    assert not unequal_groups(np.array([0, 1, 0, 0, 1, 1]), block, np.array([0, 1, 1, 2, 3, 3]))   # varies in a group
    assert not unequal_groups(np.array([0, 0, 1, 1]), np.ones(4, int), np.array([5, 5, 7, 7]))      # equal sizes


def test_intervals_cover_weak_planted_signals():
    """300 data sets (30 label draws x 10 feature draws) with a weak planted signal (~0.19 bits,
    accuracy ~0.72; the bootstrap alone covered the bits less often): the 95%
    intervals of the bits and of the accuracy hold the truth in at least 93% of them. The truth
    is what the intervals are about: the linear probe's expected held-out score at the training
    folds' size, from 100 fresh training sets scored on 20,000 fresh samples."""
    rng = np.random.default_rng(2024)
    n, d, K = 200, 8, 2
    means = class_means(rng, d, K, 0.9)
    acc_true, bits_true = linear_probe_truth(rng, means, n * 4 // 5)
    hits = {"acc": 0, "bits": 0}
    sets = 0
    for _ in range(30):
        y = balanced_labels(rng, n, K)
        feats = {("gauss", f, None): rng.normal(size=(n, d)) + means[y] for f in range(10)}
        df = evaluate_sweep(feats, {"y": y}, probes=("linear",), n_bootstrap=1000, progress=False)
        hits["acc"] += int(((df.ci_low <= acc_true) & (acc_true <= df.ci_high)).sum())
        hits["bits"] += int(((df.v_info_ci_low <= bits_true) & (bits_true <= df.v_info_ci_high)).sum())
        sets += len(df)
    assert sets == 300 and 0.15 < bits_true < 0.35
    assert hits["acc"] / sets >= 0.93 and hits["bits"] / sets >= 0.93, (hits, sets)
