"""Peak memory of `defend` against the audit's on the same probe set: the target is a ratio <= 1.2.

Runs ``logitleak audit`` and ``logitleak defend`` one after the other in child processes with the
same model, samples, k, probes and store settings, and prints each child's peak resident set size
(``ru_maxrss`` from ``wait4``), their ratio and wall times. The audit measures its default levels
at every layer; `defend` the given grid (default: the standard grid) at the API level, with the
residual stream at the erased layers. Both load the shapes probe set into memory the same way.

    .venv/bin/python benchmarks/bench_defend_memory.py [--n 20000] [--grid SPEC] [--probes linear]
        [--bootstrap 100] [--folds 3] [--shard-size 1024] [--batch-size 64] [--threads 2] [--probe-workers 0] [--src DIR]
        [--only audit|defend]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 1.2


def run(args: list[str], env: dict) -> tuple[float, float, int]:
    """(peak RSS in MiB, wall seconds, exit code) of one child command."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr.read().decode()[-3000:])
    return usage.ru_maxrss / 1024.0, time.perf_counter() - t0, proc.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="probe samples (both commands)")
    ap.add_argument("--model", default="organism")
    ap.add_argument("--grid", default=None, help="defence grid for defend (default: the standard grid)")
    ap.add_argument("--k", default="1,5,10")
    ap.add_argument("--probes", default="linear")
    ap.add_argument("--bootstrap", type=int, default=100)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--shard-size", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--probe-workers", type=int, default=0,
                    help="probing worker processes (default 0: probe in the measured process, whose peak is then "
                         "the whole run's; workers would add their own, unmeasured here)")
    ap.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "src"),
                    help="the logitleak source to run (default: this checkout's)")
    ap.add_argument("--only", choices=("audit", "defend"), default=None,
                    help="run one command and print its peak alone (no ratio)")
    ap.add_argument("--work", default=None, help="directory for both output folders (default: a temp dir)")
    a = ap.parse_args()

    exe = str(Path(sys.executable).parent / "logitleak")
    env = {**os.environ, "PYTHONPATH": str(a.src) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": str(a.threads)}
    common = ["--model", a.model, "--task", "color", "--samples", str(a.n), "--k", a.k, "--probes", a.probes,
              "--bootstrap", str(a.bootstrap), "--folds", str(a.folds), "--shard-size", str(a.shard_size),
              "--batch-size", str(a.batch_size), "--probe-workers", str(a.probe_workers), "--quiet"]
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="bench-defend-"))
    grid = ["--defenses", a.grid] if a.grid else []
    commands = {"audit": [exe, "audit", *common, "--out", str(work / "audit")],
                "defend": [exe, "defend", *common, *grid, "--out", str(work / "defend")]}
    peaks: dict[str, float] = {}
    print(f"samples: {a.n}  grid: {a.grid or 'default'}  probes: {a.probes}  k: {a.k}  shard size: {a.shard_size}")
    for name, args in commands.items():
        if a.only not in (None, name):
            continue
        rss, wall, rc = run(args, env)
        if rc:
            print(f"{name} failed (exit {rc}); see the error above", file=sys.stderr)
            return 1
        peaks[name] = rss
        print(f"{name:6s} peak RSS: {rss:8.1f} MiB   wall {wall:7.1f} s", flush=True)
    if a.only:
        print(f"outputs: {work}")
        return 0
    ratio = peaks["defend"] / peaks["audit"]
    print(f"ratio defend/audit: {ratio:.3f}  (target <= {TARGET}: {'met' if ratio <= TARGET else 'NOT met'})")
    print(f"outputs: {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
