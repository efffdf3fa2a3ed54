"""Bad input through the installed ``logitleak`` command: exit code 2, one sentence naming the input,
no traceback, and nothing already computed in the output directory lost (cases: tests/bad_inputs.py).

All cases run up front, several at a time, each a fresh process of the console script next to this
Python (with this checkout's ``src`` first on the path); each test then checks one case's result.
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

SRC = Path(__file__).resolve().parents[1] / "src"
CASES = cases()
TIMEOUT_S = 90  # every case fails within seconds; one still running after this was accepted


def logitleak_command() -> list[str]:
    exe = Path(sys.executable).parent / "logitleak"
    if not exe.exists():
        pytest.skip(f"the logitleak console script is not installed next to {sys.executable}")
    return [str(exe)]


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _run(case, world: Path, tmp: Path) -> dict:
    args = [a.replace("{w}", str(world)) for a in case.args]
    out = None
    if case.keep_out:
        out = tmp / case.id
        shutil.copytree(world / "earlier", out)
        if case.run_json is not None:
            (out / "run.json").write_text(case.run_json)
        args += ["--out", str(out)]
    before = _snapshot(out) if out else {}
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "LOGITLEAK_FUZZ_UNSET": "", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", **case.env}
    env.pop("LOGITLEAK_FUZZ_UNSET")
    try:
        proc = subprocess.run(logitleak_command() + args, capture_output=True, text=True, env=env,
                              timeout=TIMEOUT_S, stdin=subprocess.DEVNULL, cwd=tmp)
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:  # accepted and running: the bad input was not caught
        rc, stdout, stderr = "timeout", str(exc.stdout or ""), str(exc.stderr or "")
    after = _snapshot(out) if out else {}
    lost = sorted(k for k, v in before.items() if after.get(k) != v)
    return {"rc": rc, "stderr": stderr, "stdout": stdout, "lost": lost}


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
    for needle in case.names:
        assert needle.lower() in message.lower(), f"{needle!r} not named in: {message}"
    assert not r["lost"], f"earlier results lost or changed: {r['lost']}"


def test_no_code_from_a_model_folder_ran(results):
    assert not (results["__world__"] / MARKER).exists()
