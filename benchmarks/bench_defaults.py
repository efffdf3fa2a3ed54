"""Wall time of `audit`, `probe` and `defend` at their default settings, next to the issue's targets.

Three cases (issue 10), run as a user would run them, through the CLI in a subprocess:

* ``audit --model DIR --data shapes --task color --samples 400`` on a random-weight LLaVA with the
  organism's processor and 7 text layers of width 96 (target <= 120 s on 2 cores);
* ``probe`` on 42 feature sets (n = 3,000; d = 32-256; attributes with 3-10 classes) (<= 60 s);
* ``defend --model organism --samples 1500`` (<= 180 s).

Prints each wall time and CPU time (user + system: on a shared machine the wall time depends on the
load, the CPU time much less), its target and the ratio, with the load average before and after.
Usage: python benchmarks/bench_defaults.py [audit] [probe] [defend]   (default: all three)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"audit": 120.0, "probe": 60.0, "defend": 180.0}
LIMIT = float(os.environ.get("BENCH_LIMIT_S", "1800"))
"""Each command is stopped after this many seconds (and reported as stopped)."""


def random_llava(out: Path) -> Path:
    """The organism's processor and architecture with 7 text layers of width 96, random weights."""
    import torch
    from transformers import AutoProcessor, LlavaConfig, LlavaForConditionalGeneration

    from logitleak.models.organism_train import ensure_organism

    org = ensure_organism(seed=0, progress=False)
    cfg = LlavaConfig.from_pretrained(org)
    t = cfg.text_config
    t.num_hidden_layers, t.hidden_size, t.intermediate_size = 7, 96, 256
    t.num_attention_heads = t.num_key_value_heads = 2
    t.head_dim = 48
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg).eval()
    model.save_pretrained(out)
    AutoProcessor.from_pretrained(org).save_pretrained(out)
    return out


def probe_inputs(tmp: Path) -> tuple[Path, Path]:
    """42 feature sets of 3,000 samples (d from 32 to 256), five attributes with 3-10 classes, each
    readable from some of the feature sets."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 3000
    classes = {"a3": 3, "a4": 4, "a5": 5, "a7": 7, "a10": 10}
    labels = {a: rng.integers(0, k, n) for a, k in classes.items()}
    arrays = {}
    dims = [32, 64, 128, 256]
    for i in range(42):
        d = dims[i % len(dims)]
        X = rng.normal(size=(n, d)).astype(np.float32)
        a = list(classes)[i % len(classes)]
        X[:, : classes[a]] += 0.8 * np.eye(classes[a])[labels[a]] * (i % 3)   # some sets read nothing
        arrays[f"set{i:02d}"] = X
    feats = tmp / "feats.npz"
    np.savez(feats, **arrays)
    lab = tmp / "labels.csv"
    pd.DataFrame(labels).to_csv(lab, index=False)
    return feats, lab


def timed(args: list[str], env=None, limit: float | None = None) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system of the child) and exit code of one CLI run."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        res = subprocess.run([sys.executable, "-c", "from logitleak.cli import main; main()", *args],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=limit)
        rc = res.returncode
        if rc != 0:
            print(res.stderr[-2000:], file=sys.stderr)
    except subprocess.TimeoutExpired:
        rc = 124
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, rc


def main() -> None:
    which = [a for a in sys.argv[1:] if a in TARGETS] or list(TARGETS)
    import torch

    print(f"torch threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}, cpus {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in which:
            if name == "audit":
                args = ["audit", "--model", str(random_llava(tmp / "llava")), "--data", "shapes", "--task", "color",
                        "--samples", "400", "--out", str(tmp / "audit")]
            elif name == "probe":
                feats, lab = probe_inputs(tmp)
                args = ["probe", "--features", str(feats), "--labels", str(lab), "--out", str(tmp / "probe")]
            else:
                args = ["defend", "--model", "organism", "--samples", "1500", "--out", str(tmp / "defend")]
            load0 = os.getloadavg()[0]
            wall, cpu, rc = timed(args, limit=LIMIT)
            load1 = os.getloadavg()[0]
            status = "ok" if rc == 0 else ("STOPPED at the time limit" if rc == 124 else f"FAILED rc={rc}")
            print(f"{name:<7} {wall:7.1f} s wall, {cpu:7.1f} s CPU  (target <= {TARGETS[name]:.0f} s, ratio "
                  f"{wall / TARGETS[name]:.2f})  load {load0:.1f} -> {load1:.1f}  {status}", flush=True)
            if name == "audit" and rc == 0:
                run = json.loads((tmp / "audit" / "run.json").read_text())
                print(f"        audit timings: {run.get('timings')}")


if __name__ == "__main__":
    main()
