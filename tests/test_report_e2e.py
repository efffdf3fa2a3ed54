"""End to end on the organism, through the installed command: the demo's log (a finished phase falls
silent, tables never wrap in a 200-column log), the gate (--fail-on leak: 3 on the demo, 0 on random
labels), verdict.json, and `logitleak compare` of the demo and a defend of it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from folders import write_shapes_images

SAMPLES = "200"
"""The demo's scope cut to keep the test affordable (the leaks are still clear at 200 samples)."""
DEFEND_ATTRIBUTES = "shape,size,position,background"


def run_cli(*args, columns: int | None = None):
    env = {**os.environ, **({"COLUMNS": str(columns)} if columns else {})}
    return subprocess.run([sys.executable, "-c", "from logitleak.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=1500, env=env)


@pytest.fixture(scope="module")
def demo(tmp_path_factory, organism_dir):
    out = tmp_path_factory.mktemp("demo") / "demo"
    res = run_cli("demo", "--samples", SAMPLES, "--out", str(out), "--fail-on", "leak", columns=200)
    return res, out


@pytest.fixture(scope="module")
def defended(tmp_path_factory, organism_dir):
    out = tmp_path_factory.mktemp("defend") / "defended"
    res = run_cli("defend", "--model", "organism", "--data", "shapes", "--task", "color", "--samples", SAMPLES,
                  "--attributes", DEFEND_ATTRIBUTES, "--defenses", "none;topk:1", "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_fail_on_leak_exits_3_on_the_demo_with_verdict_json_beside_results(demo):
    res, out = demo
    assert res.returncode == 3, res.stdout[-3000:] + res.stderr[-3000:]
    assert (out / "results.json").is_file() and (out / "report.html").is_file()   # everything written first
    record = json.loads((out / "verdict.json").read_text())
    assert record["status"] == "leak" and set(record["leaks"]) >= {"shape", "size", "position", "background"}
    by = {a["attribute"]: a for a in record["attributes"]}
    assert by["color"]["call"] == "readable" and by["color"]["task_relevant"]
    for name in record["leaks"]:
        top = by[name]["strongest"]
        assert by[name]["call"] == "leak" and top["readable"] and top["level"] in ("topk_ids", "topk_logprobs",
                                                                                   "topk_logits", "top1_prob")
        assert top["bits_ci"][0] <= top["bits"] <= top["bits_ci"][1] and top["p_holm"] < 0.05
        assert isinstance(by[name]["smallest_k"], int) or by[name]["shown_from"]["level"] == "top1_prob"
    line = f"--fail-on leak: task-irrelevant attributes readable at the API level ({', '.join(record['leaks'])}); exit code 3."
    assert line in res.stdout


def _steps_after_done(log: list[str]) -> dict[str, list[str]]:
    """For every phase or counted step: the lines about it printed after its done line."""
    out = {}
    for i, line in enumerate(log):
        m = re.match(r"^(\s*)(\[[^\]]+\]) (?:done in .*|\d+(?:/\d+)? \(.*\) done)$", line)
        if m:
            indent, tag = m.groups()
            out[tag] = [ln for ln in log[i + 1:] if ln.startswith(indent + tag)]
    return out


def test_the_demo_log_falls_silent_after_each_done_and_its_tables_never_wrap(demo):
    res, out = demo
    log = res.stderr.splitlines()
    after = _steps_after_done(log)
    for tag in ("[organism]", "[load]", "[capture]", "[extract]", "[tuned lens]", "[probes]", "[report]"):
        assert tag in after, (tag, log[:40])
        assert after[tag] == [], (tag, after[tag])
    assert "  [extract] " in res.stderr and "\n[extract]" not in res.stderr       # nested under its phase
    # the summary table, drawn in a 200-column log: one line per attribute, no cell wrapped or cut
    lines = res.stdout.splitlines()
    top = next(i for i, ln in enumerate(lines) if ln.startswith("logitleak audit (alpha="))
    end = next(i for i in range(top, len(lines)) if lines[i].startswith("└"))
    table = lines[top:end + 1]
    assert all(len(ln) <= 200 for ln in table) and not any("…" in ln for ln in table)
    body = [ln for ln in table if ln.startswith("│")]
    attributes = [a["attribute"] for a in json.loads((out / "verdict.json").read_text())["attributes"]]
    assert [ln.split("│")[1].split()[0] for ln in body] == attributes            # no continuation lines
    header = next(ln for ln in table if ln.startswith("┃"))
    assert "strongest API reading (probe)" in header and "residual / tuned bits" in header
    organism = next(ln for ln in lines if ln.startswith("Organism ("))
    assert organism.endswith("held-out answer accuracy per question type")      # its title on one line
    # at the end, one line per phase with its wall and CPU time
    i = lines.index("Time per phase:")
    phases = [ln.split()[0] for ln in lines[i + 1:i + 9]]
    assert phases == ["organism", "load", "capture", "tuned_lens", "levels", "probes", "report", "total"]
    assert all(re.search(r"\d+\.\d s wall +\d+\.\d s CPU$", ln) for ln in lines[i + 1:i + 9])
    run = json.loads((out / "run.json").read_text())
    assert set(run["cpu_timings"]) == set(run["timings"]) == set(phases[1:-1])


def test_fail_on_leak_exits_0_on_a_probe_set_with_random_labels(tmp_path, organism_dir):
    folder = tmp_path / "imgs"
    folder.mkdir()
    _, labels = write_shapes_images(folder, int(SAMPLES), seed=11)
    rng = np.random.default_rng(11)
    for col in ("shape", "size", "position", "background"):     # labels that say nothing about the image
        labels[col] = rng.permutation(labels[col].to_numpy())
    labels.to_csv(folder / "labels.csv", index=False)
    out = tmp_path / "random"
    res = run_cli("audit", "--model", "organism", "--data", str(folder), "--labels", str(folder / "labels.csv"),
                  "--task", "color", "--attributes", "color,shape,size,position,background",
                  "--levels", "topk_ids,topk_logprobs,topk_logits,top1_prob", "--k", "5,20", "--out", str(out),
                  "--fail-on", "leak", "--quiet")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    record = json.loads((out / "verdict.json").read_text())
    assert record["leaks"] == [] and record["status"] == "clean"
    calls = {a["attribute"]: a["call"] for a in record["attributes"]}
    assert calls == {"color": "readable", "shape": "no_leak", "size": "no_leak", "position": "no_leak",
                     "background": "no_leak"}
    assert "--fail-on" not in res.stdout


def test_compare_names_the_decisions_a_defence_changed(demo, defended, tmp_path):
    _, audit = demo
    out = tmp_path / "cmp"
    res = run_cli("compare", str(audit), str(defended), "--out", str(out), columns=200)
    assert res.returncode == 0, res.stderr[-3000:]
    record = json.loads((out / "compare.json").read_text())
    runs = [r["name"] for r in record["runs"]]
    assert runs == ["demo", "defended [none]", "defended [topk:1]"]
    # the changes are exactly where the two runs' own verdict.json files disagree
    before = {a["attribute"]: a["call"] for a in json.loads((audit / "verdict.json").read_text())["attributes"]}
    after = json.loads((defended / "verdict.json").read_text())["defences"]
    want = [{"attribute": a, "from_run": "demo", "from": before[a], "run": f"defended [{label}]", "to": call}
            for label in ("none", "topk:1")
            for a, call in ((x["attribute"], x["call"]) for x in after[label]["attributes"])
            if a in before and call != before[a]]
    assert record["changes"] == want
    leaks = [a for a in DEFEND_ATTRIBUTES.split(",") if before[a] == "leak"]
    assert leaks and all({"attribute": a, "from_run": "demo", "from": "leak", "run": "defended [topk:1]",
                          "to": "no_leak"} in want for a in leaks)        # top-1 only: the leaks stop
    for a in leaks:
        assert f"{a}: LEAK in demo, no leak in defended [topk:1]." in res.stdout
    assert record["attributes_left_out"] == ["center_x", "center_y"]        # the demo's numeric ones
    readings = pd.read_csv(out / "comparison.csv")
    top1 = readings[readings["run"] == "defended [topk:1]"]
    assert set(top1["k"].dropna().astype(int)) == {1}                       # met on the cells both measured
    none = readings[readings["run"] == "defended [none]"]
    assert set(none["k"].dropna().astype(int)) == {20}
    ok = readings["delta_ci_low"].notna()
    assert ok.any() and (readings.loc[ok, "delta_ci_low"] <= readings.loc[ok, "delta_bits"]).all()
    assert np.allclose(readings["delta_bits"], readings["bits"] - readings["base_bits"])
    html = (out / "compare.html").read_text(encoding="utf-8")
    assert "Decisions that changed" in html and "<script" not in html and "http" not in html.split("</head>")[1]
