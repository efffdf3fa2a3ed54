"""The audit on a GPU, end to end: a random 7B-shaped model (or the widest that fits), timed and measured.

One prepared script, a few minutes on one large GPU:

1. builds a random Llama-architecture model shaped like Llama-2-7B (32 blocks, width 4,096, MLP
   11,008, vocabulary 32,000) in bfloat16 — fewer blocks when the GPU's memory cannot hold it —
   and saves it with a word-level tokenizer (the model's weights are random: no download);
2. **capture**: samples per second of the activation store's capture against a bare forward pass
   of the same batches with the same arguments, on the GPU (target >= 0.9);
3. **the audit**: ``run_audit`` end to end on ``--samples`` text prompts with five attributes
   (the shapes questions), default levels and statistics, store float16 (the GPU default); its phase
   timings from run.json, and probe time per feature set;
4. **probe speed against the CPU**: the same residual feature sets (width 4,096) probed on the GPU and
   on the CPU (single process), seconds per feature set, and their ratio;
5. peak GPU memory (``torch.cuda.max_memory_allocated``) per phase.

``--smoke`` (and on a machine without a GPU): a small model (width 256, 2 blocks) and 120 samples,
on the CPU when no GPU is visible: it proves the script runs (the figures mean nothing). The figures for a card go into the README with
the card's name.

    .venv/bin/python benchmarks/bench_gpu.py [--smoke] [--samples 2000] [--layers 32] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_scale import load  # noqa: E402

SEVEN_B = {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32, "num_key_value_heads": 32,
           "vocab_size": 32000}
SMOKE = {"hidden_size": 256, "intermediate_size": 688, "num_attention_heads": 4, "num_key_value_heads": 4,
         "vocab_size": 32000}


def gib(x: float) -> str:
    return f"{x / 2**30:.1f} GiB"


def blocks_that_fit(shape: dict, wanted: int, device: str) -> int:
    """As many of ``wanted`` blocks as fit in half the GPU's free memory (bf16 weights; the rest for
    activations, the lens and the probes)."""
    import torch

    if device == "cpu":
        return wanted
    free, _ = torch.cuda.mem_get_info()
    d, m, v = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    per_block, embed = 2 * (4 * d * d + 3 * d * m), 2 * 2 * v * d
    return max(1, min(wanted, int((free * 0.5 - embed) // per_block)))


def build_model(out: Path, shape: dict, n_layers: int, device: str) -> Path:
    """A random Llama of ``shape`` with ``n_layers`` blocks in bfloat16, saved to ``out`` with the
    word-level test tokenizer and the Llama chat template."""
    import torch
    from tiny_models import LLAMA_LM, word_tokenizer
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(num_hidden_layers=n_layers, max_position_embeddings=512, **shape)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
    model.save_pretrained(out)
    word_tokenizer([], chat_template=LLAMA_LM, add_bos=True).save_pretrained(out)
    del model
    if device != "cpu":
        torch.cuda.empty_cache()
    return out


def write_prompts(path: Path, n: int) -> Path:
    """A prompt file of ``n`` scenes in words with their five attributes, each asking for the colour
    (a text probe set: repeated scenes carry the same labels)."""
    from logitleak.data.shapes import sample_attributes

    df = sample_attributes(n, seed=0)[["color", "shape", "size", "position", "background"]].copy()
    df.insert(0, "prompt", [f"the {r.size} {r.color} {r.shape} is at the {r.position} on {r.background} . what color "
                            "is the object ?" for r in df.itertuples()])
    df.to_json(path, orient="records", lines=True)
    return path


def capture_rate(model_dir: Path, device: str, n: int, batch: int) -> dict:
    """Samples per second: the store's capture and a bare forward pass of the same batches."""
    import torch
    from tiny_models import text_probeset

    from logitleak.capture.forward import read_positions
    from logitleak.capture.store import ActivationStore
    from logitleak.models.loading import load_model

    adapter = load_model(model_dir, device=device, dtype="bfloat16")
    ps = text_probeset(n, seed=1)
    inputs = [adapter.build_inputs(ps.prompts[i:i + batch]) for i in range(0, n, batch)]

    def sync():
        if device != "cpu":
            torch.cuda.synchronize()

    def bare():
        with torch.inference_mode():
            for x in inputs:
                adapter.model(**adapter.forward_kwargs(x, read_positions(x["attention_mask"])))
        sync()

    bare()  # warm-up
    out = {}
    for name in ("bare", "capture", "bare2", "capture2"):
        t0 = time.perf_counter()
        if name.startswith("capture"):
            with tempfile.TemporaryDirectory(prefix="bench-gpu-store-") as root:
                ActivationStore(root).extract(adapter, ps, batch_size=batch, shard_size=1024, progress=False)
                sync()
        else:
            bare()
        out[name] = time.perf_counter() - t0
    bare_s, cap_s = min(out["bare"], out["bare2"]), min(out["capture"], out["capture2"])
    peak = torch.cuda.max_memory_allocated() if device != "cpu" else 0
    del adapter
    return {"bare": n / bare_s, "capture": n / cap_s, "ratio": bare_s / cap_s, "peak": peak}


