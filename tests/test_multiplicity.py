"""The family adjustment of the API-level tests: Westfall–Young max-T over the shared permutations
against its definition and on nulls; a planted leak called readable with 200 permutations over a
40-row API family (where Holm cannot); designs that cannot reach alpha flagged, never "no leak"."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from logitleak.decisions import decide, holm, recommend_defence, westfall_young
from logitleak.decisions.multiplicity import configuration_pvalues, family_adjust, permutations_needed
from logitleak.probing import metrics as M
from logitleak.probing.permutations import permutation_index
from logitleak.probing.sweep import evaluate_sweep
from logitleak.report.verdict import verdict

pytestmark = pytest.mark.usefixtures("one_thread")


def _reference_maxt(stats: np.ndarray) -> np.ndarray:
    """Westfall & Young's step-down max-T written out loop by loop."""
    C, m = stats.shape
    z = np.zeros_like(stats)
    for r in range(m):
        sd = stats[:, r].std()
        z[:, r] = (stats[:, r] - stats[:, r].mean()) / sd if sd > 0 else 0.0
        for c in range(C):                       # ties with the real labels' statistic count against them
            if stats[c, r] >= stats[0, r] - 1e-9 * max(1.0, abs(stats[0, r])):
                z[c, r] = max(z[c, r], z[0, r])
    order = sorted(range(m), key=lambda r: -z[0, r])
    adj, running = {}, 0.0
    for j, r in enumerate(order):
        rest = order[j:]
        count = sum(max(z[c, k] for k in rest) >= z[0, r] - 1e-9 * max(1.0, abs(z[0, r])) for c in range(C))
        running = max(running, count / C)
        adj[r] = min(running, 1.0)
    return np.array([adj[r] for r in range(m)])


def test_westfall_young_matches_its_definition_and_reduces_to_the_permutation_p_value():
    rng = np.random.default_rng(0)
    for C, m in ((21, 1), (50, 7), (200, 12)):
        stats = rng.normal(size=(C, m)) + np.linspace(0, 3, m)[None] * (np.arange(C) == 0)[:, None]
        np.testing.assert_allclose(westfall_young(stats), _reference_maxt(stats))
    one = rng.normal(size=(100, 1))
    assert westfall_young(one)[0] == pytest.approx(M.permutation_p_value(one[0, 0], one[1:, 0]))
    # ties (accuracies of a few samples) count against the real labels
    tied = np.array([[0.5, 0.7], [0.5, 0.7], [0.4, 0.7], [0.3, 0.2]])
    assert configuration_pvalues(tied)[0].tolist() == [0.5, 0.75]
    assert westfall_young(tied).min() >= 0.5


@settings(max_examples=150, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(2, 40), st.integers(1, 8)),
              elements=st.floats(-1e3, 1e3, allow_nan=False, width=32)))
def test_westfall_young_is_a_valid_adjustment_on_any_statistics(stats):
    adj = westfall_young(stats)
    raw = configuration_pvalues(stats)[0]
    C = stats.shape[0]
    assert adj.shape == raw.shape and np.isfinite(adj).all()
    assert (adj >= 1.0 / C - 1e-12).all() and (adj <= 1.0).all()
    assert (adj >= raw - 1e-12).all()                        # never below the test's own permutation p-value
    np.testing.assert_allclose(adj, _reference_maxt(stats))


def _shared_null_stats(rng, n, m_feats, n_attrs, N):
    """|correlation| of every (feature, attribute) pair on the real labels and under the shared
    permutations: a cheap stand-in for a probe's statistic, dependent across the family."""
    X = rng.normal(size=(n, m_feats))
    X[:, 1::2] += X[:, ::2][:, : X[:, 1::2].shape[1]]       # correlated tests
    Y = rng.normal(size=(n, n_attrs))
    Y[:, 1] += Y[:, 0]
    index = np.concatenate([np.arange(n)[None], permutation_index(n, N, int(rng.integers(1 << 30)))])
    Xs = (X - X.mean(0)) / X.std(0)
    out = []
    for idx in index:
        Ys = Y[idx]
        Ys = (Ys - Ys.mean(0)) / Ys.std(0)
        out.append(np.abs(Xs.T @ Ys / n).ravel())
    return np.array(out)


def test_westfall_young_controls_the_familywise_error_on_shared_permutation_nulls():
    rng = np.random.default_rng(20)
    reps, alpha = 400, 0.05
    rejected = 0
    for _ in range(reps):
        stats = _shared_null_stats(rng, 60, 10, 3, 99)
        rejected += bool((westfall_young(stats) < alpha).any())
    lo, hi = M.binomial_interval(reps, alpha, 0.99)
    assert lo <= rejected <= hi, (rejected, (lo, hi))


