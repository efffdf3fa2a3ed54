"""End to end: `logitleak audit` through the CLI on the organism, shapes and an image folder."""

import json
import subprocess
import sys

import pandas as pd
import pytest
from folders import write_shapes_images

from logitleak.results import RESULT_COLUMNS

SMALL = ["--samples", "120", "--levels", "residual,tuned_lens_topk,topk_logprobs,topk_ids,top1_prob",
         "--k", "1,5", "--layers", "0,4", "--probes", "linear", "--permutations", "5", "--folds", "3", "--quiet"]


def run_cli(*args):
    return subprocess.run([sys.executable, "-c", "from logitleak.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def organism(organism_dir):
    return str(organism_dir)


def check_outputs(out):
    for name in ("results.parquet", "results.csv", "results.json", "run.json", "report.html"):
        assert (out / name).is_file(), name
    df = pd.read_parquet(out / "results.parquet")
    assert list(df.columns[: len(RESULT_COLUMNS)]) == list(RESULT_COLUMNS)
    rows = json.loads((out / "results.json").read_text())
    assert isinstance(rows, list) and len(rows) == len(df) and set(RESULT_COLUMNS) <= set(rows[0])
    assert len(pd.read_csv(out / "results.csv")) == len(df)
    run = json.loads((out / "run.json").read_text())
    for key in ("config", "versions", "seed", "model_fingerprint", "data_fingerprint", "timings"):
        assert key in run
    return df, run


def test_small_audit_through_the_cli(tmp_path, organism):
    out = tmp_path / "audit"
    res = run_cli("audit", "--model", organism, "--data", "shapes", "--task", "color", "--out", str(out), *SMALL)
    assert res.returncode == 0, res.stderr
    df, run = check_outputs(out)
    # one row per (level, layer, k, attribute, probe): 2 residual + 2x2 tuned + 2 + 2 + 1 top1 feature sets x
    # (5 class attributes + 7 numeric ones: box, centre, area)
    assert len(df) == (2 + 4 + 2 + 2 + 1) * 12
    assert (df.target == "numeric").sum() == (2 + 4 + 2 + 2 + 1) * 7
    assert set(df.level) == {"residual", "tuned_lens_topk", "topk_logprobs", "topk_ids", "top1_prob"}
    assert df.loc[df.level == "residual", "layer"].dropna().astype(int).tolist().count(4) == 12
    assert df.loc[df.level == "topk_ids", "layer"].isna().all()
    assert (df.task_relevant == (df.attribute == "color")).all()
    color = df[(df.attribute == "color") & (df.level == "residual") & (df.layer == 4)].iloc[0]
    assert color.accuracy > 0.8 and color.accuracy > color.baseline_accuracy
    assert "Results, run record and report written to" in res.stdout
    # Rerun: every finished stage is reused (no new probe result files), same table.
    before = sorted(p.name for p in (out / "cache" / "probes").iterdir())
    res2 = run_cli("audit", "--model", organism, "--data", "shapes", "--task", "color", "--out", str(out), *SMALL)
    assert res2.returncode == 0, res2.stderr
    assert sorted(p.name for p in (out / "cache" / "probes").iterdir()) == before
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results.parquet"), df)
    # A different audit into the same directory is refused, and nothing is lost.
    res3 = run_cli("audit", "--model", organism, "--data", "shapes", "--task", "shape", "--out", str(out), *SMALL)
    assert res3.returncode == 2 and "already holds a different audit" in res3.stderr and "--force" in res3.stderr
    assert "Traceback" not in res3.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results.parquet"), df)


def write_folder(root, n=60):
    write_shapes_images(root, n, seed=5)[1].to_csv(root / "labels.csv", index=False)


def test_image_folder_audit(tmp_path, organism):
    folder = tmp_path / "imgs"
    folder.mkdir()
    write_folder(folder)
    out = tmp_path / "out"
    res = run_cli("audit", "--model", organism, "--data", str(folder), "--task", "shape",
                  "--attributes", "shape,background", "--out", str(out), "--samples", "60",
                  "--levels", "residual,topk_logprobs", "--k", "2", "--layers", "4", "--probes", "linear",
                  "--permutations", "5", "--folds", "3", "--quiet")
    assert res.returncode == 0, res.stderr
    df, run = check_outputs(out)
    assert set(df.attribute) == {"shape", "background"} and run["n_samples"] == 60
    assert run["config"]["question"] is None and "shape" in run["task"]


@pytest.mark.parametrize("case, message", [
    ("missing_image", "does not exist; fix the path or remove the row"),
    ("no_attribute", "Attribute 'texture' is not a column"),
    ("one_class", "single class"),
    ("bad_key", "unknown key 'modle'"),
])
def test_bad_inputs_end_in_one_sentence(tmp_path, organism, case, message):
    folder = tmp_path / "imgs"
    folder.mkdir()
    write_folder(folder, n=12)
    args = ["audit", "--model", organism, "--data", str(folder), "--task", "color", "--out", str(tmp_path / "o"),
            "--samples", "12", "--quiet"]
    if case == "missing_image":
        (folder / "3.png").unlink()
    elif case == "no_attribute":
        args[args.index("color")] = "texture"
    elif case == "one_class":
        table = pd.read_csv(folder / "labels.csv")
        table["size"] = "small"
        table.to_csv(folder / "labels.csv", index=False)
    elif case == "bad_key":
        cfg = tmp_path / "c.yaml"
        cfg.write_text("modle: organism\n")
        args += ["--config", str(cfg)]
    res = run_cli(*args)
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
