"""evaluate_sweep: calibration against ground truth, honesty on nulls, grouped splits, errors, schema."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from logitleak.errors import LogitleakError
from logitleak.probing import metrics as M
from logitleak.probing.plans import plan_attribute
from logitleak.probing.splits import cv_splits
from logitleak.probing.sweep import EXTRA_COLUMNS, evaluate_sweep
from logitleak.results import RESULT_COLUMNS

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------
# calibration against ground truth


def gaussian_mixture(rng, n, means, prior):
    y = rng.choice(len(prior), size=n, p=prior)
    return rng.normal(size=(n, means.shape[1])) + means[y], y


def bayes_truth(means, prior, m=400_000, seed=123):
    """Bayes accuracy and I(X;Y) in bits by Monte Carlo with the true posterior (equal isotropic
    covariance: log p(y|x) = -|x - mu_y|^2 / 2 + log prior_y + const)."""
    X, y = gaussian_mixture(np.random.default_rng(seed), m, means, prior)
    logit = -0.5 * ((X[:, None, :] - means[None]) ** 2).sum(-1) + np.log(prior)
    logit -= logit.max(1, keepdims=True)
    post = np.exp(logit)
    post /= post.sum(1, keepdims=True)
    bayes = (post.argmax(1) == y).mean()
    mi = np.mean(np.log2(post[np.arange(m), y]) - np.log2(prior[y]))
    return bayes, mi


@pytest.mark.parametrize("K,d,radius,prior", [
    (3, 2, 1.2, None),
    (4, 5, 1.0, (0.4, 0.3, 0.2, 0.1)),
    (2, 3, 0.8, None),
])
def test_calibration_against_bayes_accuracy_and_mutual_information(K, d, radius, prior):
    prior = np.full(K, 1 / K) if prior is None else np.array(prior)
    angle = np.linspace(0, 2 * np.pi, K, endpoint=False)
    means = np.zeros((K, d))
    means[:, 0], means[:, 1] = radius * np.cos(angle), radius * np.sin(angle)
    bayes, mi = bayes_truth(means, prior)
    X, y = gaussian_mixture(np.random.default_rng(K), 6000, means, prior)
    r = evaluate_sweep({("gauss", None, None): X}, {"y": y}, probes=("linear",), n_permutations=0,
                       n_bootstrap=500, progress=False).iloc[0]
    width = r.ci_high - r.ci_low
    assert 0 < width < 0.05
    assert r.ci_low - width <= bayes <= r.ci_high + width          # accuracy CI reaches the Bayes rate
    assert r.accuracy <= bayes + width                               # cannot beat Bayes beyond noise
    vi_width = r.v_info_ci_high - r.v_info_ci_low
    assert 0 < vi_width < 0.15
    assert r.v_info_bits - mi <= vi_width                            # no more than the true MI, up to noise
    assert r.v_info_bits > 0 and abs(r.v_info_bits - mi) <= vi_width  # and close to it
    assert r.entropy_bits == pytest.approx(-(prior * np.log2(prior)).sum(), abs=0.02)
    assert r.v_info_frac == pytest.approx(r.v_info_bits / r.entropy_bits)
    assert r.baseline_accuracy == pytest.approx(prior.max(), abs=0.02)


# --------------------------------------------------------------------------------------------
# honesty on nulls


def test_null_p_values_are_calibrated_and_v_information_is_not_positive():
    """100 independent label vectors, all independent of the features, probed in one batched
    call: the number with p < 0.05 stays within a binomial 99% interval around 5%, V-information
    averages at or below zero, and the control task sits at the baseline."""
    rng = np.random.default_rng(0)
    n, runs = 40, 100
    X = rng.normal(size=(n, 3))
    labels = {f"a{i}": rng.permutation(np.repeat([0, 1], n // 2)) for i in range(runs)}
    df = evaluate_sweep({("noise", None, None): X}, labels, probes=("linear",), n_permutations=49,
                        n_bootstrap=0, progress=False)
    assert len(df) == runs
    lo, hi = M.binomial_interval(runs, 0.05, 0.99)
    assert lo <= int((df.p_value < 0.05).sum()) <= hi
    assert lo <= int((df.v_info_p_value < 0.05).sum()) <= hi
    assert df.p_test.eq("permutation").all()
    assert lo <= int((df.p_value_heldout < 0.05).sum()) <= hi   # the default test, beside the exact one
    assert int((df.p_value_heldout < 0.001).sum()) <= 2          # no spurious tiny p-values on nulls
    assert df.v_info_bits.mean() <= 0.0
    assert abs(df.control_accuracy.mean() - df.baseline_accuracy.mean()) < 0.03
    assert abs(df.accuracy.mean() - df.baseline_accuracy.mean()) < 0.03
    assert df.ci_high.isna().all() and df.p_value.between(0, 1).all()


def test_real_signal_is_significant_and_selective():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    X = rng.normal(size=(300, 8)) + 1.5 * np.eye(8)[y]
    r = evaluate_sweep({("residual", 4, None): X}, {"y": y}, probes=("linear",), n_permutations=49,
                       n_bootstrap=200, progress=False).iloc[0]
    assert r.p_value == pytest.approx(1 / 50)
    assert r.accuracy > r.baseline_accuracy + 0.3
    assert abs(r.control_accuracy - r.baseline_accuracy) < 0.08
    assert r.selectivity == pytest.approx(r.accuracy - r.control_accuracy)
    assert r.selectivity > 0.3 and r.v_info_bits > 0.3 and r.v_info_ci_low > 0


# --------------------------------------------------------------------------------------------
# grouped splits


def grouped_leak_data(seed=0, n_groups=40, per_group=5, d=50):
    """Each group shares a random feature vector and a random label: the label is predictable
    only by recognising a group seen in training."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), per_group)
    centres = rng.normal(size=(n_groups, d))
    X = centres[groups] + 0.3 * rng.normal(size=(len(groups), d))
    y = rng.permutation(np.repeat([0, 1], n_groups // 2))[groups]
    return X, y, groups


def test_group_splits_never_straddle():
    _, y, groups = grouped_leak_data()
    for tr, te in cv_splits(y, groups, 5, seed=3):
        assert not set(groups[tr]) & set(groups[te])
        assert 0.3 < y[te].mean() < 0.7                   # still stratified
    (tr, te), = cv_splits(y, groups, test_size=0.25, seed=3)
    assert not set(groups[tr]) & set(groups[te])


def test_grouped_splits_remove_leakage_that_ungrouped_splits_show():
    X, y, groups = grouped_leak_data()
    feats = {("residual", 1, None): X}
    common = dict(probes=("linear",), n_permutations=39, n_bootstrap=200, progress=False)
    grouped = evaluate_sweep(feats, {"y": y}, groups=groups, **common).iloc[0]
    ungrouped = evaluate_sweep(feats, {"y": y}, **common).iloc[0]
    # without groups the probe recognises groups seen in training and looks like a leak
    assert ungrouped.accuracy > 0.8 and ungrouped.p_value <= 0.05
    # with groups there is nothing to find
    assert abs(grouped.accuracy - grouped.baseline_accuracy) < 0.15
    assert grouped.ci_low <= 0.5 + 1e-9 or grouped.p_value > 0.05
    assert grouped.p_value > 0.05
    assert grouped.v_info_bits <= 0.05
    assert grouped.n_groups == 40


def test_permutations_and_control_respect_groups():
    _, y, groups = grouped_leak_data(seed=2)
    plan = plan_attribute("y", y, groups=groups, n_permutations=5, n_bootstrap=10)
    for v in range(1, plan.n_variants):                   # control + permutations
        lab = plan.labels[v]
        for g in np.unique(groups):
            assert len(np.unique(lab[groups == g])) == 1
    for v in range(plan.n_variants):
        for s in range(plan.n_splits):
            tr, te = plan.train[v, s], plan.test[v, s]
            assert not set(groups[tr]) & set(groups[te])
            fi, va = plan.inner_fit[v, s], plan.inner_val[v, s]
            assert not (fi & va).any() and not ((fi | va) & ~tr).any()
            assert not set(groups[fi]) & set(groups[va])


# --------------------------------------------------------------------------------------------
# schema, design, determinism


def test_sweep_rows_schema_and_keys():
    rng = np.random.default_rng(4)
    n = 120
    color = np.array(["red", "green", "blue"])[rng.integers(0, 3, n)]
    size = rng.integers(0, 2, n)
    feats = {("residual", layer, None): rng.normal(size=(n, 6)) for layer in (0, 3)}
    feats[("topk_logprobs", None, 5)] = rng.normal(size=(n, 5))
    feats[("top1_prob", None, None)] = rng.random(n)            # 1-D: one feature
    df = evaluate_sweep(feats, {"color": color, "size": size}, task_attribute="color", probes=("linear", "mlp"),
                        n_permutations=3, n_bootstrap=20, progress=False,
                        probe_params={"mlp": {"hidden": 8, "max_epochs": 100}})
    assert list(df.columns) == list(RESULT_COLUMNS) + list(EXTRA_COLUMNS)
    assert len(df) == 4 * 2 * 2
    keys = list(zip(df.level, df.layer.astype(object), df.k.astype(object), df.attribute, df.probe))
    assert len(set(keys)) == len(df)
    assert df.task_relevant.tolist() == [a == "color" for a in df.attribute]
    assert set(df.n_classes[df.attribute == "color"]) == {3}
    assert df.n_features.tolist()[-4:] == [1] * 4
    assert df.n.eq(n).all() and df.n_folds.eq(5).all() and df.n_permutations.eq(3).all()
    r = df[(df.level == "topk_logprobs")].iloc[0]
    assert r.k == 5 and pd.isna(r.layer)
    assert df.p_value.ge(0.25).all()                            # 3 permutations: p >= 1/4
    assert df.C[df.probe == "mlp"].isna().all() and df.C[df.probe == "linear"].notna().all()


def test_deterministic_given_seed_and_holdout_mode():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 100)
    X = rng.normal(size=(100, 4)) + y[:, None]
    kw = dict(probes=("linear",), n_permutations=9, n_bootstrap=50, progress=False)
    a = evaluate_sweep({("x", None, None): X}, {"y": y}, seed=1, **kw)
    b = evaluate_sweep({("x", None, None): X}, {"y": y}, seed=1, **kw)
    c = evaluate_sweep({("x", None, None): X}, {"y": y}, seed=2, **kw)
    pd.testing.assert_frame_equal(a, b)
    assert not a[["ci_low", "control_accuracy"]].equals(c[["ci_low", "control_accuracy"]])
    h = evaluate_sweep({("x", None, None): X}, {"y": y}, test_size=0.25, **kw).iloc[0]
    assert h.n_folds == 1 and 20 <= h.n <= 30 and h.accuracy > 0.6


# --------------------------------------------------------------------------------------------
# errors


def test_clear_errors():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(30, 3))
    feats = {("residual", 2, None): X}
    ok = np.arange(30) % 2
    with pytest.raises(LogitleakError, match=r"Attribute 'mood' has a single class \('happy'\).*drop this attribute"):
        evaluate_sweep(feats, {"mood": np.array(["happy"] * 30)}, progress=False)
    rare = ok.copy()
    rare[:3] = 2
    rare[3:] = np.arange(27) % 2
    with pytest.raises(LogitleakError, match=r"Attribute 'shape': class 2 has only 3 samples.*5-fold.*fewer folds"):
        evaluate_sweep(feats, {"shape": rare}, progress=False)
    with pytest.raises(LogitleakError, match=r"Feature set 'residual' layer 2 has 30 rows but attribute 'y' has 29 labels"):
        evaluate_sweep(feats, {"y": ok[:29]}, progress=False)
    bad = X.copy()
    bad[4, 1] = np.nan
    with pytest.raises(LogitleakError, match=r"Feature set 'residual' layer 2 contains 1 NaN or infinite"):
        evaluate_sweep({("residual", 2, None): bad}, {"y": ok}, progress=False)
    groups = np.repeat(np.arange(10), 3)
    with pytest.raises(LogitleakError, match=r"Attribute 'y': class 1 occurs in only 3 groups.*fewer folds"):
        evaluate_sweep(feats, {"y": np.repeat([0] * 7 + [1] * 3, 3)}, groups=groups, progress=False)
    with pytest.raises(LogitleakError, match="Task attribute 'colour' is not among"):
        evaluate_sweep(feats, {"y": ok}, task_attribute="colour", progress=False)
    with pytest.raises(LogitleakError, match="Unknown probe family 'svm'"):
        evaluate_sweep(feats, {"y": ok}, probes=("svm",), progress=False)
    with pytest.raises(LogitleakError, match="missing labels"):
        evaluate_sweep(feats, {"y": np.array([None] + ["a", "b"] * 14 + ["a"], dtype=object)}, progress=False)