def _planted_family(n_permutations: int, seed: int = 0):
    """20 API-named feature sets x 2 attributes = 40 rows: a 4-class signal planted in 10 sets for
    attribute 'a'; attribute 'b' and the other 10 sets are noise."""
    rng = np.random.default_rng(seed)
    n, d, K = 120, 4, 4
    y = rng.integers(0, K, n)
    means = rng.normal(size=(K, d))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    feats = {("topk_ids", None, k): rng.normal(size=(n, d)) + (1.5 * means[y] if k <= 10 else 0.0)
             for k in range(1, 21)}
    return evaluate_sweep(feats, {"a": y, "b": rng.integers(0, 3, n)}, probes=("linear",),
                          n_permutations=n_permutations, n_bootstrap=200, progress=False,
                          probe_params={"linear": {"C": 1.0}})


def test_a_planted_leak_is_readable_with_200_permutations_over_a_40_row_api_family():
    df = _planted_family(200)
    assert len(df) == 40 and df.p_test.eq("permutation").all()
    assert df.permutation_stats.map(len).eq(201).all() and df.permutation_key.nunique() == 1
    dec = decide(df)
    assert dec.adjustment == "westfall-young" and dec.reachable and dec.status == "leak"
    planted = (dec.table["attribute"] == "a") & (dec.table["k"] <= 10)
    assert dec.table.loc[planted, "readable"].all()
    assert dec.table.loc[planted, "p_holm"].max() == pytest.approx(1 / 201)
    assert not dec.table.loc[~planted, "readable"].any()
    assert np.nanmin(holm(df["p_value"])) == pytest.approx(40 / 201)   # Holm could call nothing here
    leaks = [f for f in verdict(df) if f.kind == "leak"]
    assert [f.attribute for f in leaks] == ["a"]
    assert "Westfall–Young" in next(f.text for f in verdict(df) if f.kind == "method")


def test_a_design_that_cannot_reach_alpha_is_flagged_not_reported_as_no_leak():
    df = _planted_family(9)
    df = df[df["attribute"] == "b"].assign(task_relevant=False)    # nothing readable: the null attribute alone
    dec = decide(df)
    assert dec.status == "untestable" and not dec.reachable and dec.smallest_p == pytest.approx(0.1)
    assert dec.permutations_needed == 20
    # the smallest count that reaches alpha, exact where tests / alpha rounds (3 / 0.1 = 30.000000000000004)
    for m, alpha, method, needed in ((40, 0.05, "holm", 800), (3, 0.1, "holm", 30), (1, 0.01, "westfall-young", 100)):
        assert permutations_needed(m, alpha, method) == needed
        assert m / (needed + 1) < alpha <= m / needed if method == "holm" else 1 / (needed + 1) < alpha <= 1 / needed
    head = verdict(df)[0].text
    assert head.startswith("No conclusion: with 9 permutations no p-value can fall below 0.05")
    assert "at least 20 permutations" in head and "No leak found" not in head
    quiet = [f.text for f in verdict(df) if f.kind == "no_leak"]
    assert quiet and all("not testable" in t for t in quiet)
    trade = df.assign(defense="none", defense_label="none", utility_accuracy=1.0, utility_loss=0.0)
    rec = recommend_defence(trade, max_loss=0.05)
    assert rec.kind == "untestable" and rec.text.startswith("No recommendation: with 9 permutations")
    # the same rows from enough permutations can be decided (and say "no leak")
    assert decide(_planted_family(19)[lambda t: t["attribute"] == "b"]).status == "untestable"
    enough = _planted_family(20)[lambda t: t["attribute"] == "b"]
    assert decide(enough).status == "clean"
    assert "no API-level test is significant (Westfall–Young-adjusted, alpha=0.05)" in verdict(enough)[0].text


def test_mixed_or_foreign_permutation_rows_fall_back_to_holm_and_its_floor():
    stats = [[0.9] + [0.3] * 49, [0.8] + [0.4] * 49]
    rows = pd.DataFrame({"p_value": [0.02, 0.02], "p_test": "permutation", "n_permutations": 49,
                         "permutation_stats": stats, "permutation_key": ["x", "x"]})
    adjusted, method = family_adjust(rows)
    assert method == "westfall-young" and adjusted == pytest.approx([0.02, 0.02])
    rows["permutation_key"] = ["x", "y"]                    # permuted differently: no joint null
    adjusted, method = family_adjust(rows)
    assert method == "holm" and adjusted == pytest.approx([0.04, 0.04])
