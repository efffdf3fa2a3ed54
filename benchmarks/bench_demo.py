"""Wall time of `logitleak demo`: from an empty cache (trains the organism) and with it cached.

Targets (issue: the audit): <= 300 s from a fresh setup including training, <= 90 s cached.
Usage: python benchmarks/bench_demo.py [--cached-only]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_demo(cache: Path | None, out: Path) -> float:
    env = dict(os.environ)
    if cache is not None:
        env["XDG_CACHE_HOME"] = str(cache)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from logitleak.cli import main; main()", "demo", "--out", str(out),
                    "--quiet"], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if "--cached-only" not in sys.argv:
            fresh = run_demo(tmp_path / "cache", tmp_path / "fresh")
            print(f"demo from an empty cache (trains the organism): {fresh:.1f} s  (target <= 300 s, ratio {fresh / 300:.2f})")
            cached = run_demo(tmp_path / "cache", tmp_path / "cached")
        else:
            cached = run_demo(None, tmp_path / "cached")
        print(f"demo with the organism cached:                  {cached:.1f} s  (target <= 90 s, ratio {cached / 90:.2f})")


if __name__ == "__main__":
    main()