def test_sweep_linear_accuracy_matches_sklearn_on_the_same_folds():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(8)
    y = rng.integers(0, 3, 500)
    X = rng.normal(size=(500, 30)) * rng.uniform(0.5, 5, 30) + rng.normal(0, 0.4, (3, 30))[y] * 3
    r = evaluate_sweep({("residual", 0, None): X}, {"y": y}, probes=("linear",), n_permutations=0, n_bootstrap=0,
                       seed=3, progress=False, probe_params={"linear": {"C": 0.5}}).iloc[0]
    correct = 0
    for tr, te in cv_splits(y, None, 5, seed=3):
        sc = StandardScaler().fit(X[tr])
        m = LogisticRegression(C=0.5, tol=1e-8, max_iter=10_000).fit(sc.transform(X[tr]), y[tr])
        correct += (m.predict(sc.transform(X[te])) == y[te]).sum()
    assert abs(r.accuracy - correct / len(y)) <= 0.01
    assert r.C == 0.5


def test_results_do_not_depend_on_how_the_sweep_is_chunked():
    rng = np.random.default_rng(9)
    y = rng.integers(0, 2, 80)
    feats = {("residual", layer, None): rng.normal(size=(80, 4)) + 0.5 * layer * y[:, None] for layer in range(3)}
    labels = {"y": y, "z": rng.integers(0, 3, 80)}
    kw = dict(probes=("linear", "mlp"), n_permutations=4, n_bootstrap=30, progress=False,
              probe_params={"mlp": {"hidden": 8, "max_epochs": 60}})
    big = evaluate_sweep(feats, labels, **kw)
    small = evaluate_sweep(feats, labels, memory_budget=200_000, **kw)      # many small chunks
    cols = ["accuracy", "control_accuracy", "p_value", "ci_low"]
    np.testing.assert_allclose(big[cols].to_numpy(float), small[cols].to_numpy(float), atol=0.02)
    np.testing.assert_allclose(big["v_info_bits"], small["v_info_bits"], atol=0.01)


