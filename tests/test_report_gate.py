"""verdict.json and the CI gate on known tables: the decisions as data, and when --fail-on holds."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from logitleak.decisions import CALLS, decide, recommend_defence
from logitleak.report.gate import FAIL_ON, defend_failing, defend_record, failing, verdict_record, write_verdict

try:
    from report_fixtures import make_table
except ImportError:  # tests/ imported as a package
    from tests.report_fixtures import make_table


def test_verdict_json_holds_each_attributes_call_strongest_reading_and_smallest_k(tmp_path):
    dec = decide(make_table())
    path = write_verdict(tmp_path, verdict_record(dec))
    record = json.loads(path.read_text())                  # plain JSON: NaN written as null
    assert path.name == "verdict.json" and record["status"] == "leak" and record["alpha"] == 0.05
    assert record["leaks"] == ["shape"] and record["readable"] == ["color", "shape"]
    by = {a["attribute"]: a for a in record["attributes"]}
    assert {a: r["call"] for a, r in by.items()} == {"color": "readable", "shape": "leak", "size": "no_leak"}
    assert all(r["call"] in CALLS for r in by.values())
    shape = by["shape"]
    top = dec.attributes["shape"].strongest
    assert shape["strongest"]["level"] == "topk_ids" and shape["strongest"]["probe"] == "mlp"
    assert shape["strongest"]["bits"] == pytest.approx(top["v_info_bits"])
    assert shape["strongest"]["bits_ci"] == pytest.approx([top["v_info_ci_low"], top["v_info_ci_high"]])
    assert shape["strongest"]["p_holm"] == pytest.approx(top["p_holm"]) and shape["strongest"]["readable"]
    assert shape["smallest_k"] == 5 and shape["shown_from"]["k"] == 5
    assert by["size"]["smallest_k"] is None and by["size"]["shown_from"] is None and not by["size"]["readable"]
    assert record["verdict"].startswith("LEAK: an API user CAN read 1 of the 2")


def test_the_gate_holds_for_a_leak_or_readable_and_never_for_none():
    leak, null = decide(make_table()), decide(make_table("null"))
    assert failing(leak, "leak") == ["shape"] and failing(leak, "readable") == ["color", "shape"]
    assert failing(leak, "none") == [] and failing(null, "leak") == [] and failing(null, "readable") == []
    no_api = decide(make_table(levels=["residual"]))     # readable inside the model only: no API claim
    assert failing(no_api, "leak") == [] and failing(no_api, "readable") == []
    assert FAIL_ON == ("none", "leak", "readable")


def _defence(table: pd.DataFrame, label: str, utility: float) -> pd.DataFrame:
    df = table.copy()
    df["defense"], df["defense_label"], df["strength"], df["utility_accuracy"] = label.split(":")[0], label, None, utility
    return df


def test_a_defend_runs_gate_reads_the_defence_it_would_deploy():
    loud, quiet = make_table(), make_table("null")
    t = pd.concat([_defence(loud, "none", 0.95), _defence(quiet, "gauss:8", 0.94)], ignore_index=True)
    t["utility_loss"] = 0.95 - t["utility_accuracy"]
    rec = recommend_defence(t, max_loss=0.05)
    assert rec.label == "gauss:8"
    assert defend_failing(rec, "leak") == []                  # deployed with gauss:8: nothing leaks
    record = defend_record(rec)
    assert record["deployed"] == "gauss:8" and record["recommendation"]["kind"] == "recommended"
    assert record["defences"]["none"]["leaks"] == ["shape"] and record["defences"]["gauss:8"]["leaks"] == []
    assert json.loads(json.dumps(record)) == record
    none_found = recommend_defence(t, max_loss=0.0)            # too costly: nothing is deployed, the leak stays
    assert none_found.label is None and defend_failing(none_found, "leak") == ["shape"]


def _probe(tmp_path, name: str, x: np.ndarray, labels: pd.DataFrame, *args: str):
    feats, lab, out = tmp_path / f"{name}.npz", tmp_path / f"{name}.csv", tmp_path / name
    np.savez(feats, topk_logprobs=x)
    labels.to_csv(lab, index=False)
    cmd = [sys.executable, "-c", "from logitleak.cli import main; main()", "probe", "--features", str(feats),
           "--labels", str(lab), "--out", str(out), "--probes", "linear", "--bootstrap", "100", "--no-progress", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600), out


def test_probe_fail_on_leak_exits_3_on_a_planted_leak_and_0_on_random_labels(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    signal = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    x[:, 0] += 2.0 * signal                                      # the feature set carries 'secret'
    labels = pd.DataFrame({"task": rng.integers(0, 2, n), "secret": signal})
    planted, out = _probe(tmp_path, "planted", x, labels, "--task", "task", "--fail-on", "leak")
    assert planted.returncode == 3, planted.stderr[-2000:]
    assert "--fail-on leak: task-irrelevant attributes readable at the API level (secret); exit code 3." in planted.stdout
    assert json.loads((out / "verdict.json").read_text())["leaks"] == ["secret"]
    random = pd.DataFrame({"task": rng.integers(0, 2, n), "secret": rng.permutation(signal)})
    null, out = _probe(tmp_path, "random", x, random, "--task", "task", "--fail-on", "leak")
    assert null.returncode == 0, null.stdout[-2000:] + null.stderr[-2000:]
    record = json.loads((out / "verdict.json").read_text())
    assert record["leaks"] == [] and {a["attribute"]: a["call"] for a in record["attributes"]}["secret"] == "no_leak"
    bad, _ = _probe(tmp_path, "bad", x, labels, "--fail-on", "sometimes")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "Error: --fail-on 'sometimes' is not a gate condition; pass one of none, leak, readable." in bad.stderr
