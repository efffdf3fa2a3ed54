"""`logitleak probe` end to end: .npy / .npz / parquet features, CSV labels, files, schema, errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest

from logitleak.cli import main
from logitleak.results import RESULT_COLUMNS, read_results

pytestmark = pytest.mark.usefixtures("one_thread")


N = 60
FAST = ["--permutations", "4", "--bootstrap", "20", "--no-progress"]


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["logitleak", "probe", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def data(tmp_path):
    rng = np.random.default_rng(0)
    color = rng.integers(0, 2, N)
    size = rng.integers(0, 3, N)
    groups = np.repeat(np.arange(N // 3), 3)
    residual = rng.normal(size=(N, 3, 4))
    residual[:, 2, 0] += 3 * color                            # layer 2 knows the colour
    np.save(tmp_path / "residual.npy", residual)
    np.savez(tmp_path / "levels.npz", topk_logprobs=rng.normal(size=(N, 5)) + color[:, None],
             top1_prob=rng.random(N))
    pd.DataFrame({"a": rng.normal(size=N), "b": rng.normal(size=N) + color, "note": ["x"] * N}).to_parquet(
        tmp_path / "api.parquet")
    labels = pd.DataFrame({"color": np.where(color, "red", "blue"), "size": size, "item": groups})
    labels.to_csv(tmp_path / "labels.csv", index=False)
    return tmp_path


def test_npy_3d_one_feature_set_per_layer(monkeypatch, capsys, data):
    out = data / "out"
    code, stdout, err = run_cli(monkeypatch, capsys, "--features", data / "residual.npy", "--labels",
                                data / "labels.csv", "--out", out, "--group-column", "item", "--task", "color",
                                "--probes", "linear", *FAST)
    assert code == 0, err
    for name in ("results.parquet", "results.csv", "results.json"):
        assert (out / name).is_file()
    df = read_results(out)
    assert list(df.columns[: len(RESULT_COLUMNS)]) == list(RESULT_COLUMNS)
    assert len(df) == 3 * 2                                   # layers x attributes (linear only)
    assert set(df.level) == {"residual"} and sorted(set(df.layer.astype(int))) == [0, 1, 2]
    assert set(df.attribute) == {"color", "size"}              # the group column is not an attribute
    assert df.task_relevant.tolist() == [a == "color" for a in df.attribute]
    assert df.n_groups.eq(N // 3).all()
    best = df[(df.attribute == "color") & (df.layer == 2)].iloc[0]
    assert best.accuracy > 0.85
    assert len(json.loads((out / "results.json").read_text())) == len(df)
    assert len(pd.read_csv(out / "results.csv")) == len(df)
    assert "Probe results" in stdout and "color*" in stdout and "residual" in stdout


def test_npz_levels_and_parquet_features(monkeypatch, capsys, data):
    code, _, err = run_cli(monkeypatch, capsys, "--features", data / "levels.npz", "--labels", data / "labels.csv",
                           "--out", data / "o1", "--probes", "linear,mlp", "--folds", "3", *FAST)
    assert code == 0, err
    df = read_results(data / "o1")
    assert set(df.level) == {"topk_logprobs", "top1_prob"}
    assert len(df) == 2 * 3 * 2                                # levels x attributes (incl. item) x probes
    assert df.layer.isna().all()
    assert dict(zip(df.level, df.n_features)) == {"topk_logprobs": 5, "top1_prob": 1}
    assert df.n_folds.eq(3).all()

    pd.read_csv(data / "labels.csv").to_parquet(data / "labels.parquet")
    code, _, err = run_cli(monkeypatch, capsys, "--features", data / "api.parquet", "--labels", data / "labels.parquet",
                           "--out", data / "o2", "--probes", "linear", "--group-column", "item", *FAST)
    assert code == 0, err
    df = read_results(data / "o2")
    assert set(df.level) == {"api"} and df.n_features.eq(2).all()   # the text column is dropped


def test_mlp_runs_on_api_named_sets_by_default_and_where_asked(monkeypatch, capsys, data):
    np.savez(data / "mixed.npz", topk_logprobs=np.load(data / "levels.npz")["topk_logprobs"],
             hidden=np.random.default_rng(1).normal(size=(N, 4)))
    args = ["--features", data / "mixed.npz", "--labels", data / "labels.csv", "--folds", "3", *FAST]
    code, stdout, err = run_cli(monkeypatch, capsys, *args, "--out", data / "d")
    assert code == 0, err
    df = read_results(data / "d")
    assert set(df.loc[df.probe == "mlp", "level"]) == {"topk_logprobs"}      # the API-named set only
    assert set(df.loc[df.probe == "linear", "level"]) == {"topk_logprobs", "hidden"}
    assert list(df.level.drop_duplicates()) == ["topk_logprobs", "hidden"]   # rows in the file's order
    assert "The MLP probe ran on 1 of 2 feature sets" in " ".join(stdout.split())
    for spec, expected in (("all", {"topk_logprobs", "hidden"}), ("hidden", {"hidden"})):
        code, _, err = run_cli(monkeypatch, capsys, *args, "--out", data / spec, "--mlp-levels", spec)
        assert code == 0, err
        df = read_results(data / spec)
        assert set(df.loc[df.probe == "mlp", "level"]) == expected


def test_the_summary_reads_the_decisions(monkeypatch, capsys, data):
    monkeypatch.setenv("COLUMNS", "200")                       # a wide terminal: no cell is cut short
    code, stdout, err = run_cli(monkeypatch, capsys, "--features", data / "levels.npz", "--labels", data / "labels.csv",
                                "--out", data / "dec", "--probes", "linear", "--bootstrap", "200", "--group-column", "item",
                                "--no-progress")
    assert code == 0, err
    from logitleak.decisions import annotate

    ann = annotate(read_results(data / "dec"))
    leaks = ann[ann.leak]
    assert ("topk_logprobs", "color") in set(zip(leaks.level, leaks.attribute))    # planted: colour shifts it
    lines = [ln for ln in stdout.splitlines() if ln.lstrip().startswith(("topk_logprobs", "top1_prob"))]
    assert len(lines) == len(ann)
    for line, row in zip(lines, ann.itertuples()):
        assert ("LEAK" in line) == bool(row.leak) and ("readable" in line) == bool(row.readable and not row.leak)


@pytest.mark.parametrize("case,pattern", [
    ("missing", r"Features file .*nope\.npy does not exist"),
    ("extension", r"unsupported extension '\.txt'; use one of \.npy, \.npz, \.parquet"),
    ("rows", r"has 59 rows .* but .*labels_short\.csv has 60"),
    ("group", r"Group column 'batch' is not in .*labels\.csv \(columns: color, size, item\)"),
    ("labels_missing", r"Labels file .*nolabels\.csv does not exist"),
    ("labels_ext", r"Labels file .*labels\.json has unsupported extension '\.json'; use one of \.csv, \.parquet"),
    ("task", r"--task 'shape' is not a column"),
    ("probe", r"--probes 'linear,svm' names unknown families \(svm\)"),
    ("mlp_levels", r"--mlp-levels 'residual,logits' names 'logits', which the features file does not have"),
])
def test_errors_are_one_sentence_exit_2(monkeypatch, capsys, data, case, pattern):
    features, labels, extra = data / "residual.npy", data / "labels.csv", []
    if case == "missing":
        features = data / "nope.npy"
    elif case == "extension":
        features = data / "feats.txt"
        features.write_text("1 2 3\n")
    elif case == "rows":
        np.save(data / "short.npy", np.zeros((N - 1, 4)))
        features = data / "short.npy"
        pd.read_csv(labels).to_csv(data / "labels_short.csv", index=False)
        labels = data / "labels_short.csv"
    elif case == "group":
        extra = ["--group-column", "batch"]
    elif case == "labels_missing":
        labels = data / "nolabels.csv"
    elif case == "labels_ext":
        labels = data / "labels.json"
        labels.write_text("{}")
    elif case == "task":
        extra = ["--task", "shape"]
    elif case == "probe":
        extra = ["--probes", "linear,svm"]
    elif case == "mlp_levels":
        extra = ["--mlp-levels", "residual,logits"]
    code, stdout, err = run_cli(monkeypatch, capsys, "--features", features, "--labels", labels, "--out",
                                data / "o", *extra, *FAST)
    assert code == 2
    import re

    assert re.search(pattern, err), err
    assert err.startswith("Error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not (data / "o" / "results.parquet").exists()


def _null_with_repeats(tmp_path, n_unique=150, copies=2, sets=8, attrs=25, d=6, seed=0):
    """Null features and labels where every sample is listed ``copies`` times (same features, same
    labels), as a features file that repeats rows would give ``probe``."""
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n_unique), copies)
    np.savez(tmp_path / "dups.npz", **{f"set{f}": rng.normal(size=(n_unique, d))[rows] for f in range(sets)})
    pd.DataFrame({f"a{a}": rng.integers(0, 2, n_unique)[rows] for a in range(attrs)}).to_csv(
        tmp_path / "dups.csv", index=False)
    return tmp_path / "dups.npz", tmp_path / "dups.csv"


def test_repeated_rows_are_grouped_and_their_nulls_stay_calibrated(monkeypatch, capsys, tmp_path):
    from logitleak.probing import metrics as M

    features, labels = _null_with_repeats(tmp_path)
    args = ["--features", features, "--labels", labels, "--probes", "linear", "--bootstrap", "0", "--no-progress"]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--out", tmp_path / "grouped")
    assert code == 0, err
    said = " ".join(err.split())
    assert "Warning: 150 row(s) of" in said and "(150 set(s) of repeats; e.g. rows 1 and 2, 3 and 4, 5 and 6" in said
    grouped = read_results(tmp_path / "grouped")
    assert grouped.n_groups.eq(150).all()
    p = grouped.p_value.to_numpy()
    assert len(p) == 200 and np.isfinite(p).all()
    for alpha in (0.05, 0.01):
        lo, hi = M.binomial_interval(len(p), alpha, 0.99)
        assert lo <= int((p < alpha).sum()) <= hi, (alpha, int((p < alpha).sum()))
    # taken as given, the repeats straddle the splits and the same nulls look readable
    code, _, err = run_cli(monkeypatch, capsys, *args, "--out", tmp_path / "kept", "--duplicates", "keep")
    assert code == 0 and "repeat an earlier row" not in err and "identical twin" in err
    kept = read_results(tmp_path / "kept").p_value.to_numpy()
    assert int((kept < 0.05).sum()) > M.binomial_interval(len(kept), 0.05, 0.99)[1]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--out", tmp_path / "no", "--duplicates", "refuse")
    assert code == 2 and "Error: 150 row(s) of" in " ".join(err.split()) and "Traceback" not in err


def test_near_repeats_within_the_tolerance_count_and_clusters_get_a_group_column_suggestion(monkeypatch, capsys,
                                                                                          tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(80, 6))
    near = np.concatenate([X, X[:10] + 1e-7 * rng.normal(size=(10, 6))])       # float rounding apart
    np.save(tmp_path / "near.npy", near)
    pd.DataFrame({"y": rng.integers(0, 2, 90)}).to_csv(tmp_path / "near.csv", index=False)
    base = ["--labels", tmp_path / "near.csv", "--probes", "linear", "--bootstrap", "0", "--no-progress"]
    code, _, err = run_cli(monkeypatch, capsys, "--features", tmp_path / "near.npy", *base, "--out", tmp_path / "a")
    assert code == 0 and "10 row(s) of" in " ".join(err.split()) and "rows 1 and 81" in " ".join(err.split())
    code, _, err = run_cli(monkeypatch, capsys, "--features", tmp_path / "near.npy", *base, "--out", tmp_path / "b",
                           "--duplicate-tolerance", "0")
    assert code == 0 and "repeat" not in err
    # 30 sources x 4 rows each, close together: no repeats, but clustered
    centres = rng.normal(size=(30, 6))
    np.save(tmp_path / "clustered.npy", np.repeat(centres, 4, 0) + 0.1 * rng.normal(size=(120, 6)))
    pd.DataFrame({"y": np.repeat(rng.integers(0, 2, 30), 4), "src": np.repeat(np.arange(30), 4)}).to_csv(
        tmp_path / "clustered.csv", index=False)
    common = ["--labels", tmp_path / "clustered.csv", "--probes", "linear", "--bootstrap", "0", "--no-progress"]
    code, _, err = run_cli(monkeypatch, capsys, "--features", tmp_path / "clustered.npy", *common, "--out", tmp_path / "c")
    said = " ".join(err.split())
    assert code == 0 and "look clustered" in said and "pass --group-column" in said
    code, _, err = run_cli(monkeypatch, capsys, "--features", tmp_path / "clustered.npy", *common, "--out", tmp_path / "d",
                           "--group-column", "src")
    assert code == 0 and "clustered" not in err


def _planted_api_family(tmp_path, n=100, d=4, sets=20, planted=10, seed=0):
    """20 API-named feature sets (one per layer of ``topk_logprobs``) x 2 attributes = 40 API rows:
    a 4-class signal in the first 10 sets for ``a``; ``b`` and the other sets are noise."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 4, n)
    means = rng.normal(size=(4, d))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    X = rng.normal(size=(n, sets, d))
    X[:, :planted] += 1.5 * means[a][:, None]
    np.savez(tmp_path / "api.npz", topk_logprobs=X)
    pd.DataFrame({"a": a, "b": rng.integers(0, 3, n)}).to_csv(tmp_path / "api.csv", index=False)
    return tmp_path / "api.npz", tmp_path / "api.csv"


