"""Load on the OpenAI-compatible server: throughput, latency and errors under concurrent clients.

Starts ``logitleak serve`` (the organism by default) as a subprocess on a free loopback port,
then ``--clients`` threads share ``--requests`` requests (an image + a question each,
``logprobs=True, top_logprobs=5, max_tokens=1``), each through the official ``openai`` client.
Prints throughput (requests/s), p50 / p99 latency and the error count (must be 0), for each
``--max-batch`` setting given (default ``1,16``: serialised versus micro-batched).

Bounded: a fixed number of requests, a wall-clock cap per setting, loopback only.

    .venv/bin/python benchmarks/bench_server_load.py [--model organism|DIR] [--clients 8] [--requests 400]
                                                     [--max-batch 1,16] [--threads 1] [--time-limit 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from logitleak.endpoint.cache import image_data_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from servers import serve_command, start_process  # noqa: E402


def start_server(model: str, port: int, max_batch: int, threads: int | None, log: Path) -> subprocess.Popen:
    extra = ["--max-batch", str(max_batch), "--quiet"] + (["--threads", str(threads)] if threads else [])
    return start_process(serve_command(model, "organism", port, *extra), f"http://127.0.0.1:{port}/v1", log,
                         timeout_s=300, error=SystemExit)


def run_load(url: str, messages: list, clients: int, requests: int, time_limit: float) -> dict:
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    stop_at = time.monotonic() + time_limit

    def worker():
        while time.monotonic() < stop_at:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t0 = time.perf_counter()
            try:
                r = client.chat.completions.create(model="organism", messages=messages[i % len(messages)],
                                                   logprobs=True, top_logprobs=5, max_tokens=1, temperature=0)
                if len(r.choices[0].logprobs.content[0].top_logprobs) != 5:
                    raise ValueError("wrong number of alternatives")
            except Exception as err:  # noqa: BLE001 - every failure is counted
                with lock:
                    errors.append(f"{type(err).__name__}: {err}")
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)

    # warm-up (not timed)
    for m in messages[:4]:
        client.chat.completions.create(model="organism", messages=m, logprobs=True, top_logprobs=5, max_tokens=1)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = sorted(latencies)
    return {
        "done": len(lat), "errors": len(errors), "first_error": errors[0] if errors else "",
        "wall_s": wall, "rps": len(lat) / wall if wall else 0.0,
        "p50_ms": 1000 * statistics.median(lat) if lat else float("nan"),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="organism", help="'organism' (trained once if missing) or a model directory")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--max-batch", default="1,16", help="comma-separated --max-batch settings to compare")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the server (0: torch's default)")
    ap.add_argument("--time-limit", type=float, default=300.0, help="wall-clock cap per setting, seconds")
    args = ap.parse_args()

    from logitleak.data.shapes import make_shapes
    from logitleak.serve.app import free_port

    model = args.model
    if model == "organism":
        from logitleak.models.organism_train import ensure_organism

        model = str(ensure_organism(seed=0, progress=True))
    from logitleak.models.organism import IMAGE_SIZE

    ps = make_shapes(64, questions="all", seed=1, image_size=IMAGE_SIZE)
    messages = [[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_data_url(ps.images[i])}},
                                              {"type": "text", "text": ps.prompts[i]}]}] for i in range(len(ps))]
    print(f"model {model}; {args.clients} clients, {args.requests} requests each setting "
          f"(image + text, top_logprobs=5, max_tokens=1), server torch threads {args.threads or 'default'}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'max_batch':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'done':>5}")
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for mb in [int(x) for x in args.max_batch.split(",") if x.strip()]:
            port = free_port()
            proc = start_server(model, port, mb, args.threads or None, Path(tmp) / f"server-{mb}.log")
            try:
                res = run_load(f"http://127.0.0.1:{port}/v1", messages, args.clients, args.requests, args.time_limit)
            finally:
                proc.terminate()
                proc.wait(30)
            print(f"{mb:>9} {res['rps']:>8.1f} {res['p50_ms']:>8.1f} {res['p99_ms']:>8.1f} {res['errors']:>6} "
                  f"{res['done']:>5}" + (f"  first error: {res['first_error']}" if res["errors"] else ""))
            failed |= res["errors"] > 0 or res["done"] < args.requests
    if failed:
        raise SystemExit("errors or unfinished requests under load (expected 0)")


if __name__ == "__main__":
    main()
