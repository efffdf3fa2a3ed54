"""Output directories: logitleak writes only into its own (empty, or holding a run record it wrote), never
through a symbolic link, and one run at a time; a refused directory is left byte for byte as it was."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from logitleak.errors import LogitleakError
from logitleak.userpaths import LOCK_FILE, RUN_RECORD, claim_out_dir

SRC = Path(__file__).resolve().parents[1] / "src"
SMALL = ["--samples", "150", "--attributes", "size", "--levels", "residual", "--layers", "2", "--probes", "linear", "--folds", "3",
         "--bootstrap", "0", "--lens-steps", "1", "--quiet"]


def logitleak(*args: str, **kw) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "logitleak"
    if not exe.exists():
        pytest.skip(f"the logitleak console script is not installed next to {sys.executable}")
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=600, **kw)


def snapshot(root: Path) -> dict[str, str]:
    """Every entry below ``root`` (links not followed): its bytes' hash, or what a link points at."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def user_folder(root: Path) -> Path:
    root.mkdir()
    (root / "results.csv").write_text("mine,1\n")
    (root / "report.html").write_text("<html>my own report</html>")
    (root / "results.json").write_text('{"mine": true}')
    return root


# ----------------------------------------------------------------------------- the rules, in process


def test_a_new_or_empty_directory_is_claimed_and_marked(tmp_path):
    with claim_out_dir(tmp_path / "new") as out:
        out.begin({"seed": 1}, "audit")
        record = json.loads((tmp_path / "new" / RUN_RECORD).read_text())
        assert record["written_by"] == "logitleak" and record["status"] == "running"
        assert record["identity"] == {"seed": 1} and record["command"] == "audit"
        out.finish({"n_samples": 3})
    record = json.loads((tmp_path / "new" / RUN_RECORD).read_text())
    assert record["status"] == "finished" and record["n_samples"] == 3 and record["identity"] == {"seed": 1}
    # an interrupted run's directory (only its start record) is the same run's to resume
    with claim_out_dir(tmp_path / "new") as again:
        again.begin({"seed": 1}, "audit")


@pytest.mark.parametrize("force", [False, True])
def test_foreign_files_are_refused_even_with_force(tmp_path, force):
    folder = user_folder(tmp_path / "mine")
    before = snapshot(folder)
    with pytest.raises(LogitleakError, match=r"holds files logitleak did not write \(report\.html, results\.csv, "
                                             r"results\.json\) and no run record \(run\.json\)") as err:
        claim_out_dir(folder, force=force)
    assert "--force reuses only a logitleak run's directory" in str(err.value)
    assert snapshot(folder) == before and not (folder / LOCK_FILE).exists()


def test_a_run_json_logitleak_did_not_write_is_foreign(tmp_path):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / RUN_RECORD).write_text('{"tool": "someone else", "identity": "x"}')
    before = snapshot(folder)
    with pytest.raises(LogitleakError, match="holds a run.json that logitleak did not write"):
        claim_out_dir(folder, force=True)
    assert snapshot(folder) == before


def test_a_damaged_run_record_needs_force(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / RUN_RECORD).write_text('{"identity": {"model": ')
    with pytest.raises(LogitleakError, match=r"run record .*run\.json is damaged.*pass --force"):
        claim_out_dir(folder)
    with claim_out_dir(folder, force=True) as out:
        out.begin({"seed": 0}, "audit")
    assert json.loads((folder / RUN_RECORD).read_text())["identity"] == {"seed": 0}


def test_a_different_run_needs_force_and_keeps_the_earlier_record_until_it_finishes(tmp_path):
    with claim_out_dir(tmp_path / "r") as out:
        out.begin({"seed": 0}, "audit")
        out.finish({"n_samples": 10})
    earlier = (tmp_path / "r" / RUN_RECORD).read_bytes()
    with claim_out_dir(tmp_path / "r") as out, pytest.raises(
            LogitleakError, match=r"already holds a different audit's results \(differs in: seed\); choose another "
                                  r"--out or pass --force"):
        out.begin({"seed": 1}, "audit")
    with claim_out_dir(tmp_path / "r") as out, pytest.raises(LogitleakError, match=r"differs in: command\)"):
        out.begin({"seed": 0}, "defend")
    with claim_out_dir(tmp_path / "r", force=True) as out:
        out.begin({"seed": 1}, "audit")
        assert (tmp_path / "r" / RUN_RECORD).read_bytes() == earlier   # a forced run that fails loses nothing
        out.finish({"n_samples": 20})
    assert json.loads((tmp_path / "r" / RUN_RECORD).read_text())["identity"] == {"seed": 1}