def test_permutations_call_a_planted_leak_over_a_40_row_api_family_and_too_few_are_flagged(monkeypatch, capsys,
                                                                                           tmp_path):
    """Through the CLI: with Holm, 200 permutations over 40 API rows could give no p below 40/201;
    Westfall-Young over the shared permutations calls the planted attribute; 9 permutations can call
    nothing, which the command says and the gate fails on instead of passing a 'no leak'."""
    features, labels = _planted_api_family(tmp_path)
    args = ["--features", features, "--labels", labels, "--probes", "linear", "--bootstrap", "100", "--no-progress"]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--out", tmp_path / "wy", "--permutations", "200",
                           "--fail-on", "leak")
    df = read_results(tmp_path / "wy")
    assert len(df) == 40 and df.p_test.eq("permutation").all() and df.n_permutations.eq(200).all()
    verdict = json.loads((tmp_path / "wy" / "verdict.json").read_text())
    assert verdict["adjustment"] == "westfall-young" and verdict["reachable"] and verdict["status"] == "leak"
    assert verdict["leaks"] == ["a"] and code == 3 and "no call can be made" not in err
    code, out, err = run_cli(monkeypatch, capsys, *args, "--out", tmp_path / "few", "--permutations", "9",
                             "--fail-on", "leak")
    said = " ".join(err.split())
    assert "Warning: no call can be made: with 9 permutations no p-value can fall below 0.05" in said
    assert "rerun with at least 20 permutations" in said
    verdict = json.loads((tmp_path / "few" / "verdict.json").read_text())
    assert verdict["status"] == "untestable" and not verdict["reachable"] and verdict["leaks"] == []
    assert code == 3 and "(a (untestable), b (untestable))" in " ".join(out.split())


def test_exact_repeats_are_set_aside_before_the_near_repeat_search():
    """2,000 identical rows beside 3,000 distinct ones and 5 float-rounding copies: every repeat is
    counted once, and the near search looks only at one row per exact set (it used to pair the
    identical rows with each other, two million candidates)."""
    from logitleak.data.repeats import find_repeats

    X = np.random.default_rng(0).normal(size=(3000, 6))
    X = np.concatenate([X, X[:5] + 1e-7, np.zeros((2000, 6))])
    rep = find_repeats({("a", None, None): X})
    assert (rep.repeated, rep.sets, rep.examples) == (2004, 6, ((0, 3000), (1, 3001), (2, 3002)))
    assert len(set(rep.groups.tolist())) == len(X) - 2004 and len(set(rep.groups[3005:].tolist())) == 1
