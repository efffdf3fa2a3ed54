"""Probe workers from any caller: loky's processes never re-run the caller's main module, so a script
without a main guard and standard input probe in workers; where workers cannot start, this process
probes instead with the same results and says so; a worker that dies is one sentence."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from logitleak.errors import LogitleakError
from logitleak.probing import stages as stages_module
from logitleak.probing.stages import run_stages

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = '''
import json, sys
import numpy as np
from logitleak.probing.stages import run_stages
print("main module ran", flush=True)
rng = np.random.default_rng(0)
y = np.array(["a", "b"] * 30)
stages = [({("residual", i, None): rng.normal(size=(60, 3)) + i * (y == "a")[:, None]},
           dict(probes=["linear"], n_folds=3, n_bootstrap=0, seed=0)) for i in range(3)]
got = {}
note = run_stages(stages, {"y": y}, workers=1, progress=False, on_done=lambda i, df: got.__setitem__(i, df))
print(json.dumps({"note": note, "acc": [got[i]["accuracy"].iloc[0] for i in range(3)]}))
'''


def _stages():
    rng = np.random.default_rng(0)
    y = np.array(["a", "b"] * 30)
    return [({("residual", i, None): rng.normal(size=(60, 3)) + i * (y == "a")[:, None]},
             dict(probes=["linear"], n_folds=3, n_bootstrap=0, seed=0)) for i in range(3)], {"y": y}


def _collect(stages, labels, workers):
    got: dict = {}
    note = run_stages(stages, labels, workers=workers, progress=False, on_done=lambda i, df: got.__setitem__(i, df))
    return note, got


@pytest.mark.parametrize("how", ["script", "stdin"])
def test_workers_start_from_a_script_without_a_main_guard_and_from_stdin(tmp_path, how):
    import json

    (tmp_path / "s.py").write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    args, stdin = ([sys.executable, "s.py"], None) if how == "script" else ([sys.executable, "-"], SCRIPT)
    r = subprocess.run(args, cwd=tmp_path, input=stdin, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stdout.count("main module ran") == 1                    # the workers did not re-run it
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["note"] is None                                    # they ran in workers
    stages, labels = _stages()  # a worker's results are this process's on one thread, bit for bit
    here = [stages_module.run_in_process(stage, labels, False) for stage in stages]
    assert result["acc"] == [h["accuracy"].iloc[0] for h in here]


def test_where_workers_cannot_start_this_process_probes_with_the_same_results(monkeypatch):
    stages, labels = _stages()
    single = [stages_module.run_in_process(stage, labels, False) for stage in stages]  # = a worker's (test above)

    def no_processes(n):
        raise OSError(38, "Function not implemented: no semaphores on this system")

    monkeypatch.setattr(stages_module, "make_pool", no_processes)
    monkeypatch.setattr(stages_module, "_STARTED", {})
    note, here = _collect(stages, labels, workers=2)
    assert note.startswith("Probe worker processes could not start (OSError: [Errno 38] Function not implemented")
    assert "probed in this process, one thread each (the same results" in note
    for i in range(3):
        pd.testing.assert_frame_equal(here[i], single[i])


class _DyingPool:
    """A pool whose first stage finishes and whose next worker dies (as an OOM kill would)."""

    def __init__(self):
        self.calls = 0

    def submit(self, fn, *args):
        from joblib.externals.loky.process_executor import TerminatedWorkerError

        fut: Future = Future()
        self.calls += 1
        if self.calls == 1:
            fut.set_result(fn(*args))
        else:
            fut.set_exception(TerminatedWorkerError("A worker process was terminated abruptly (SIGKILL(-9))"))
        return fut

    def shutdown(self, wait=True, cancel_futures=False):
        pass


def test_a_worker_that_dies_mid_way_is_one_sentence_and_keeps_finished_stages(monkeypatch):
    stages, labels = _stages()
    monkeypatch.setattr(stages_module, "make_pool", lambda n: _DyingPool())
    monkeypatch.setattr(stages_module, "_STARTED", {})
    got: dict = {}
    with pytest.raises(LogitleakError, match=r"^A probe worker process stopped \(A worker process was terminated "
                                             r"abruptly \(SIGKILL\(-9\)\)\), perhaps out of memory; the stages that "
                                             r"finished are saved, so rerun the same command to resume"):
        run_stages(stages, labels, workers=2, progress=False, on_done=lambda i, df: got.__setitem__(i, df))
    assert sorted(got) == [0]
