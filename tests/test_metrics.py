"""Information measures, permutation p-values, bootstrap intervals and relabellings."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from logitleak.errors import LogitleakError
from logitleak.probing import metrics as M
from logitleak.probing import permutations as P


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


def test_group_constant_labels_move_between_groups_of_any_size():
    rng = np.random.default_rng(2)
    groups = np.repeat(rng.permutation(30), np.r_[rng.integers(1, 6, 28), 7, 9])   # sizes 7 and 9 occur once
    per_group = rng.integers(0, 3, 30)
    codes = per_group[groups]
    perm = P.permuted("y", codes, P.permutation_index(len(codes), 20, seed=0, groups=groups), groups)
    assert perm.shape == (20, len(codes))
    for row in perm:
        for g in np.unique(groups):            # still constant within every group
            assert len(np.unique(row[groups == g])) == 1
        # the multiset of group labels is preserved
        g_lab = sorted(row[groups == g][0] for g in np.unique(groups))
        assert g_lab == sorted(codes[groups == g][0] for g in np.unique(groups))
    assert (perm != codes).any(1).all()
    # labels that vary within a group of a size no other group has cannot be moved: refused by name
    varying = codes.copy()
    varying[np.flatnonzero(groups == groups[-1])[0]] += 1           # the group of 9 gets two labels
    assert P.unmovable_groups(varying, groups) == 2
    with pytest.raises(LogitleakError, match="Attribute 'v': its labels vary within groups and 2 groups"):
        P.permuted("v", varying, P.permutation_index(len(codes), 2, 0, groups), groups)


def test_mixed_groups_swap_whole_blocks_between_equal_size_groups():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(12), [4] * 6 + [2] * 6)
    codes = rng.integers(0, 2, len(groups))
    index = P.permutation_index(len(groups), 30, seed=1, groups=groups)
    for row in P.permuted("y", codes, index, groups):
        for size in (4, 2):
            blocks = sorted(tuple(codes[groups == g]) for g in range(12) if (groups == g).sum() == size)
            assert sorted(tuple(row[groups == g]) for g in range(12) if (groups == g).sum() == size) == blocks
    assert P.unmovable_groups(codes, groups) == 0
    plain = P.permutation_index(48, 5, seed=1)
    for row in plain:
        np.testing.assert_array_equal(np.sort(row), np.arange(48))


def test_shared_permutations_are_the_same_for_every_attribute_and_depend_on_the_seed():
    from logitleak.probing.plans import plan_attribute

    rng = np.random.default_rng(5)
    a, b = rng.integers(0, 3, 60), rng.integers(0, 2, 60)
    pa = plan_attribute("a", a, n_permutations=7, n_bootstrap=0)
    pb = plan_attribute("b", b, n_permutations=7, n_bootstrap=0)
    index = P.permutation_index(60, 7, seed=0)
    np.testing.assert_array_equal(pa.labels[2:], a[index])
    np.testing.assert_array_equal(pb.labels[2:], b[index])
    assert pa.permutation_key == pb.permutation_key == P.permutation_key(0, 60, 7)
    assert P.permutation_key(1, 60, 7) != pa.permutation_key
    assert not np.array_equal(P.permutation_index(60, 7, seed=1), index)


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
