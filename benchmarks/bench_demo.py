"""Wall time of `logitleak demo`: from an empty cache (trains the organism) and with it cached.

Targets (issue 10): <= 240 s from an empty cache (training the organism included), <= 60 s with the
organism cached, on 2 cores. Prints wall and CPU time (user + system of the command and its probe
workers: on a shared machine the wall time depends on the load, the CPU time much less), the ratio
to the target, the load average before and after, and the demo's own phase timings (run.json).
Usage: python benchmarks/bench_demo.py [--cached-only]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"empty cache": 240.0, "organism cached": 60.0}


def run_demo(cache: Path | None, out: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one `logitleak demo --quiet` in a subprocess."""
    env = dict(os.environ)
    if cache is not None:
        env["XDG_CACHE_HOME"] = str(cache)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from logitleak.cli import main; main()", "demo", "--out", str(out),
                    "--quiet"], env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def report(name: str, wall: float, cpu: float, out: Path) -> None:
    target = TARGETS[name]
    phases = json.loads((out / "run.json").read_text()).get("timings", {})
    print(f"demo, {name:16s} wall {wall:6.1f} s  cpu {cpu:6.1f} s  target <= {target:.0f} s  ratio {wall / target:.2f}  "
          f"load {os.getloadavg()[0]:.2f}  phases {phases}", flush=True)


def main() -> None:
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        cache = None
        if "--cached-only" not in sys.argv:
            cache = tmp_path / "cache"
            report("empty cache", *run_demo(cache, tmp_path / "fresh"), tmp_path / "fresh")
        report("organism cached", *run_demo(cache, tmp_path / "cached"), tmp_path / "cached")


if __name__ == "__main__":
    main()
