"""Train the full model organism and print its training time and held-out accuracy per question.

Targets: held-out answer accuracy >= 0.95 on every question type, training <= 300 s on a
2-core CPU. Usage: ``python benchmarks/bench_organism.py [--out DIR] [--seed N] [--steps N]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

TARGET_ACCURACY = 0.95
TARGET_SECONDS = 300.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="where to save the organism (default: a temporary directory)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="question-answering steps (default: full plan)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()

    from logitleak.models.organism_train import train_organism

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "organism"
        t0, c0 = time.perf_counter(), time.process_time()
        metrics = train_organism(out, args.seed, steps=args.steps, progress=not args.no_progress)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"cpu cores: {os.cpu_count()}  load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"image size: {metrics['image_size']}  vision steps: {metrics['vision_steps']}  "
          f"question steps: {metrics['steps']}  seed: {metrics['seed']}")
    print(f"train seconds: {metrics['train_seconds']:.1f}  (target <= {TARGET_SECONDS:.0f}; "
          f"ratio {metrics['train_seconds'] / TARGET_SECONDS:.2f})  wall incl. evaluation and saving: {wall:.1f}")
    # training runs on one thread, so process CPU time ~ the wall time on an otherwise idle machine
    print(f"process cpu seconds incl. evaluation and saving: {cpu:.1f}")
    ok = metrics["train_seconds"] <= TARGET_SECONDS
    for attr, acc in metrics["heldout_accuracy"].items():
        hit = acc >= TARGET_ACCURACY
        ok &= hit
        print(f"heldout accuracy {attr:<10} {acc:.4f}  (target >= {TARGET_ACCURACY}) {'ok' if hit else 'MISS'}")
    print("all targets met" if ok else "some targets missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