def test_converged_fraction_and_a_warning_when_fits_stop_early():
    rng = np.random.default_rng(3)
    n = 300
    y = rng.integers(0, 3, n)
    X = rng.normal(size=(n, 6)) + 2.0 * np.eye(3)[y] @ rng.normal(size=(3, 6))
    kw = dict(probes=("linear",), n_bootstrap=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # converged fits: no warning
        df = evaluate_sweep({("residual", 0, None): X}, {"y": y}, **kw)
    assert df["converged"].eq(1.0).all()
    with pytest.warns(UserWarning, match=r"stopped before converging .*raise the probe's max_iter"):
        short = evaluate_sweep({("residual", 0, None): X}, {"y": y}, probe_params={"linear": {"max_iter": 1}}, **kw)
    assert short["converged"].lt(1.0).all() and short["converged"].ge(0.0).all()


def test_the_control_task_reuses_the_real_labels_choice_of_c():
    from logitleak.probing.batching import Problems
    from logitleak.probing.classify import _fit_order

    plan = plan_attribute("y", np.random.default_rng(0).integers(0, 3, 200), n_permutations=2)
    b = Problems.build([plan])
    order = _fit_order(b, "linear", {}, p_chunk=4)
    flagged = np.concatenate([idx for idx, reuse in order if reuse])
    assert set(b.variant[flagged]) == {1}                          # exactly the control problems
    assert len(flagged) == plan.n_splits
    first_flagged = next(i for i, (_, reuse) in enumerate(order) if reuse)
    assert all(not reuse for _, reuse in order[:first_flagged])    # after every real-label fit
    assert not any(reuse for _, reuse in _fit_order(b, "linear", {"C": 1.0}, p_chunk=4))
    assert not any(reuse for _, reuse in _fit_order(b, "mlp", {}, p_chunk=4))


def test_probe_stages_give_the_same_results_in_any_number_of_workers():
    from logitleak.probing.stages import run_stages, stage_workers

    assert stage_workers(0, None) == 0 and stage_workers(3, "cuda") == 3
    assert stage_workers(None, "cuda") == 0                          # a GPU probes in this process
    rng = np.random.default_rng(5)
    n = 90
    y = rng.integers(0, 3, n)
    labels = {"y": y}
    stages = [({("residual", layer, None): rng.normal(size=(n, d)) + 0.5 * layer * y[:, None]
                for layer in range(2)}, dict(probes=("linear",), n_bootstrap=20, n_folds=3))
              for d in (3, 5, 8)]
    out: dict[int, dict] = {}
    for workers in (1, 2):
        got: dict = {}
        run_stages(stages, labels, workers=workers, progress=False, on_done=lambda i, df: got.__setitem__(i, df))
        out[workers] = got
    assert sorted(out[1]) == sorted(out[2]) == [0, 1, 2]
    for i in range(3):
        pd.testing.assert_frame_equal(out[1][i], out[2][i])          # single-threaded workers: bit for bit
        assert set(out[1][i]["layer"]) == {0, 1} and out[1][i]["n_features"].iloc[0] == (3, 5, 8)[i]
    here: dict = {}
    run_stages(stages, labels, workers=0, progress=False, on_done=lambda i, df: here.__setitem__(i, df))
    np.testing.assert_allclose(here[2]["accuracy"], out[1][2]["accuracy"], atol=0.02)


def test_wide_stages_split_into_even_chunks_by_size_alone():
    from logitleak.probing.stages import STAGE_WORK, split_stage

    keys = [("residual", layer, None) for layer in range(63)]
    chunks = split_stage(keys, 2000, 576)                         # SmolLM2: 63 sets of width 576
    limit = STAGE_WORK // (2000 * 576)
    assert [k for c in chunks for k in c] == keys                  # every set once, in order
    assert max(map(len, chunks)) <= limit and max(map(len, chunks)) - min(map(len, chunks)) <= 1
    assert [len(c) for c in split_stage(keys[:35], 1000, 128)] == [18, 17]
    assert split_stage(keys[:10], 1000, 1) == [keys[:10]]          # narrow sets batch in one call
    assert split_stage(keys[:3], 10**6, 4096) == [[k] for k in keys[:3]]
