"""Activation store at scale: extract 20,000 samples with bounded memory, and kill-then-resume
gives the same arrays as an uninterrupted run.

1. A clean extraction runs in a child process; its peak RSS is printed (target <= 1.5 GB).
2. A second extraction into another store is SIGKILLed once a few shards are on disk, then run
   again to completion (it resumes); every layer and the logits are compared with the clean run.

The probe set is the shapes set drawn lazily: attributes and prompts are in memory (small), images
are rendered when the capture asks for them (one chunk of 512 at a time), so nothing holds all
20,000 images. Model: the
organism (``ensure_organism``; trained once if missing) or, with ``--tiny``/without the organism
module, a tiny random LLaVA.

    .venv/bin/python benchmarks/bench_store_memory.py [--n 20000] [--shard-size 1024] [--tiny | --organism DIR] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
warnings.filterwarnings("ignore")

TARGET_GB = 1.5


class LazyShapes(Sequence):
    """Image ``i`` of a shapes probe set, rendered on access: one chunk of ``chunk`` images is
    rendered at a time (deterministic per chunk) and only the current chunk is kept."""

    def __init__(self, attributes, image_size: int, seed: int, chunk: int = 512) -> None:
        self.attributes, self.image_size, self.seed, self.chunk = attributes, image_size, seed, chunk
        self._cached: tuple[int, list] | None = None

    def __len__(self) -> int:
        return len(self.attributes)

    def __getitem__(self, i):
        from PIL import Image

        from logitleak.data.shapes import render_shapes

        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        c = int(i) // self.chunk
        if self._cached is None or self._cached[0] != c:
            rows = self.attributes.iloc[c * self.chunk:(c + 1) * self.chunk]
            pixels, _ = render_shapes(rows, image_size=self.image_size, seed=self.seed + c)
            self._cached = (c, [Image.fromarray(p) for p in pixels])
        return self._cached[1][int(i) - c * self.chunk]


def lazy_shapes(n: int, image_size: int, seed: int = 0):
    import numpy as np

    from logitleak.data import ProbeSet
    from logitleak.data.shapes import ATTRIBUTES, QUESTIONS, sample_attributes

    attrs = sample_attributes(n, seed=seed)
    names = list(ATTRIBUTES)
    asked = [names[i % len(names)] for i in range(n)]
    prompts = [QUESTIONS[a][i % len(QUESTIONS[a])] for i, a in enumerate(asked)]
    return ProbeSet(name=f"shapes-lazy-{n}", prompts=prompts, attributes=attrs, asked=asked,
                    groups=np.arange(n), images=LazyShapes(attrs, image_size, seed))


def model_dir(tiny: bool, work: Path, organism: str | None = None) -> tuple[Path, str]:
    if organism:
        return Path(organism), "organism"
    if not tiny:
        try:
            from logitleak.models.organism_train import ensure_organism
        except ImportError:
            pass
        else:
            return ensure_organism(progress=False), "organism"
    from tiny_models import build_tiny

    d = work / "tiny-llava"
    if not (d / "config.json").is_file():
        build_tiny("llava", d, n_layers=4)
    return d, "tiny random LLaVA (4 layers)"


def child(args) -> int:
    """Extract into ``args.root`` and print peak RSS as JSON."""
    import torch

    from logitleak.capture.store import ActivationStore
    from logitleak.models.loading import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ad = load_model(args.model, device="cpu")
    ps = lazy_shapes(args.n, ad.image_size or 32)
    stored = ActivationStore(args.root).extract(ad, ps, shard_size=args.shard_size, batch_size=args.batch_size,
                                                progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps({"path": str(stored.path), "peak_rss": peak, "seconds": time.perf_counter() - t0,
                      "n": len(stored), "layers": stored.n_layers}))
    return 0


def _run_child(args, model: Path, root: Path) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--child", "--model", str(model), "--root", str(root), "--n", str(args.n),
           "--shard-size", str(args.shard_size), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"extraction failed ({proc.returncode}):\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--shard-size", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--tiny", action="store_true", help="use a tiny random LLaVA instead of the organism")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--organism", help="a trained organism directory (default: ensure_organism())")
    ap.add_argument("--kill-after-shards", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    import numpy as np

    from logitleak.capture.store import StoredCapture

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model, label = model_dir(args.tiny, work, args.organism)
        print(f"model: {label} ({model}); {args.n} samples, shards of {args.shard_size}, batches of {args.batch_size}")

        clean = _result(_run_child(args, model, work / "clean"))
        gb = clean["peak_rss"] / 1e9
        print(f"clean extraction: {clean['seconds']:.1f} s, peak RSS {gb:.2f} GB "
              f"(target <= {TARGET_GB} GB: {'OK' if gb <= TARGET_GB else 'MISSED'})")

        root = work / "killed"
        proc = _run_child(args, model, root)
        killed_at = None
        while proc.poll() is None:
            shards = list(root.rglob("shard-*.safetensors"))
            if len(shards) >= args.kill_after_shards:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed_at = len(shards)
                break
            time.sleep(0.05)
        if killed_at is None:
            print("the extraction finished before it could be killed; use a larger --n")
            return 1
        mf = next(root.rglob("manifest.json"), None)
        complete = json.loads(mf.read_text())["complete"] if mf else False
        print(f"killed with {killed_at} shard(s) on disk (manifest complete: {complete}); resuming")
        resumed = _result(_run_child(args, model, root))
        print(f"resumed extraction: {resumed['seconds']:.1f} s, peak RSS {resumed['peak_rss'] / 1e9:.2f} GB")

        a, b = StoredCapture(clean["path"]), StoredCapture(resumed["path"])
        same = len(a) == len(b) and all(np.array_equal(a.layer(layer), b.layer(layer)) for layer in range(a.n_layers + 1))
        same = same and np.array_equal(a.logits(), b.logits())
        print(f"kill-then-resume equals the uninterrupted run (every layer and the logits, bit for bit): {same}")
        return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
