"""The README's Python API snippet, verbatim, as a user runs it: saved as a script (no main guard) and
piped to ``python -``. Probing in worker processes used to die there (spawned workers re-ran the
caller's main module: BrokenProcessPool); the snippet is read from README.md at test time."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from logitleak.probing.stages import usable_cores

ROOT = Path(__file__).resolve().parents[1]


def readme_snippet() -> str:
    """The first ```python block of README.md that calls the audit."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    calls = [b for b in blocks if "run_audit" in b]
    assert calls, "README.md has no ```python block calling run_audit"
    return calls[0]


def _run(args: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, input=stdin, capture_output=True, text=True, env=env,
                          timeout=1800)


@pytest.mark.slow
def test_the_readme_snippet_runs_as_a_script_and_from_stdin(tmp_path, organism_dir):
    code = readme_snippet()
    out = tmp_path / "logitleak-audit"  # the default --out, in the script's working directory
    (tmp_path / "snippet.py").write_text(code)
    script = _run(["snippet.py"], tmp_path)
    assert script.returncode == 0 and "Traceback" not in script.stderr, script.stderr[-4000:]
    first = pd.read_parquet(out / "results.parquet")
    # From standard input: the same audit resumes in the same directory; half of its probe stages
    # are removed first, so worker processes are started from `python -` and probe them again.
    cached = sorted((out / "cache" / "probes").glob("*.parquet"))
    for p in cached[::2]:
        p.unlink()
    piped = _run(["-"], tmp_path, stdin=code)
    assert piped.returncode == 0 and "Traceback" not in piped.stderr, piped.stderr[-4000:]
    for run in (script, piped):
        assert "topk_logprobs" in run.stdout                       # the snippet's print
        if usable_cores() >= 2:                                     # the default: one worker per core
            assert re.search(r"probing \([2-9] processes\)", run.stderr), run.stderr[-3000:]
    problems = json.loads((out / "run.json").read_text())["problems"]
    assert not [p for p in problems if "could not start" in p], problems
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results.parquet"), first)
