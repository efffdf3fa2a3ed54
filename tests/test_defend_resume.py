"""Through the installed command on the organism: `defend` killed with SIGKILL while it extracts a
capture and again while it probes, then rerun, gives exactly the trade-off table and recommendation
of an uninterrupted run, reusing what the killed runs left on disk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import servers

SRC = Path(__file__).resolve().parents[1] / "src"
# leace first: the fit split's capture, the eraser, then the erased capture, then the output defences.
ARGS = ["--model", "organism", "--task", "color", "--samples", "160", "--k", "3", "--shard-size", "16",
        "--batch-size", "8", "--defenses", "leace:2;none;gauss:1;ranks_only", "--probes", "linear",
        "--folds", "3", "--bootstrap", "50", "--quiet"]


def command(out: Path) -> list[str]:
    exe = Path(sys.executable).parent / "logitleak"
    if not exe.exists():
        pytest.skip(f"the logitleak console script is not installed next to {sys.executable}")
    return [str(exe), "defend", *ARGS, "--out", str(out)]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1"}


def defend(out: Path) -> None:
    res = subprocess.run(command(out), capture_output=True, text=True, env=env(), timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]


def kill_when(out: Path, ready, timeout: float = 600) -> None:
    """Start `defend` and SIGKILL it as soon as ``ready(out)`` holds (failing if it finishes first)."""
    servers.kill_when(command(out), lambda: ready(out), env=env(), what="defend", timeout_s=timeout, poll_s=0.02)
    assert not (out / "tradeoff.csv").exists()


def shards(out: Path) -> list[Path]:
    return list((out / "cache" / "captures").rglob("shard-*.safetensors")) if (out / "cache").exists() else []


def in_capture(out: Path) -> bool:
    """Some shards of a capture on disk, that capture not finished."""
    for mf in (out / "cache" / "captures").rglob("manifest.json") if (out / "cache").exists() else []:
        if '"complete": false' in mf.read_text() and list(mf.parent.glob("shard-*.safetensors")):
            return True
    return False


def in_probing(out: Path) -> bool:
    """Some probe results cached (the first defences measured), the trade-off table not yet written."""
    return (out / "cache" / "probes").is_dir() and any((out / "cache" / "probes").glob("*.parquet"))


def table(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "tradeoff.csv")


def test_defend_resumes_after_kill_with_identical_results(tmp_path, organism_dir):
    clean = tmp_path / "clean"
    defend(clean)
    resumed = tmp_path / "resumed"
    kill_when(resumed, in_capture)
    kept = {p: p.stat().st_mtime_ns for p in shards(resumed)}
    assert kept, "the first kill left no finished shard"
    kill_when(resumed, in_probing)
    views = list((resumed / "cache" / "defended").rglob("view-*.safetensors"))
    assert views, "the second kill came before any defended view was stored"
    defend(resumed)
    # The rerun reused the shards the first killed run had finished instead of recomputing them.
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    a, b = table(clean), table(resumed)
    assert len(a) and set(a["defense_label"]) == {"leace:2", "none", "gauss:1", "ranks_only"}
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert (clean / "recommendation.txt").read_text() == (resumed / "recommendation.txt").read_text()
    assert (resumed / "report.html").is_file()
