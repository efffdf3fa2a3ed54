"""Information measures, permutation p-values, bootstrap intervals and relabellings."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from logitleak.probing import metrics as M


def test_classification_measures_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 500)
    pred = np.where(rng.random(500) < 0.6, y, rng.integers(0, 4, 500))
    pred[pred == 3] = 2                      # a class that is never predicted
    assert M.accuracy(y, pred) == pytest.approx((y == pred).mean())
    assert M.balanced_accuracy(y, pred, 4) == pytest.approx(balanced_accuracy_score(y, pred))
    assert M.macro_f1(y, pred, 4) == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))


def test_prior_loss_uses_the_training_fold_prior():
    codes = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    train = np.array([[1, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1]], bool)
    test = ~train
    loss = M.prior_loss_bits(codes, train, test, 2)
    # fold 0 trains on [0,0,0,1]: prior (3/4, 1/4); its test rows hold labels 0,1,1,1
    np.testing.assert_allclose(loss[4:], -np.log2([0.75, 0.25, 0.25, 0.25]))
    np.testing.assert_allclose(loss[:4], -np.log2([0.25, 0.25, 0.25, 0.75]))
    # in-sample entropy is 1 bit, the honest held-out prior loss is worse
    assert loss.mean() > M.label_entropy_bits(codes) == pytest.approx(1.0)
    maj = M.majority_baseline(codes, train, test, 2)
    np.testing.assert_array_equal(maj, [0, 0, 0, 1, 1, 0, 0, 0])


def test_permutation_p_value():
    assert M.permutation_p_value(0.9, np.array([0.5, 0.6, 0.95])) == pytest.approx(2 / 4)
    assert M.permutation_p_value(0.9, np.full(99, 0.5)) == pytest.approx(1 / 100)
    assert M.permutation_p_value(0.5, np.full(9, 0.5)) == 1.0            # ties count against
    assert np.isnan(M.permutation_p_value(0.5, np.array([])))


def test_bootstrap_weights_resample_samples_or_whole_groups():
    rng = np.random.default_rng(0)
    w = M.bootstrap_weights(50, 200, rng)
    assert w.shape == (200, 50)
    np.testing.assert_array_equal(w.sum(1), 50)
    groups = np.repeat(np.arange(10), 5)
    wg = M.bootstrap_weights(50, 200, rng, groups)
    for g in range(10):                      # every member of a group counts the same
        assert (wg[:, groups == g] == wg[:, [g * 5]]).all()
    np.testing.assert_array_equal(wg.sum(1), 50)


def test_bootstrap_interval_has_the_right_width_and_coverage():
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(40):
        x = (rng.random(400) < 0.7).astype(float)
        lo, hi = M.bootstrap_interval(M.bootstrap_weights(400, 500, rng), x)
        covered += lo <= 0.7 <= hi
        assert hi - lo == pytest.approx(2 * 1.96 * np.sqrt(0.21 / 400), rel=0.25)
    assert covered >= 34                      # ~95% nominal; P(<34 of 40) is ~1% at 95%


def test_group_constant_permutation_moves_labels_between_groups():
    rng = np.random.default_rng(2)
    groups = np.repeat(rng.permutation(30), rng.integers(1, 6, 30))
    per_group = rng.integers(0, 3, 30)
    codes = per_group[groups]
    seen_change = False
    for _ in range(20):
        perm = M.permute_labels(codes, rng, groups)
        for g in np.unique(groups):            # still constant within every group
            assert len(np.unique(perm[groups == g])) == 1
        # the multiset of group labels is preserved
        g_lab = sorted(perm[groups == g][0] for g in np.unique(groups))
        assert g_lab == sorted(codes[groups == g][0] for g in np.unique(groups))
        seen_change |= not np.array_equal(perm, codes)
    assert seen_change


def test_mixed_groups_swap_whole_blocks_between_equal_size_groups():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(12), 4)
    codes = rng.integers(0, 2, 48)
    perm = M.permute_labels(codes, rng, groups)
    blocks = sorted(tuple(codes[groups == g]) for g in range(12))
    assert sorted(tuple(perm[groups == g]) for g in range(12)) == blocks
    plain = M.permute_labels(codes, rng)
    np.testing.assert_array_equal(np.bincount(plain), np.bincount(codes))


def test_control_labels_are_a_function_of_the_group_with_the_same_distribution():
    rng = np.random.default_rng(4)
    groups = np.repeat(np.arange(40), 5)
    codes = np.repeat(rng.integers(0, 3, 40), 5)
    ctrl = M.control_labels(codes, rng, groups)
    for g in range(40):
        assert len(np.unique(ctrl[groups == g])) == 1
    np.testing.assert_array_equal(np.bincount(ctrl, minlength=3), np.bincount(codes, minlength=3))
    assert (ctrl != codes).mean() > 0.2
    ctrl2 = M.control_labels(np.arange(10) % 2, rng)
    np.testing.assert_array_equal(np.bincount(ctrl2), [5, 5])


def test_binomial_interval():
    lo, hi = M.binomial_interval(100, 0.05, 0.99)
    assert lo <= 5 <= hi and hi <= 12 and lo >= 0
