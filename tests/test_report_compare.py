"""`logitleak compare` on known runs: calls per run, the decisions that changed, differences with
intervals on the cells two runs share, defend folders as one run per defence, and bad folders."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pandas as pd
import pytest

from logitleak.decisions import decide
from logitleak.errors import LogitleakError
from logitleak.integrity import write_json
from logitleak.report.compare import Z95, compare_runs, delta_interval, load_runs
from logitleak.results import write_results

try:
    from report_fixtures import make_table
except ImportError:  # tests/ imported as a package
    from tests.report_fixtures import make_table


def _audit(root, name, table, **info):
    out = root / name
    write_results(table, out)
    write_json(out / "run.json", {"model": name, **info})
    return out


def _defend(root, name, tables: dict[str, pd.DataFrame]):
    out = root / name
    rows = []
    for label, table in tables.items():
        t = table.copy()
        t["defense"], t["defense_label"], t["strength"], t["utility_accuracy"] = label.split(":")[0], label, None, 0.9
        rows.append(t)
    write_results(pd.concat(rows, ignore_index=True), out, stem="tradeoff")
    (out / "tradeoff.parquet").unlink()                       # as defend leaves it
    return out


def test_two_audits_name_the_decisions_that_changed_and_the_differences(tmp_path):
    a, b = _audit(tmp_path, "v1", make_table()), _audit(tmp_path, "v2", make_table("null"))
    cmp = compare_runs(load_runs([a, b]))
    assert [r.name for r in cmp.runs] == ["v1", "v2"] and cmp.left_out == []
    assert cmp.calls.set_index("attribute").to_dict("index") == {
        "color": {"v1": "readable", "v2": "not_readable"}, "shape": {"v1": "leak", "v2": "no_leak"},
        "size": {"v1": "no_leak", "v2": "no_leak"}}
    assert cmp.changes == [{"attribute": "color", "from_run": "v1", "from": "readable", "run": "v2", "to": "not_readable"},
                           {"attribute": "shape", "from_run": "v1", "from": "leak", "run": "v2", "to": "no_leak"}]
    r = cmp.readings.set_index(["attribute", "level"])
    shape = r.loc[("shape", "topk_ids")]
    before = decide(make_table()).attributes["shape"].by_level["topk_ids"]
    after = decide(make_table("null")).attributes["shape"].by_level["topk_ids"]
    assert shape["base_bits"] == pytest.approx(before["v_info_bits"]) and shape["bits"] == pytest.approx(0.01)
    # the difference's interval: each reading's own interval read as a normal one (here both +-0.08)
    se = 0.16 / (2 * Z95)
    half = Z95 * math.hypot(se, se)
    assert shape["delta_bits"] == pytest.approx(after["v_info_bits"] - before["v_info_bits"])
    assert (shape["delta_ci_low"], shape["delta_ci_high"]) == pytest.approx(
        (shape["delta_bits"] - half, shape["delta_bits"] + half))
    assert bool(shape["readable_changed"]) and not bool(r.loc[("size", "topk_ids")]["readable_changed"])
    assert len(cmp.readings) == len(set(make_table()["level"])) * 3        # every level, each attribute, one run


def test_a_run_against_itself_changes_nothing():
    d = {"v_info_bits": 0.5, "v_info_ci_low": 0.4, "v_info_ci_high": 0.6}
    assert delta_interval(d, d)[0] == 0.0
    lo, hi = delta_interval(d, d)[1:]
    assert lo == pytest.approx(-hi) and hi == pytest.approx(math.hypot(0.1, 0.1))
    assert math.isnan(delta_interval(d, {"v_info_bits": 0.7})[1])          # no interval: no interval claimed


def test_a_defend_folder_is_one_run_per_defence_met_on_the_cells_both_measured(tmp_path):
    audit = _audit(tmp_path, "audit", make_table())
    k20 = make_table(levels=["topk_ids", "topk_logprobs", "top1_prob"])
    k20 = k20[k20["k"].isna() | (k20["k"] == 20)]
    k1 = make_table("null", levels=["topk_ids", "topk_logprobs", "top1_prob"])
    k1 = k1[k1["k"].isna() | (k1["k"] == 1)]
    defend = _defend(tmp_path, "def", {"none": k20, "topk:1": k1})
    cmp = compare_runs(load_runs([audit, defend]))
    assert [r.name for r in cmp.runs] == ["audit", "def [none]", "def [topk:1]"]
    assert [r.kind for r in cmp.runs] == ["audit", "defence", "defence"]
    assert [(c["attribute"], c["run"], c["to"]) for c in cmp.changes] == [
        ("color", "def [topk:1]", "not_readable"), ("shape", "def [topk:1]", "no_leak")]
    by_run = {name: g for name, g in cmp.readings.groupby("run")}
    assert set(by_run["def [none]"]["k"].dropna().astype(int)) == {20} == set(by_run["def [none]"]["base_k"].dropna())
    assert set(by_run["def [topk:1]"]["k"].dropna().astype(int)) == {1}
    assert set(by_run["def [none]"]["level"]) == {"topk_ids", "topk_logprobs", "top1_prob"}

    out = tmp_path / "cmp"
    res = subprocess.run([sys.executable, "-c", "from logitleak.cli import main; main()", "compare", str(audit),
                          str(defend), "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "shape: LEAK in audit, no leak in def [topk:1]." in res.stdout
    assert "color: readable in audit, NOT readable in def [topk:1]." in res.stdout
    assert sorted(p.name for p in out.iterdir()) == ["compare.html", "compare.json", "comparison.csv", "comparison.json"]
    record = json.loads((out / "compare.json").read_text())
    assert record["baseline"] == "audit" and len(record["changes"]) == 2
    assert len(json.loads((out / "comparison.json").read_text())) == len(pd.read_csv(out / "comparison.csv"))
    html = (out / "compare.html").read_text(encoding="utf-8")
    assert html.count('class="call-no_leak changed"') == 1 and "<script" not in html
    assert "data:image/png;base64," in html


def test_bad_folders_are_refused_in_one_sentence_before_anything_is_written(tmp_path):
    audit = _audit(tmp_path, "audit", make_table())
    (tmp_path / "empty").mkdir()
    other = _audit(tmp_path, "other", make_table().assign(attribute="texture"))

    def run(*args):
        return subprocess.run([sys.executable, "-c", "from logitleak.cli import main; main()", "compare", *args,
                               "--out", str(tmp_path / "never")], capture_output=True, text=True, timeout=600)

    for args, message in (
        ([str(audit), str(tmp_path / "empty")], "holds neither results.parquet nor tradeoff.json"),
        ([str(audit), str(tmp_path / "missing")], "is not a run's output folder"),
        ([str(audit)], "needs at least two runs"),
        ([str(audit), str(other)], "The runs share no attribute"),
    ):
        res = run(*args)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()


def test_runs_that_share_no_cell_are_refused(tmp_path):
    a = _audit(tmp_path, "a", make_table(levels=["residual"]))
    b = _audit(tmp_path, "b", make_table(levels=["topk_ids"]))
    with pytest.raises(LogitleakError, match="b shares no level, layer and k with a, so their readings cannot be"):
        compare_runs(load_runs([a, b]))
