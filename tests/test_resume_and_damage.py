"""Through the installed command on the organism: kill -9 during capture, the tuned lens or probing, or damage
the cache (shards, manifest, lens, probe results, checksums), and the rerun's results equal an
uninterrupted run's exactly; a doubled label file measures exactly what the single one does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import servers
from folders import write_shapes_images

SRC = Path(__file__).resolve().parents[1] / "src"
SMALL = ["--samples", "120", "--shard-size", "40", "--batch-size", "20", "--levels",
         "residual,tuned_lens_topk,topk_ids", "--k", "2", "--layers", "0,4", "--probes", "linear",
         "--permutations", "5", "--bootstrap", "50", "--folds", "3", "--lens-steps", "300", "--quiet"]
# (300 lens steps, the default: the tuned-lens phase lasts long enough to be caught and killed on a busy machine)


def command(*args: str) -> list[str]:
    exe = Path(sys.executable).parent / "logitleak"
    if not exe.exists():
        pytest.skip(f"the logitleak console script is not installed next to {sys.executable}")
    return [str(exe), *args]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1"}


def audit(out: Path, *extra: str) -> subprocess.CompletedProcess:
    res = subprocess.run(command("audit", "--model", "organism", "--task", "color", "--out", str(out), *SMALL,
                                 *extra), capture_output=True, text=True, env=env(), timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def results(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "results.parquet")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, organism_dir):
    out = tmp_path_factory.mktemp("reference") / "out"
    audit(out)
    return out


def kill_when(out: Path, ready, timeout: float = 600) -> None:
    """Start the audit and SIGKILL it as soon as ``ready(out)`` holds."""
    servers.kill_when(command("audit", "--model", "organism", "--task", "color", "--out", str(out), *SMALL),
                      lambda: ready(out), env=env(), what="the audit", timeout_s=timeout)


def _manifests(out: Path) -> list[Path]:
    return list((out / "cache" / "captures").rglob("manifest.json")) if (out / "cache").exists() else []


def in_capture(out: Path) -> bool:
    """At least one shard written, the capture not finished."""
    for mf in _manifests(out):
        text = mf.read_text()
        if '"complete": false' in text and list(mf.parent.glob("shard-*.safetensors")):
            return True
    return False


def in_lens(out: Path) -> bool:
    """The capture finished, the tuned lens not yet saved."""
    return any('"complete": true' in mf.read_text() for mf in _manifests(out)) and not (
        out / "cache" / "lens" / "translators.safetensors").exists()


def in_probing(out: Path) -> bool:
    """The tuned lens saved and some probe results cached, the results table not yet written."""
    probes = out / "cache" / "probes"
    return (out / "cache" / "lens" / "translators.safetensors").exists() and probes.is_dir() and any(
        probes.glob("*.parquet")) and not (out / "results.parquet").exists()


@pytest.mark.parametrize("phase", [in_capture, in_lens, in_probing], ids=["capture", "tuned-lens", "probing"])
def test_kill_9_then_rerun_equals_uninterrupted(reference, tmp_path, phase):
    out = tmp_path / "out"
    kill_when(out, phase)
    assert not (out / "results.parquet").exists()
    audit(out)
    pd.testing.assert_frame_equal(results(out), results(reference))


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * 0.6)] ^= 0x01
    path.write_bytes(bytes(data))


def _damage_set_one(out: Path) -> None:
    (mf,) = _manifests(out)
    _flip(mf.parent / "shard-00001.safetensors")  # still parses: only the checksum can tell
    (out / "cache" / "lens" / "config.json").write_text("{garbage")
    for p in (out / "cache" / "probes").glob("*.parquet"):  # every probe result: recomputed as one batch
        p.write_bytes(p.read_bytes()[:100])


def _damage_set_two(out: Path) -> None:
    (mf,) = _manifests(out)
    (mf.parent / "shard-00002.safetensors").unlink()
    mf.write_text(mf.read_text()[:50])
    lens = out / "cache" / "lens" / "translators.safetensors"
    lens.write_bytes(lens.read_bytes()[: lens.stat().st_size // 2])
    (out / "cache" / "probes" / "checksums.json").unlink()


@pytest.mark.parametrize("damage", [_damage_set_one, _damage_set_two], ids=["flipped-garbage-truncated",
                                                                          "deleted-truncated-unrecorded"])
def test_damaged_cache_is_recomputed_never_used(reference, tmp_path, damage):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    damage(out)
    audit(out)
    pd.testing.assert_frame_equal(results(out), results(reference))


def test_doubled_label_file_measures_the_same_as_the_single_one(tmp_path, organism_dir):
    folder = tmp_path / "imgs"
    folder.mkdir()
    single = write_shapes_images(folder, 60, seed=5)[1]
    single.to_csv(folder / "single.csv", index=False)
    shutil.copy(folder / "0.png", folder / "copy_of_0.png")  # the same image under another name
    doubled = pd.concat([single, single.assign(path=lambda t: t.path.where(t.index != 0, "copy_of_0.png"))])
    doubled.to_csv(folder / "doubled.csv", index=False)
    outs = {}
    for name in ("single", "doubled"):
        outs[name] = tmp_path / name
        res = subprocess.run(command(
            "audit", "--model", "organism", "--data", str(folder), "--labels", str(folder / f"{name}.csv"),
            "--task", "shape", "--attributes", "shape,position", "--out", str(outs[name]), "--samples", "60",
            "--levels", "residual,topk_ids", "--k", "2", "--layers", "4", "--probes", "linear",
            "--permutations", "5", "--bootstrap", "50", "--folds", "3", "--quiet"),
            capture_output=True, text=True, env=env(), timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
        if name == "doubled":
            assert "repeat an earlier row" in " ".join(res.stdout.split())
    pd.testing.assert_frame_equal(results(outs["doubled"]), results(outs["single"]))
