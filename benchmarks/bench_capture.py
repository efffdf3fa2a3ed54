"""Capture overhead: time of the capture pass over a bare ``model(**inputs)`` on the same batches.

Both run on the same ready-made inputs, interleaved (bare, capture, bare, capture, ...), several
repeats; the ratio of medians is printed (target <= 1.10). The capture pass is
:func:`logitleak.capture.forward.capture_inputs`: forward hooks gather every layer's state at the read
position, logits only at the read position, no KV cache — which a bare ``model(**inputs)`` does
build, so the script also prints the hooks' cost alone against the identical call without hooks. Input building (processor) is the same for both and
is reported separately, end to end, for context.

Models: the organism (``ensure_organism``; trained once if missing) and a tiny 8-layer random LLaVA.

    .venv/bin/python benchmarks/bench_capture.py [--repeats 7] [--batches 4] [--batch-size 32] [--threads N] [--no-organism | --organism DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
warnings.filterwarnings("ignore")

TARGET = 1.10


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench(name: str, adapter, probeset, *, batches: int, batch_size: int, repeats: int) -> float:
    from logitleak.capture.forward import capture_inputs

    batch_inputs = []
    for b in range(batches):
        sl = slice(b * batch_size, (b + 1) * batch_size)
        imgs = None if probeset.images is None else list(probeset.images[sl])
        batch_inputs.append(adapter.build_inputs(probeset.prompts[sl], imgs))

    def bare():
        with torch.inference_mode():
            for inp in batch_inputs:
                adapter.model(**inp)

    from logitleak.capture.forward import read_positions

    same_kwargs = [adapter.forward_kwargs(inp, read_positions(inp["attention_mask"])) for inp in batch_inputs]

    def bare_same():  # the same call the capture makes (no cache, read-position logits), minus the hooks
        with torch.inference_mode():
            for kw in same_kwargs:
                adapter.model(**kw)

    def cap():
        for inp in batch_inputs:
            capture_inputs(adapter, inp)

    bare(), bare_same(), cap()  # warm-up
    t_bare, t_same, t_cap = [], [], []
    for _ in range(repeats):
        t_bare.append(_time(bare))
        t_cap.append(_time(cap))
        t_same.append(_time(bare_same))
    ratio = statistics.median(t_cap) / statistics.median(t_bare)
    hooks_only = statistics.median(t_cap) / statistics.median(t_same)
    per_batch = [c / b for b, c in zip(t_bare, t_cap)]
    t_inputs = _time(lambda: [adapter.build_inputs(probeset.prompts[i * batch_size:(i + 1) * batch_size],
                                                   None if probeset.images is None else
                                                   list(probeset.images[i * batch_size:(i + 1) * batch_size]))
                              for i in range(batches)])
    n = batches * batch_size
    print(f"[{name}] {adapter!r}")
    print(f"  {batches} batches x {batch_size}, {repeats} interleaved repeats")
    print(f"  bare model(**inputs): median {statistics.median(t_bare) * 1e3:.1f} ms  "
          f"capture pass: median {statistics.median(t_cap) * 1e3:.1f} ms")
    print(f"  capture overhead (ratio of medians) = {ratio:.3f}   (per-repeat ratios: "
          f"{', '.join(f'{r:.2f}' for r in per_batch)})   target <= {TARGET:.2f}: {'OK' if ratio <= TARGET else 'MISSED'}")
    print(f"  hooks alone: capture pass / the same model call without hooks (use_cache=False, read-position "
          f"logits) = {hooks_only:.3f}")
    print(f"  building inputs (processor, both paths): {t_inputs * 1e3:.1f} ms for {n} samples")
    return ratio


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--no-organism", action="store_true")
    ap.add_argument("--organism", help="a trained organism directory (default: ensure_organism())")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default); on a "
                    "machine shared with other jobs, 1 avoids OpenMP spin-wait noise")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import os

    from logitleak.data import make_shapes
    from logitleak.models.loading import load_model

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average {load:.1f}")
    n = args.batches * args.batch_size
    ratios = {}
    if not args.no_organism:
        path = args.organism
        if path is None:
            try:
                from logitleak.models.organism_train import ensure_organism
            except ImportError:
                print("[organism] not available (logitleak.models.organism missing); skipped")
            else:
                path = ensure_organism(progress=False)
        if path is not None:
            ad = load_model(path, device="cpu")
            ps = make_shapes(n, questions="all", seed=0, image_size=ad.image_size or 32)
            ratios["organism"] = bench("organism", ad, ps, batches=args.batches, batch_size=args.batch_size,
                                       repeats=args.repeats)
    from tiny_models import build_tiny

    with tempfile.TemporaryDirectory() as d:
        ad = load_model(build_tiny("llava", Path(d) / "llava8", n_layers=8), device="cpu")
        ps = make_shapes(n, questions="all", seed=0)
        ratios["tiny-llava-8"] = bench("tiny random LLaVA, 8 layers", ad, ps, batches=args.batches,
                                       batch_size=args.batch_size, repeats=args.repeats)
    print("summary: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