def test_symbolic_links_are_refused(tmp_path):
    target = user_folder(tmp_path / "target")
    before = snapshot(target)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(LogitleakError, match=rf"{link} \(--out\) is a symbolic link to {target}; logitleak writes only "
                                             rf"into a real directory, so pass {target} itself"):
        claim_out_dir(link, force=True)
    with claim_out_dir(tmp_path / "ours") as out:
        out.begin({"seed": 0}, "audit")
    (tmp_path / "ours" / "cache").mkdir()
    (tmp_path / "ours" / "cache" / "results.csv").symlink_to(target / "results.csv")
    with pytest.raises(LogitleakError, match=r"holds a symbolic link, .*cache/results\.csv -> .*target/results\.csv; "
                                             r"logitleak does not write through links"):
        claim_out_dir(tmp_path / "ours")
    assert snapshot(target) == before


def test_one_run_at_a_time(tmp_path):
    first = claim_out_dir(tmp_path / "busy")
    with pytest.raises(LogitleakError, match=r"busy \(--out\) is in use by another logitleak run \(it holds "
                                             r".*\.logitleak\.lock\); wait for that run to finish"):
        claim_out_dir(tmp_path / "busy", force=True)
    first.release()
    with claim_out_dir(tmp_path / "busy"):
        pass


# ----------------------------------------------------------------------------- through the installed command


@pytest.mark.parametrize("command", [
    ("audit", "--model", "organism", *SMALL),
    ("defend", "--model", "organism", "--samples", "60", "--defenses", "topk:1"),
    ("probe", "--features", "{w}/f.npy", "--labels", "{w}/l.csv"),
])
def test_the_commands_refuse_a_users_folder_and_leave_it_as_it_was(tmp_path, command):
    import numpy as np
    import pandas as pd

    np.save(tmp_path / "f.npy", np.random.default_rng(0).normal(size=(20, 3)))
    pd.DataFrame({"a": ["x", "y"] * 10}).to_csv(tmp_path / "l.csv", index=False)
    folder = user_folder(tmp_path / "mine")
    link = tmp_path / "link"
    link.symlink_to(folder)
    before = snapshot(folder)
    args = [a.replace("{w}", str(tmp_path)) for a in command]
    for out in (folder, link):
        r = logitleak(*args, "--out", str(out), "--force")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        message = r.stderr.strip().splitlines()[-1]
        assert message.startswith(f"Error: Output directory {out} (--out) "), message
        assert ("did not write" if out == folder else "is a symbolic link") in message
    assert snapshot(folder) == before


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_runs(tmp_path, organism_dir):
    """Two audits into one --out at once: the second is refused (it used to run, and run.json described
    one run over a mixture of both); the first, paused meanwhile, then finishes."""
    out = tmp_path / "shared"
    exe = Path(sys.executable).parent / "logitleak"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([str(exe), "audit", "--model", "organism", *SMALL, "--out", str(out)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / RUN_RECORD).exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        first.send_signal(signal.SIGSTOP)  # holds its lock, whatever the machine's speed
        assert (out / RUN_RECORD).exists(), first.communicate()
        for seed in ("0", "1"):
            second = logitleak("audit", "--model", "organism", *SMALL, "--seed", seed, "--out", str(out))
            assert second.returncode == 2, second.stderr
            assert f"Output directory {out} (--out) is in use by another logitleak run" in second.stderr
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=600)
        assert first.returncode == 0, err
    finally:
        first.kill()
    assert json.loads((out / RUN_RECORD).read_text())["status"] == "finished"
