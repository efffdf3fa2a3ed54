"""Bit-identical results across a refactor: `logitleak demo` on a reference commit and on this tree.

Both demos run from the same cached organism (copied into a private cache for each run, so neither
sees the other's tuned lens or store) and their ``results.parquet`` are compared with
``pandas.testing.assert_frame_equal(check_exact=True)``: every row, column, dtype and float bit. It
prints the verdict, each run's wall and CPU time and the load average. The organism is trained
into the user cache first if it is not there.

Usage: python benchmarks/bench_demo_identical.py [--reference 21779c5] [--against REV] [--samples N] [--keep DIR]
       [--reference-results FILE]
(``--against``: compare that commit instead of the working tree, so the tree can change meanwhile;
``--reference-results FILE``: a ``results.parquet`` kept from an earlier reference run, not rerun).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def checkout(commit: str, into: Path) -> Path:
    """The reference commit's ``src`` unpacked into ``into`` (no worktree, no checkout touched)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "src"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def run_demo(src: Path, cache: Path, out: Path, samples: int | None) -> tuple[float, float]:
    """Wall and CPU seconds (this demo and its probe workers) of `logitleak demo` from ``src``."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "PYTHONPATH": str(src)}
    cmd = [sys.executable, "-c", "from logitleak.cli import main; main()", "demo", "--out", str(out), "--quiet"]
    if samples:
        cmd += ["--samples", str(samples)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, cwd=out.parent)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - t0, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def organism_cache() -> Path:
    """The user cache's trained organism (trained now when absent)."""
    from logitleak.models.organism_train import ensure_organism

    return Path(ensure_organism(seed=0, progress=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", default="21779c5", help="the commit whose demo results are the reference")
    ap.add_argument("--against", default=None, help="the commit to compare (default: this working tree)")
    ap.add_argument("--reference-results", type=Path, default=None,
                    help="the reference's results.parquet from an earlier run (the reference is not rerun)")
    ap.add_argument("--samples", type=int, default=None, help="the demo's --samples (default: the demo's own)")
    ap.add_argument("--keep", type=Path, default=None, help="copy both output folders here")
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    organism = organism_cache()
    with tempfile.TemporaryDirectory(prefix="bench-identical-") as tmp:
        tmp_path = Path(tmp)
        sources = {"reference": None if args.reference_results else checkout(args.reference, tmp_path / "reference"),
                   "this tree": checkout(args.against, tmp_path / "this-tree") if args.against else REPO / "src"}
        frames = {}
        if args.reference_results:
            frames["reference"] = pd.read_parquet(args.reference_results)
            del sources["reference"]
        for name, src in sources.items():
            cache = tmp_path / f"cache-{name}" / "logitleak"
            shutil.copytree(organism, cache / organism.name)
            out = tmp_path / f"out-{name}".replace(" ", "-")
            wall, cpu = run_demo(src, cache.parent, out, args.samples)
            frames[name] = pd.read_parquet(out / "results.parquet")
            print(f"{name:10s} ({args.reference if name == 'reference' else args.against or 'working tree'}): wall {wall:6.1f} s  "
                  f"cpu {cpu:6.1f} s  rows {len(frames[name])}  load {os.getloadavg()[0]:.2f}", flush=True)
            if args.keep:
                shutil.copytree(out, args.keep / out.name, dirs_exist_ok=True)
        try:
            pd.testing.assert_frame_equal(frames["reference"], frames["this tree"], check_exact=True)
        except AssertionError as exc:
            print(f"results.parquet DIFFERS from {args.reference}:\n{exc}")
            sys.exit(1)
        print(f"results.parquet frame-equal to {args.reference} (exact): {frames['this tree'].shape[0]} rows x "
              f"{frames['this tree'].shape[1]} columns")


if __name__ == "__main__":
    main()