def probe_speed(cfg, device: str, n_sets: int) -> dict:
    """Seconds per residual feature set (width d_model) on ``device`` and on the CPU (this process),
    from the audit's stored capture and its probe set."""
    import numpy as np
    import torch

    from logitleak.capture.stored import StoredCapture
    from logitleak.data.loading import load_probe_set
    from logitleak.probing.sweep import evaluate_sweep

    mf = next((Path(cfg.out) / "cache" / "captures").rglob("manifest.json"))
    stored = StoredCapture(mf.parent)
    ps = load_probe_set(cfg)
    labels = {a: ps.labels(a) for a in ps.attributes.columns}
    layers = np.linspace(1, stored.n_layers, n_sets).round().astype(int)
    feats = {("residual", int(layer), None): stored.layer(int(layer)) for layer in sorted(set(layers))}
    out = {}
    for where in ([device] if device == "cpu" else [device, "cpu"]):
        t0 = time.perf_counter()
        evaluate_sweep(feats, labels, groups=ps.groups, task_attribute="color", probes=["linear"], device=where,
                       progress=False)
        if where != "cpu":
            torch.cuda.synchronize()
        out[where] = (time.perf_counter() - t0) / len(feats)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="a small model and 120 samples (on the CPU without a GPU)")
    ap.add_argument("--samples", type=int, default=None, help="audit samples (default 2,000; smoke 120)")
    ap.add_argument("--layers", type=int, default=32, help="decoder blocks wanted (fewer when they do not fit)")
    ap.add_argument("--probe-sets", type=int, default=3, help="residual feature sets for the GPU-vs-CPU probe timing")
    ap.add_argument("--out", default=None, help="working directory (default: a temp dir, removed)")
    args = ap.parse_args()

    import torch

    from logitleak.audit import run_audit
    from logitleak.config import make_config

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.smoke:
        print("bench_gpu: no CUDA GPU is visible, so it runs its --smoke size on the CPU (proving the script runs; "
              "the figures mean nothing). The GPU figures are not measured yet.")
        args.smoke = True
    shape = SMOKE if args.smoke else SEVEN_B
    n = args.samples or (120 if args.smoke else 2000)
    card = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (smoke)"
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    n_layers = blocks_that_fit(shape, 2 if args.smoke else args.layers, device)
    print(f"== bench_gpu on {card} ({load()}): random Llama width {shape['hidden_size']}, {n_layers} blocks, "
          f"bfloat16, {n} samples")
    t0 = time.perf_counter()
    model_dir = build_model(work / "model", shape, n_layers, device)
    print(f"   model built and saved: {time.perf_counter() - t0:.0f} s")

    if device != "cpu":
        torch.cuda.reset_peak_memory_stats()
    cap = capture_rate(model_dir, device, min(n, 512), batch=32)
    print(f"   capture: {cap['capture']:.1f} samples/s against a bare forward pass {cap['bare']:.1f} samples/s: "
          f"ratio {cap['ratio']:.2f} (target >= 0.9); peak GPU memory {gib(cap['peak'])}")

    prompts = write_prompts(work / "prompts.jsonl", n)
    if device != "cpu":
        torch.cuda.reset_peak_memory_stats()
    cfg = make_config({"model": str(model_dir), "data": str(prompts), "task": "color", "samples": n,
                       "dtype": "bfloat16", "device": device, "out": str(work / "audit"), "force": True})
    t0 = time.perf_counter()
    result = run_audit(cfg, progress=False)
    wall = time.perf_counter() - t0
    timings = result.run_info["timings"]
    n_sets = len(result.results.groupby(["level", "layer", "k"], dropna=False))
    peak = torch.cuda.max_memory_allocated() if device != "cpu" else 0
    print(f"   audit end to end: {wall:.0f} s; phases " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    print(f"   probes: {n_sets} feature sets, {timings.get('probes', 0) / max(n_sets, 1):.2f} s per feature set; "
          f"peak GPU memory {gib(peak)}")
    speed = probe_speed(cfg, device, args.probe_sets)
    line = ", ".join(f"{k} {v:.2f} s" for k, v in speed.items())
    ratio = f"; GPU is {speed['cpu'] / speed[device]:.1f}x the CPU" if device != "cpu" else ""
    print(f"   residual probe (width {shape['hidden_size']}, linear, default statistics) per feature set: {line}{ratio}")
    print(f"   ({load()})")
    if not args.out:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
