"""The attacker's view of a row: ROC / low-FPR figures against scikit-learn, exposure, and calibration on nulls."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from logitleak.probing.exposure import exposure_columns, most_exposed
from logitleak.probing.roc import macro, one_vs_rest, roc_stats
from logitleak.probing.sweep import evaluate_sweep


def tpr_at(y, s, a, w=None):
    fpr, tpr, _ = roc_curve(y, s, sample_weight=w, drop_intermediate=False)
    return tpr[fpr <= a + 1e-12].max()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_figures_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    n = 400
    y = rng.integers(0, 2, n).astype(bool)
    s = np.round(rng.normal(size=n) + 0.8 * y, 1)                # rounded: many ties
    w = rng.multinomial(n, np.ones(n) / n, size=3).astype(float)  # three bootstrap resamples
    auc, tpr = roc_stats(s, y, np.vstack([np.ones(n), w]), fprs=(0.01, 0.1, 0.5))
    for b, weights in enumerate([None, *w]):
        assert auc[b] == pytest.approx(roc_auc_score(y, s, sample_weight=weights), abs=1e-12)
        for j, a in enumerate((0.01, 0.1, 0.5)):
            assert tpr[b, j] == pytest.approx(tpr_at(y, s, a, weights), abs=1e-12)


def test_one_vs_rest_macro_is_scikit_learns():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 300)
    p = rng.dirichlet(np.ones(4), 300) + 0.3 * np.eye(4)[y]
    p /= p.sum(1, keepdims=True)
    auc_v, _ = one_vs_rest(p, y, 4)
    assert macro(auc_v)[0] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-12)


def test_exposure_counts_the_records_read_with_certainty():
    post = np.array([0.95, 0.2, 0.91, 0.5, np.nan][:4])
    prior = np.array([0.3, 0.3, 0.95, 0.3])
    cols = exposure_columns(post, prior, np.ones((1, 4)))
    assert cols["exposed_posterior_0_9"] == 0.5 and cols["exposed_prior_0_9"] == 0.25
    assert cols["exposed_posterior_0_5"] == 0.75 and cols["exposed_prior_0_5"] == 0.25
    assert most_exposed(np.array([0.1, np.nan, 0.9, 0.5]), 3).tolist() == [2, 3, 0]


def test_a_leak_exposes_records_the_prior_does_not(one_thread):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    X = rng.normal(size=(400, 4))
    X[:, 0] += 3.0 * y
    row = evaluate_sweep({("topk_ids", None, 5): X}, {"a": y}, probes=("linear",), n_bootstrap=200, progress=False,
                         attack_levels={"topk_ids"}).iloc[0]
    assert row.auc > 0.95 and row.auc_ci_low > 0.9 and row.tpr_at_1pct_fpr > 0.3
    assert row.exposed_posterior_0_9 > 0.6 > row.exposed_prior_0_9 == 0.0
    assert row.exposed_posterior_0_9_ci_low <= row.exposed_posterior_0_9 <= row.exposed_posterior_0_9_ci_high
    assert np.isnan(row.posterior_true).sum() == 0 and len(row.posterior_true) == 400


def test_on_nulls_the_auc_interval_and_the_curve_p_values_keep_their_rates(one_thread):
    """Random features, random labels: 64 replicates (16 feature sets x 4 attributes)."""
    rng = np.random.default_rng(7)
    n = 240
    feats = {("topk_ids", None, k): rng.normal(size=(n, 6)) for k in range(1, 17)}
    labels = {f"a{i}": rng.integers(0, 2 + i % 2, n) for i in range(4)}
    rows = evaluate_sweep(feats, labels, probes=("linear",), n_bootstrap=200, progress=False,
                          attack_levels={"topk_ids"}, attack_sizes=(25, 100))
    full = rows[rows.attacker_samples.isna()]
    covered = (full.auc_ci_low <= 0.5) & (0.5 <= full.auc_ci_high)
    assert len(full) == 64 and covered.mean() >= 0.88          # nominal 95%; 0.88 is 2.6 sd below it at 64
    curve = rows[rows.attacker_samples.notna()]
    assert len(curve) == 128
    assert (curve.p_value < 0.05).mean() <= 0.10                # nominal 5%
    assert (full.p_value < 0.05).mean() <= 0.12
    exposed = full.exposed_posterior_0_5_ci_low
    assert (exposed <= full.exposed_posterior_0_5).all()
