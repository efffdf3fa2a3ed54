"""Bad input through the installed ``logitleak`` command: exit code 2, one sentence naming the input,
no traceback, and nothing already computed in the output directory lost (cases: tests/bad_inputs.py).

All cases run up front, several at a time, each a fresh process of the console script next to this
Python (with this checkout's ``src`` first on the path); each test then checks one case's result. A
case may run against a copy of an earlier run's directory (or of a user's own files), with another
run holding it, or on a file system of its own that is too small (``unshare``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from bad_inputs import MARKER, build_world, cases

from logitleak.userpaths import claim_out_dir

SRC = Path(__file__).resolve().parents[1] / "src"
CASES = cases()
TIMEOUT_S = float(os.environ.get("BAD_INPUT_TIMEOUT_S", 90))
"""Every case fails within seconds; one still running after this was accepted (raise it on a machine
shared so heavily that starting Python and torch takes longer)."""


def logitleak_command() -> list[str]:
    exe = Path(sys.executable).parent / "logitleak"
    if not exe.exists():
        pytest.skip(f"the logitleak console script is not installed next to {sys.executable}")
    return [str(exe)]


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def can_mount() -> bool:
    """Whether this machine lets a process mount a small file system of its own (``unshare -rm``)."""
    try:
        probe = subprocess.run(["unshare", "-rm", "sh", "-c", 'd=$(mktemp -d) && mount -t tmpfs -o size=64k none "$d"'],
                               capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def _run(case, world: Path, tmp: Path) -> dict:
    disk = tmp / f"{case.id}-disk"

    def fill(text: str) -> str:
        return text.replace("{w}", str(world)).replace("{d}", str(disk))

    args = [fill(a) for a in case.args]
    names = [fill(n) for n in case.names]
    out = None
    if case.keep_out:
        out = tmp / case.id
        shutil.copytree(world / case.out_from, out, symlinks=True)
        if case.run_json is not None:
            (out / "run.json").write_text(case.run_json)
        args += ["--out", str(out)] + (["--force"] if case.force else [])
    before = _snapshot(out) if out else {}
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "LOGITLEAK_FUZZ_UNSET": "", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", **case.env}
    env.pop("LOGITLEAK_FUZZ_UNSET")
    command = logitleak_command() + args
    if case.disk:
        if not can_mount():
            return {"skip": "this machine does not let a process mount its own file system (unshare -rm)"}
        disk.mkdir()
        command = ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size="$1" none "$2" && shift 2 && exec "$@"',
                   "sh", str(case.disk), str(disk), *command]
    holder = claim_out_dir(out) if case.locked else None  # another run, holding the directory
    try:
        proc = subprocess.run(command, capture_output=True, text=True, env=env,
                              timeout=TIMEOUT_S, stdin=subprocess.DEVNULL, cwd=tmp)
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:  # accepted and running: the bad input was not caught
        rc, stdout, stderr = "timeout", str(exc.stdout or ""), str(exc.stderr or "")
    finally:
        if holder is not None:
            holder.release()
    after = _snapshot(out) if out else {}
    lost = sorted(k for k, v in before.items() if after.get(k) != v)
    return {"rc": rc, "stderr": stderr, "stdout": stdout, "lost": lost, "names": names}


@pytest.fixture(scope="module")
def results(tmp_path_factory, organism_dir):
    world = tmp_path_factory.mktemp("world")
    build_world(world, Path(organism_dir))
    tmp = tmp_path_factory.mktemp("runs")
    logitleak_command()
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        done = dict(zip([c.id for c in CASES], pool.map(lambda c: _run(c, world, tmp), CASES)))
    done["__world__"] = world
    return done


def test_at_least_sixty_cases_across_every_command():
    commands = {c.args[0] for c in CASES}
    assert len(CASES) >= 60
    assert {"audit", "probe", "defend", "serve", "organism"} <= commands


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_error(case, results):
    r = results[case.id]
    if "skip" in r:
        pytest.skip(r["skip"])
    err = r["stderr"]
    assert "Traceback" not in err and "Traceback" not in r["stdout"], err[-3000:]
    assert r["rc"] == 2, f"exit code {r['rc']}\n{err[-3000:]}"
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines and any(ln.startswith("Error: ") for ln in lines), err
    if not case.usage:
        assert lines[-1].startswith("Error: "), err
        message = lines[-1]
    else:
        message = err
    for needle in r["names"]:
        assert needle.lower() in message.lower(), f"{needle!r} not named in: {message}"
    assert not r["lost"], f"earlier results lost or changed: {r['lost']}"


def test_no_code_from_a_model_folder_ran(results):
    assert not (results["__world__"] / MARKER).exists()
