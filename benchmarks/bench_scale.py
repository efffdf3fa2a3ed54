"""The study's width on this machine: a 7B-shaped probe workload, and a bf16 capture at width 4,096.

1. **Probe workload** (``probe``): the feature sets an audit builds for a 7B decoder at the answer
   position — 2,000 samples, 33 hidden states x 4,096 (Llama-2-7B / LLaVA-1.5-7B), five categorical
   attributes (the shapes set's: 8, 4, 3, 4 and 3 classes) — built by the audit's own
   :func:`~logitleak.levels.features.build_features` from a synthetic capture held in float16 (the
   store's GPU default) and probed by the audit's own :func:`~logitleak.probing.resume.probe_with_resume` at its
   default statistics (linear probe with inner-validation C everywhere, MLP at the API levels, 5 folds,
   the held-out test, 1,000 bootstrap resamples, the default worker processes). The readout has a
   4,096-token vocabulary (a 32,000-token one would cost the lens levels 8x more CPU here and change
   no feature width: logits are probed in d_model coordinates beyond 4,096 tokens). The hidden
   states carry a planted, layer-growing signal of every attribute, so the probes have work to do.
   Prints wall time, CPU time of the whole process tree and its peak resident memory.
2. **bf16 capture** (``capture``): a random Llama-architecture model, width 4,096 (32 heads, MLP
   11,008, vocabulary 32,000) and ``--layers`` blocks, in bfloat16, captured into the activation
   store (bfloat16) against a bare forward pass of the same batches with the same arguments, in one
   run, interleaved; samples per CPU-second of each and their ratio (target >= 0.9).

Beside every timing: ``uptime``'s load. On a shared machine prefer the CPU-time figures.

    .venv/bin/python benchmarks/bench_scale.py [probe] [capture] [--samples 2000] [--states 33] [--layers 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

D, LAYERS, VOCAB, ANSWERS = 4096, 32, 4096, 20
CAPTURE_TARGET = 0.9


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


class TreeMonitor:
    """Samples this process and its children every ``every`` seconds: peak summed RSS and the CPU
    time of every process seen (children that exited are counted up to their last sample, and by
    ``RUSAGE_CHILDREN`` once reaped; the larger figure is reported)."""

    def __init__(self, every: float = 0.25) -> None:
        import psutil

        self.me, self.every = psutil.Process(), every
        self.peak_rss, self.cpu = 0, {}
        self._stop = threading.Event()
        self._start = (time.perf_counter(), self._own_cpu())
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @staticmethod
    def _own_cpu() -> float:
        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    def _sample(self) -> None:
        import psutil

        rss = 0
        for p in [self.me] + self.me.children(recursive=True):
            try:
                with p.oneshot():
                    rss += p.memory_info().rss
                    t = p.cpu_times()
                    if p.pid != self.me.pid:
                        self.cpu[p.pid] = t.user + t.system
            except psutil.Error:
                continue
        self.peak_rss = max(self.peak_rss, rss)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def stop(self) -> tuple[float, float, int]:
        """``(wall s, CPU s of the tree, peak summed RSS bytes)`` since the monitor started."""
        self._sample()
        self._stop.set()
        self.thread.join()
        wall = time.perf_counter() - self._start[0]
        s = resource.getrusage(resource.RUSAGE_SELF)
        sampled = s.ru_utime + s.ru_stime + sum(self.cpu.values())
        return wall, max(sampled, self._own_cpu()) - self._start[1], self.peak_rss


# ----------------------------------------------------------------------------- 1. the probe workload

def synthetic_capture(n: int, seed: int = 0, layers: int = LAYERS):
    """``(probe set, capture, readout, lens, answer ids)``: five shapes attributes; hidden states
    ``(n, 33, 4096)`` float16 whose attribute signal grows with depth; a random RMS norm + unembedding."""
    import numpy as np
    import torch

    from logitleak.capture.forward import Capture
    from logitleak.data import ProbeSet
    from logitleak.data.shapes import ATTRIBUTES, QUESTIONS, sample_attributes
    from logitleak.levels.lens import TunedLens
    from logitleak.models.readout import Readout

    rng = np.random.default_rng(seed)
    attrs = sample_attributes(n, seed=seed)
    onehot = np.concatenate([(attrs[a].to_numpy()[:, None] == np.asarray(v)[None]).astype(np.float32)
                             for a, v in ATTRIBUTES.items()], axis=1)                    # (n, 22)
    latent = np.concatenate([onehot, rng.normal(size=(n, 10)).astype(np.float32)], 1)  # + nuisance
    hidden = torch.empty((n, layers + 1, D), dtype=torch.float16)
    for layer in range(layers + 1):
        mix = rng.normal(size=(latent.shape[1], D)).astype(np.float32) * (0.01 + 0.06 * layer / layers)
        hidden[:, layer] = torch.from_numpy(latent @ mix + rng.normal(size=(n, D)).astype(np.float32))
    gen = torch.Generator().manual_seed(seed)
    norm = torch.nn.RMSNorm(D)
    readout = Readout(norm=norm, weight=torch.randn(VOCAB, D, generator=gen) / D ** 0.5 * 4)
    logits = torch.cat([readout(hidden[r:r + 500, layers].float()) for r in range(0, n, 500)])
    names = list(ATTRIBUTES)
    asked = ["color"] * n
    ps = ProbeSet(name=f"synthetic-7b-{n}", prompts=[QUESTIONS["color"][0]] * n, attributes=attrs, asked=asked,
                  groups=np.arange(n))
    assert set(names) == set(ps.attributes.columns)
    cap = Capture(hidden=hidden, logits=logits, meta={"n_layers": layers, "d_model": D, "vocab_size": VOCAB})
    lens = TunedLens(D, layers, [], readout=readout)  # identity translators (a 7B's lens on CPU: least squares)
    return ps, cap, readout, lens, list(range(ANSWERS))


def bench_probe(n: int, layers: int = LAYERS) -> None:
    from logitleak.probing.resume import probe_with_resume
    from logitleak.config import make_config
    from logitleak.levels.features import build_features
    from logitleak.levels.table import BY_NAME, LEVELS, RESPONSE_LEVELS, TRANSITION_LEVELS

    cfg = make_config({"task": "color", "samples": n, "out": tempfile.mkdtemp(prefix="bench-scale-")})
    levels = [lv for lv in LEVELS if lv not in TRANSITION_LEVELS and lv not in RESPONSE_LEVELS]
    print(f"\n== 7B-shaped probe workload: {n} samples, {layers + 1} of {LAYERS + 1} hidden states x {D}, 5 attributes, "
          f"the audit's default statistics ({load()})")
    t0 = time.perf_counter()
    ps, cap, readout, lens, answers = synthetic_capture(n, layers=layers)
    print(f"   synthetic capture: {time.perf_counter() - t0:.0f} s; hidden states {cap.hidden.nbytes / 2**30:.2f} GiB "
          "(float16)")
    mon = TreeMonitor()
    feats = build_features(cap, readout, levels=levels, layers=range(layers + 1), ks=cfg.k, lens=lens,
                           answer_token_ids=answers, pca_dims=cfg.pca_dims)
    wall_f, cpu_f, _ = mon.stop()
    del cap
    widths = sorted({v.shape[1] for v in feats.values()})
    held = sum(v.nbytes for v in {id(v): v for v in feats.values()}.values())
    print(f"   build_features: {len(feats)} feature sets (widths {widths[0]}..{widths[-1]}, {held / 2**30:.2f} GiB "
          f"held): {wall_f:.0f} s wall, {cpu_f:.0f} CPU-s")
    # the per-layer sets (residual, PCA, lenses) and the final-output sets (logits, API top-k), probed in
    # two calls so the 33-state figure can be scaled from fewer states (a set's rows do not depend on the call)
    parts = {"per layer": {k: v for k, v in feats.items() if BY_NAME[k[0]].stage != "output"},
             "final output": {k: v for k, v in feats.items() if BY_NAME[k[0]].stage == "output"}}
    measured, rows = {}, []
    for name, part in parts.items():
        mon = TreeMonitor()
        res = probe_with_resume(part, ps, cfg, Path(cfg.out) / "probes", list(ps.attributes.columns), progress=True)
        measured[name] = mon.stop()
        rows.append(res)
        wall, cpu, peak = measured[name]
        print(f"   probing the {name} sets ({len(part)}): {wall:.0f} s wall, {cpu:.0f} CPU-s, peak memory "
              f"{peak / 2**30:.2f} GiB (summed RSS of the process tree) ({load()})")
    import pandas as pd

    results = pd.concat(rows, ignore_index=True)
    print(f"   {len(results)} result rows, {int((results['p_value'] < 0.05).sum())} with p < 0.05")
    wall = sum(m[0] for m in measured.values())
    cpu = sum(m[1] for m in measured.values())
    peak = max(m[2] for m in measured.values())
    print(f"   probing, measured: {wall:.0f} s wall, {cpu:.0f} CPU-s, peak {peak / 2**30:.2f} GiB, "
          f"{cpu / len(feats):.1f} CPU-s per feature set")
    if layers < LAYERS:
        scale = (LAYERS + 1) / (layers + 1)
        est_cpu = measured["final output"][1] + scale * measured["per layer"][1]
        est_wall = measured["final output"][0] + scale * measured["per layer"][0]
        est_held = held + (scale - 1) * sum(v.nbytes for v in {id(v): v for v in parts["per layer"].values()}.values())
        print(f"   ESTIMATE for all {LAYERS + 1} states (per-layer part scaled by {scale:.1f}): {est_cpu:.0f} CPU-s, "
              f"{est_wall:.0f} s wall at this load; features held {est_held / 2**30:.2f} GiB")


# ----------------------------------------------------------------------------- 2. the bf16 capture

def random_llama(n_layers: int):
    """A random Llama at width 4,096 in bfloat16 with the word-level test tokenizer (its ids < 32,000)."""
    import torch
    from tiny_models import LLAMA_LM, word_tokenizer
    from transformers import AutoModelForCausalLM, LlamaConfig

    from logitleak.models.adapter import ModelAdapter

    cfg = LlamaConfig(vocab_size=32000, hidden_size=D, intermediate_size=11008, num_hidden_layers=n_layers,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=512)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
    tok = word_tokenizer([], chat_template=LLAMA_LM, add_bos=True)
    return ModelAdapter.from_model(model, tokenizer=tok, name=f"random-llama-{D}x{n_layers}")


def bench_capture(n: int, n_layers: int, batch: int, reps: int) -> None:
    import torch
    from tiny_models import text_probeset

    from logitleak.capture.forward import read_positions
    from logitleak.capture.store import ActivationStore

    adapter = random_llama(n_layers)
    ps = text_probeset(n, seed=0)
    print(f"\n== bf16 capture: random Llama, width {D}, {n_layers} blocks, vocabulary 32,000, {n} samples in batches of "
          f"{batch}, {torch.get_num_threads()} torch threads ({load()})")
    inputs = [adapter.build_inputs(ps.prompts[i:i + batch]) for i in range(0, n, batch)]

    def bare() -> None:
        with torch.inference_mode():
            for x in inputs:
                adapter.model(**adapter.forward_kwargs(x, read_positions(x["attention_mask"])))

    def plain() -> None:
        with torch.inference_mode():
            for x in inputs:
                adapter.model(**x, use_cache=False)

    def store(root: str) -> None:
        ActivationStore(root).extract(adapter, ps, batch_size=batch, shard_size=n, hidden_dtype="bfloat16",
                                      progress=False)

    times: dict[str, list[float]] = {"bare": [], "capture": [], "plain": []}
    bare()  # warm-up (oneDNN's bf16 kernels)
    for _ in range(reps):
        for name in ("bare", "capture", "plain"):
            t0 = time.process_time()
            if name == "capture":
                with tempfile.TemporaryDirectory(prefix="bench-scale-store-") as root:
                    store(root)
            else:
                (bare if name == "bare" else plain)()
            times[name].append(time.process_time() - t0)
    rate = {k: n / min(v) for k, v in times.items()}
    print(f"   bare forward (same arguments: only the read position's logits): {rate['bare']:.2f} samples/CPU-s")
    print(f"   capture into the store (hooks at every block, bf16 store, checksums): {rate['capture']:.2f} samples/CPU-s")
    print(f"   plain model(**inputs) (every position's logits): {rate['plain']:.2f} samples/CPU-s")
    ratio = rate["capture"] / rate["bare"]
    print(f"   capture / bare forward = {ratio:.2f} (target >= {CAPTURE_TARGET}: {'met' if ratio >= CAPTURE_TARGET else 'NOT met'}); "
          f"capture / plain = {rate['capture'] / rate['plain']:.2f} ({load()})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("parts", nargs="*", default=["probe", "capture"], help="probe, capture (default: both)")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--states", type=int, default=LAYERS + 1, help="hidden states of the probe workload (a quick "
                    "check: 2)")
    ap.add_argument("--layers", type=int, default=3, help="blocks of the bf16 capture model")
    ap.add_argument("--capture-samples", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    unknown = set(args.parts) - {"probe", "capture"}
    if unknown:
        ap.error(f"unknown part(s) {sorted(unknown)}; choose probe and/or capture")
    if "probe" in args.parts:
        bench_probe(args.samples, args.states - 1)
    if "capture" in args.parts:
        bench_capture(args.capture_samples, args.layers, args.batch, args.reps)


if __name__ == "__main__":
    main()
