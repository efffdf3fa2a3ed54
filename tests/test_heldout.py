"""The default held-out gain test: its pieces, its calibration on nulls, its power against the
100-permutation test, the verdict on global nulls, and group designs a permutation cannot move."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from logitleak.errors import LogitleakError
from logitleak.probing import metrics as M
from logitleak.probing.heldout import centred_gains, forward_chain, heldout_gain_pvalue
from logitleak.probing.permutations import permutation_index, permuted, unmovable_groups
from logitleak.probing.plans import plan_attribute
from logitleak.probing.sweep import evaluate_sweep
from logitleak.report.verdict import verdict

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------
# the pieces


def test_forward_chain_trains_only_on_earlier_blocks():
    fold = np.array([0, 1, 2, 3, 0, 1, 2, 3, 4, 4])
    chain = forward_chain(fold, 5)
    assert len(chain) == 4
    for b, (tr, te) in enumerate(chain, start=1):
        np.testing.assert_array_equal(te, fold == b)
        np.testing.assert_array_equal(tr, fold < b)
        assert not (tr & te).any()


def test_centred_gains_sum_to_the_score_minus_its_exact_permutation_mean():
    rng = np.random.default_rng(0)
    n, K = 7, 3
    logp = np.log(rng.dirichlet(np.ones(K), size=n))
    codes = np.array([0, 1, 2, 0, 1, 1, 2])
    block = np.array([1, 1, 1, 1, 2, 2, -1])
    g = centred_gains(logp, codes, block)
    assert np.isnan(g[6]) and np.isfinite(g[:6]).all()
    import itertools
    for b in (1, 2):
        rows = np.flatnonzero(block == b)
        scores = [logp[rows, codes[rows][list(p)]].sum() for p in itertools.permutations(range(len(rows)))]
        observed = logp[rows, codes[rows]].sum()
        assert g[rows].sum() * M.LN2 == pytest.approx(observed - np.mean(scores))
        # averaged over the permutations, the sum of squares is the permutation variance (x (m-1)/m)
        m = len(rows)
        sumsq = []
        for p in itertools.permutations(range(m)):
            c = codes.copy()
            c[rows] = codes[rows][list(p)]
            sumsq.append((centred_gains(logp, c, block)[rows] ** 2).sum() * M.LN2 ** 2)
        assert np.mean(sumsq) == pytest.approx(np.var(scores) * (m - 1) / m, rel=1e-9)


def test_heldout_pvalue_is_students_t_over_samples_or_group_sums():
    rng = np.random.default_rng(1)
    g = rng.normal(0.2, 1.0, size=60)
    assert heldout_gain_pvalue(g) == pytest.approx(stats.ttest_1samp(g, 0.0, alternative="greater").pvalue)
    groups = np.repeat(np.arange(20), 3)
    sums = g.reshape(20, 3).sum(1)
    assert heldout_gain_pvalue(g, groups) == pytest.approx(stats.ttest_1samp(sums, 0.0, alternative="greater").pvalue)
    with_nan = np.concatenate([g, [np.nan, np.nan]])
    assert heldout_gain_pvalue(with_nan) == pytest.approx(heldout_gain_pvalue(g))
    assert np.isnan(heldout_gain_pvalue(np.array([0.1, np.nan])))
    assert heldout_gain_pvalue(np.zeros(10)) == 1.0
    assert heldout_gain_pvalue(-np.abs(g)) > 0.999


# --------------------------------------------------------------------------------------------
# calibration on nulls: >= 200 null data sets across n, d, classes, priors and groups


def _null_case(rng, n, d, K, n_feats, n_attrs, skew=False, group_sizes=None):
    prior = 0.6 ** np.arange(K) if skew else np.ones(K)
    prior = prior / prior.sum()
    groups = None
    if group_sizes is not None:
        sizes = rng.integers(group_sizes[0], group_sizes[1] + 1, size=n)
        groups = np.repeat(np.arange(n), sizes)[:n]
    units = n if groups is None else int(groups.max()) + 1
    shared = rng.normal(size=(units, d))
    feats = {}
    for f in range(n_feats):
        X = rng.normal(size=(n, d))
        if groups is not None:                      # features correlated within a group too
            X = X + shared[groups]
        feats[("noise", f, None)] = X
    labels = {}
    for a in range(n_attrs):
        lab = rng.choice(K, size=units, p=prior)
        labels[f"a{a}"] = lab if groups is None else lab[groups]
    return feats, labels, groups


NULL_CASES = [   # (n, d, K, feature sets, attributes, skewed prior, group sizes, probe)
    (200, 8, 2, 6, 10, False, None, "linear"),
    (250, 4, 2, 3, 10, True, None, "linear"),
    (200, 1024, 2, 2, 10, False, None, "linear"),
    (400, 64, 5, 2, 10, True, None, "linear"),
    (300, 16, 3, 3, 10, False, (1, 5), "linear"),
    (200, 32, 10, 2, 10, False, None, "linear"),
    (5000, 8, 10, 1, 10, True, None, "linear"),
    (1000, 128, 3, 1, 10, True, (2, 4), "linear"),
    (200, 8, 3, 2, 10, False, None, "mlp"),
]


def test_null_false_positive_rate_is_within_a_binomial_band_at_005_and_001():
    rng = np.random.default_rng(2026)
    p = []
    for n, d, K, F, A, skew, gs, probe in NULL_CASES:
        feats, labels, groups = _null_case(rng, n, d, K, F, A, skew, gs)
        df = evaluate_sweep(feats, labels, groups=groups, probes=(probe,), n_bootstrap=0, progress=False,
                            probe_params={"mlp": {"hidden": 16}} if probe == "mlp" else None)
        assert df.p_test.eq("heldout").all() and df.p_value.equals(df.p_value_heldout)
        p.append(df.p_value.to_numpy())
    p = np.concatenate(p)
    print(f"null FPR over {len(p)}: {np.mean(p < 0.05):.3f} at 0.05, {np.mean(p < 0.01):.3f} at 0.01")
    assert len(p) >= 200 and np.isfinite(p).all()
    for alpha in (0.05, 0.01):
        lo, hi = M.binomial_interval(len(p), alpha, 0.99)
        assert lo <= int((p < alpha).sum()) <= hi, (alpha, int((p < alpha).sum()), (lo, hi))
    assert int((p < 1e-3).sum()) <= 2                        # no tiny p-values on nulls (Holm decides there)


# --------------------------------------------------------------------------------------------
# power on planted Gaussian signals, against the 100-permutation test on the same data sets


POWER_CASES = [   # (n, d, K, feature sets, class-mean distance)
    (200, 8, 2, 40, 0.3),
    (200, 32, 4, 20, 0.55),
    (300, 16, 3, 20, 0.4),
]


def test_power_is_at_least_that_of_the_100_permutation_test():
    rng = np.random.default_rng(7)
    held, perm = [], []
    for n, d, K, F, delta in POWER_CASES:
        y = rng.integers(0, K, n)
        means = rng.normal(size=(K, d))
        means /= np.linalg.norm(means, axis=1, keepdims=True)
        feats = {("gauss", f, None): rng.normal(size=(n, d)) + delta * means[y] for f in range(F)}
        df = evaluate_sweep(feats, {"y": y}, probes=("linear",), n_permutations=100, n_bootstrap=0,
                            progress=False, probe_params={"linear": {"C": 1.0}})
        assert df.p_test.eq("permutation").all()
        held.append(df.p_value_heldout.to_numpy())
        perm.append(df.p_value_permutation.to_numpy())
    held, perm = np.concatenate(held), np.concatenate(perm)
    power_perm = np.mean(perm < 0.05)
    assert 0.2 < power_perm < 0.9                           # the signals are neither trivial nor hopeless
    assert np.mean(held < 0.05) >= power_perm
    assert np.mean(held < 0.01) >= np.mean(perm < 0.01)
    assert np.mean(held < 5e-4) > 0 == np.mean(perm < 5e-4)  # only the held-out test can pass a Holm-sized alpha


# --------------------------------------------------------------------------------------------
# the verdict on global nulls


def test_global_null_audits_rarely_declare_a_leak():
    """50 audits, each with three attributes (one task-relevant) independent of seven API-level
    feature sets: the number of audits with any LEAK stays within a binomial band of alpha."""
    rng = np.random.default_rng(11)
    n, audits = 200, 50
    feats = {}
    for level in ("topk_ids", "topk_logprobs", "top1_prob"):
        for k in ((1, 5, 20) if level != "top1_prob" else (None,)):
            d = 1 if k is None else (2 * k if level == "topk_ids" else k)
            feats[(level, None, k)] = rng.normal(size=(n, d))
    labels = {f"{a}{i}": rng.integers(0, K, n) for i in range(audits)
              for a, K in (("color", 4), ("shape", 3), ("pos", 4))}
    df = evaluate_sweep(feats, labels, probes=("linear",), n_bootstrap=200, progress=False)
    leaky = 0
    for i in range(audits):
        rows = df[df["attribute"].isin([f"{a}{i}" for a in ("color", "shape", "pos")])].copy()
        rows["task_relevant"] = rows["attribute"] == f"color{i}"
        leaky += any(f.kind == "leak" for f in verdict(rows))
    lo, hi = M.binomial_interval(audits, 0.05, 0.99)
    assert lo <= leaky <= hi


# --------------------------------------------------------------------------------------------
# groups a permutation cannot move


def hidden_leak_groups(seed=0):
    """30 groups of sizes 5..34 (every size unique), labels varying within groups, a strong signal."""
    rng = np.random.default_rng(seed)
    sizes = rng.permutation(np.arange(5, 35))
    groups = np.repeat(np.arange(30), sizes)
    y = rng.integers(0, 2, len(groups))
    X = rng.normal(size=(len(groups), 4)) + 1.5 * y[:, None]
    return X, y, groups


def test_permutations_refuse_groups_they_cannot_move_and_the_default_test_finds_the_leak():
    X, y, groups = hidden_leak_groups()
    assert unmovable_groups(y, groups) == 30
    with pytest.raises(LogitleakError, match="size no other group has"):
        permuted("y", y, permutation_index(len(y), 3, 0, groups), groups)
    with pytest.raises(LogitleakError, match="cannot move them"):
        evaluate_sweep({("residual", 0, None): X}, {"y": y}, groups=groups, probes=("linear",), n_permutations=20,
                       n_bootstrap=0, progress=False)
    r = evaluate_sweep({("residual", 0, None): X}, {"y": y}, groups=groups, probes=("linear",), n_bootstrap=200,
                       progress=False).iloc[0]
    assert r.accuracy > 0.8 and r.ci_low > r.baseline_accuracy and r.p_value < 1e-4
    # group-constant labels move between groups of any size, so permutations stay available there
    const = np.random.default_rng(1).integers(0, 2, 30)[groups]
    assert unmovable_groups(const, groups) == 0
    plan = plan_attribute("y", const, groups=groups, n_permutations=3, n_bootstrap=0)
    assert plan.n_variants == 5


# --------------------------------------------------------------------------------------------
# resume: a feature set's results do not depend on the others in the call


def test_feature_set_results_do_not_depend_on_what_they_are_batched_with():
    rng = np.random.default_rng(3)
    n = 150
    y = rng.integers(0, 3, n)
    feats = {("residual", layer, None): rng.normal(size=(n, 6)) + 0.4 * layer * y[:, None] for layer in range(3)}
    feats[("topk_ids", None, 5)] = rng.normal(size=(n, 6))
    labels = {"y": y, "z": rng.integers(0, 2, n)}
    kw = dict(n_bootstrap=50, progress=False, probe_params={"mlp": {"hidden": 8, "max_epochs": 80}})
    key = ("residual", 2, None)
    for probe, exact in (("mlp", True), ("linear", False)):
        whole = evaluate_sweep(feats, labels, probes=(probe,), **kw)
        alone = evaluate_sweep({key: feats[key]}, labels, probes=(probe,), **kw)
        part = whole[(whole["level"] == "residual") & (whole["layer"] == 2)].reset_index(drop=True)
        num = [c for c in part.columns if part[c].dtype.kind in "fi"]
        if exact:        # fitted one feature set at a time: bit for bit
            np.testing.assert_array_equal(part[num].to_numpy(float), alone[num].to_numpy(float))
        else:            # batched by width: the same optimisation, summed in a different order; float32
            # L-BFGS stops where the objective stops resolving (4 eps), so iterates agree to ~1e-4
            np.testing.assert_allclose(part[num].to_numpy(float), alone[num].to_numpy(float), rtol=1e-3, atol=1e-4)


def test_a_resumed_audit_probe_stage_reproduces_the_uninterrupted_one_exactly(tmp_path):
    from logitleak.config import make_config
    from logitleak.data import make_shapes
    from logitleak.probing.resume import probe_with_resume

    ps = make_shapes(120, seed=1)
    rng = np.random.default_rng(0)
    codes = np.unique(ps.labels("shape"), return_inverse=True)[1]
    feats = {(level, layer, None): rng.normal(size=(120, 5)) + 0.5 * layer * codes[:, None]
             for level in ("residual", "logit_lens_answers") for layer in range(3)}
    cfg = make_config({"task": "size", "probes": {"families": ["linear", "mlp"], "folds": 3, "bootstrap": 20}})
    attrs = ["size", "shape"]
    full = probe_with_resume(feats, ps, cfg, tmp_path / "a", attrs, progress=False)
    done = sorted((tmp_path / "a").glob("*.parquet"))
    assert len(done) == len(feats)
    interrupted = tmp_path / "b"
    interrupted.mkdir()
    for f in done[:4] + [tmp_path / "a" / "checksums.json"]:  # some feature sets finished before the interruption
        (interrupted / f.name).write_bytes(f.read_bytes())
    resumed = probe_with_resume(feats, ps, cfg, interrupted, attrs, progress=False)
    import pandas as pd
    pd.testing.assert_frame_equal(resumed, full, check_exact=True)
