"""Attack-cost curves: nested attacker subsets of the training folds, scored on the audit's test folds."""

from html import escape

import numpy as np
import pandas as pd
import pytest

from logitleak.decisions import decide_attack
from logitleak.errors import LogitleakError
from logitleak.probing.attack_cost import attacker_order, first_n, usable_sizes
from logitleak.probing.attack_files import read_attack, split_attack, write_attack
from logitleak.probing.plans import plan_attribute
from logitleak.probing.sweep import evaluate_sweep

SIZES = (25, 50, 100, 200, 480)


def signal(n=600, seed=0, strength=1.0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n // 3)
    rng.shuffle(y)
    X = rng.normal(size=(n, 30))
    X[:, 0] += strength * y
    X[:, 1] += strength * (y == 1)
    return X, y


@pytest.fixture(scope="module")
def swept(one_thread):
    X, y = signal()
    z = np.random.default_rng(1).integers(0, 2, len(y))
    rows = evaluate_sweep({("topk_ids", None, 5): X, ("residual", 2, None): X}, {"a": y, "null": z},
                          probes=("linear",), n_bootstrap=300, progress=False, attack_levels={"topk_ids"},
                          attack_sizes=SIZES)
    return split_attack(rows)


def test_nested_subsets_grow_inside_the_training_fold():
    order = attacker_order(100, 0, None)
    pool = np.zeros(100, bool)
    pool[10:90] = True
    small, large = first_n(pool, order, 10), first_n(pool, order, 40)
    assert small.sum() == 10 and large.sum() == 40
    assert not (small & ~large).any() and not (large & ~pool).any()
    groups = np.repeat(np.arange(20), 5)                     # a group's samples share one place in the order
    g_order = attacker_order(100, 0, groups)
    assert all(len(set(g_order[groups == g])) == 1 for g in range(20))
    plan = plan_attribute("a", np.repeat([0, 1], 50), n_folds=5)   # training folds of 80
    assert usable_sizes([1000, 25, 80, 81, 25], plan) == [25, 80]


def test_the_curve_rises_and_its_top_point_is_the_audit_row(swept):
    results, tables = swept
    assert set(results["attacker_samples"].isna()) == {True}          # the results table keeps the full rows only
    curve = tables.curve[tables.curve["attribute"] == "a"].sort_values("attacker_samples", na_position="last")
    assert curve["attacker_samples"].tolist()[:-1] == list(SIZES) and pd.isna(curve["attacker_samples"].iloc[-1])
    acc = curve["accuracy"].to_numpy()
    assert acc[-2] - acc[0] > 0.1                                       # 25 samples read far less than 480
    assert np.all(np.diff(acc) > -0.03)                                 # and it rises (up to noise) with the size
    full = results[(results.level == "topk_ids") & (results.attribute == "a")].iloc[0]
    assert acc[-1] == pytest.approx(full.accuracy)                       # the curve's last point is the audit's row
    # 480 = the whole training fold: the same probe up to its C, so inside the audit row's interval
    assert full.ci_low <= acc[-2] <= full.ci_high
    assert (curve["n"] == full.n).all() and (curve["baseline_accuracy"] == full.baseline_accuracy).all()
    assert curve["p_value"].iloc[0] < 1e-3 and np.isfinite(curve["ci_low"]).all()
    assert tables.curve["level"].eq("topk_ids").all()                   # only the attacked (API) level has curves


def test_decisions_read_the_curve(swept):
    _, tables = swept
    dec = decide_attack(tables.curve)
    assert "null" not in dec.cheapest                                   # random labels: no attack reads it
    cheap = dec.cheapest["a"]
    rows = dec.curve[(dec.curve.attribute == "a") & dec.curve.readable]
    assert cheap.samples == rows["samples"].min() and not cheap.full_size
    assert dec.curve.loc[dec.curve.full_size, "samples"].eq(480).all()
    assert cheap.sentence().startswith(f"With {cheap.samples} labelled queries an attacker reads a from topk_ids (k=5) at ")
    full = dec.curve[dec.curve.full_size & (dec.curve.attribute == "a") & (dec.curve.level == "topk_ids")].iloc[0]
    assert cheap.sentence().endswith(f"; with 480, at {full.accuracy:.0%}.") and cheap.full_samples == 480


def test_tables_round_trip(tmp_path, swept):
    _, tables = swept
    write_attack(tables, tmp_path)
    back = read_attack(tmp_path)
    pd.testing.assert_frame_equal(back.curve, tables.curve, check_dtype=False)
    pd.testing.assert_frame_equal(back.roc, tables.roc)


def test_attack_sizes_flag_is_checked():
    from logitleak.config import make_config

    assert make_config({"probes": {"attack_sizes": [0]}}).probes.attack_sizes == []
    assert make_config({"probes": {"attack_sizes": [100, 25, 25]}}).probes.attack_sizes == [25, 100]
    with pytest.raises(LogitleakError) as err:
        make_config({"probes": {"attack_sizes": [-5]}}, flags={"probes.attack_sizes": "--attack-sizes"})
    assert str(err.value) == ("--attack-sizes [-5] (key 'probes.attack_sizes') is not valid: attacker sample counts "
                              "are positive integers, e.g. 25,50,100,200,500,1000 (0: no attack-cost curves).")


@pytest.fixture(scope="module")
def organism_audit(organism_dir, tmp_path_factory):
    from logitleak.audit import run_audit
    from logitleak.config import make_config

    out = tmp_path_factory.mktemp("attack") / "audit"
    cfg = make_config({"model": str(organism_dir), "data": "shapes", "task": "color", "samples": 400,
                       "attributes": ["color", "shape", "size"], "levels": ["topk_ids"], "k": [20],
                       "probes": {"families": ["linear"], "bootstrap": 300, "workers": 0,
                                  "attack_sizes": [25, 50, 100, 200, 315, 1000]}, "out": str(out)})
    return run_audit(cfg, progress=False)


def test_on_the_organism_a_leak_costs_fewer_samples_than_the_audit_holds(organism_audit):
    res, out = organism_audit, organism_audit.out_dir
    tables = read_attack(out)
    leak = res.decisions.attributes["shape"]
    assert leak.leak                                                  # shape leaks through the top-20 with ids
    curve = tables.curve[(tables.curve.attribute == "shape")].sort_values("attacker_samples", na_position="last")
    assert curve["attacker_samples"].tolist()[:-1] == [25, 50, 100, 200, 315]   # 1000 > the training folds (320)
    acc = curve["accuracy"].to_numpy()
    row = res.results[(res.results.level == "topk_ids") & (res.results.attribute == "shape")
                      & (res.results.probe == "linear")].iloc[0]
    assert acc[-1] == pytest.approx(row.accuracy)
    assert row.ci_low <= acc[-2] <= row.ci_high                       # 315 of 320 samples: the audit's reading
    assert acc[-2] > acc[0]                                           # the curve rises with the attacker's samples
    assert np.all(np.diff(acc) > -0.05)
    html = (out / "report.html").read_text()
    assert 'id="attacker"' in html and "labelled queries an attacker reads shape" in html
    assert res.results["attacker_samples"].isna().all()              # cost rows stay out of the results table


def test_the_report_shows_roc_and_the_most_exposed_records(organism_audit):
    out = organism_audit.out_dir
    html = (out / "report.html").read_text()
    assert "ROC at low false-positive rates" in html and "The most exposed records" in html
    tables = read_attack(out)
    shape = tables.exposure[(tables.exposure.attribute == "shape") & (tables.exposure.probe == "linear")]
    assert len(shape) == 400 and shape["name"].str.startswith("Sample ").all()      # every record, named
    top = shape.sort_values(["posterior_true", "sample"], ascending=[False, True]).iloc[0]
    assert f"<td>{escape(top['name'])}</td><td>{top['value']}</td>" in html
    row = organism_audit.results.query("level == 'topk_ids' and attribute == 'shape' and probe == 'linear'").iloc[0]
    assert row.exposed_posterior_0_9 == pytest.approx((shape.posterior_true >= 0.9).mean(), abs=1e-6)
    assert row.auc_ci_low <= row.auc <= row.auc_ci_high and row.auc > 0.6
    roc = tables.roc[(tables.roc.attribute == "shape") & (tables.roc.probe == "linear")]
    assert len(roc) == 25 and roc.tpr.is_monotonic_increasing


def test_the_curve_table_holds_only_readings_with_curves(one_thread):
    X, y = signal(n=300)
    rows = evaluate_sweep({("topk_ids", None, 5): X, ("topk_ids", None, 20): X}, {"a": y}, probes=("linear",),
                          n_bootstrap=50, progress=False, attack_levels={"topk_ids"}, attack_sizes=(25, 50),
                          attack_k=20)
    results, tables = split_attack(rows)
    assert len(results) == 2 and results["auc"].notna().all()          # both ks get the ROC columns
    assert set(tables.curve["k"]) == {20} and len(tables.curve) == 3     # 25, 50 and the full row, k=20 only
