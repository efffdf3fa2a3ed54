"""A small request beside a 50 MB upstream body: what the big body adds to the small one's latency
through the guard (target: under 1 s), and what the big body itself costs, direct and guarded.

Starts a canned upstream (a chat completion of ``--mb`` MB with 20 top logprobs per token, or a
small one) and ``logitleak guard --defense round:1`` as subprocesses on loopback. Measures the
small request's latency through the guard alone (median of 20), then again while the big body is
being read, defended (in a worker process) and written: the difference is what one big body
costs everyone else. Prints the big body's time direct and through the guard, the guard's peak
memory (its main process and its worker) and the machine's load.

    .venv/bin/python benchmarks/bench_guard_big.py [--mb 50] [--small 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_guard import serve_bodies  # noqa: E402
from servers import start_process  # noqa: E402


def canned_body(mb: float) -> bytes:
    alts = [{"token": f"t{j}", "logprob": -0.123456789 - j, "bytes": [116, 48 + j % 10]} for j in range(20)]
    entry = {"token": "t0", "logprob": -0.123456789, "bytes": [116, 48], "top_logprobs": alts}
    one = len(json.dumps(entry)) + 1
    n = max(1, int(mb * 2**20 / one))
    return json.dumps({"id": "big", "object": "chat.completion", "created": 1, "model": "m",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": "t0" * n},
                                    "logprobs": {"content": [entry] * n}, "finish_reason": "length"}],
                       "usage": {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": n + 5}}).encode()


def serve(port: int, mb: float) -> None:
    """The canned upstream: ``x-size: big`` gets the big body, anything else a one-token completion."""
    big, small = canned_body(mb), canned_body(0.001)
    serve_bodies(port, lambda scope: big if (b"x-size", b"big") in scope["headers"] else small)


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        return serve(int(sys.argv[2]), float(sys.argv[3]))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=50.0)
    ap.add_argument("--small", type=int, default=10, help="small requests sent while the big body is in flight")
    args = ap.parse_args()
    from logitleak.serve.app import free_port

    up_port, g_port = free_port(), free_port()
    up, via = f"http://127.0.0.1:{up_port}/v1", f"http://127.0.0.1:{g_port}/v1"
    with tempfile.TemporaryDirectory(prefix="guard-big-") as tmp:
        procs = [start_process([sys.executable, __file__, "--serve", str(up_port), str(args.mb)], up,
                               Path(tmp) / "up.log", name="the canned upstream", timeout_s=300)]
        try:
            procs.append(start_process([sys.executable, "-c", "from logitleak.cli import main; main()", "guard",
                                        "--upstream", up, "--defense", "round:1", "--port", str(g_port), "--quiet"],
                                       via, Path(tmp) / "guard.log", name="the guard"))
            run(up, via, args, procs[1].pid)
        finally:
            for p in procs:
                p.terminate()
                p.wait(30)


def run(up: str, via: str, args, guard_pid: int) -> None:
    client = httpx.Client(timeout=600)

    def small() -> float:
        t = time.perf_counter()
        r = client.post(via + "/chat/completions", content=b"{}")
        assert r.status_code == 200, r.text[:200]
        return time.perf_counter() - t

    def big(base: str) -> float:
        t = time.perf_counter()
        with httpx.Client(timeout=600) as c:
            r = c.post(base + "/chat/completions", content=b"{}", headers={"x-size": "big"})
        assert r.status_code == 200, r.text[:200]
        assert base == up or b"123456789" not in r.content  # through the guard: every value defended
        return time.perf_counter() - t

    big(via)  # warm up: the guard's worker process starts on its first large body
    alone = [small() for _ in range(20)]
    direct = big(up)
    done: dict = {}
    th = threading.Thread(target=lambda: done.setdefault("t", big(via)))
    th.start()
    time.sleep(0.3)
    beside = []
    while th.is_alive() and len(beside) < args.small:
        beside.append(small())
        time.sleep(0.2)
    th.join()
    ms = 1000
    added = statistics.median(beside) - statistics.median(alone) if beside else float("nan")
    worker = max((peak_mb(p) for p in children(guard_pid)), default=float("nan"))  # the defence worker
    print(f"guard beside a big body: {args.mb:g} MB chat completion (20 top logprobs per token), defence round:1")
    print(f"  small request alone        : median {statistics.median(alone) * ms:8.1f} ms (20)")
    print(f"  small request beside it    : median {statistics.median(beside) * ms:8.1f} ms, max "
          f"{max(beside) * ms:.1f} ms ({len(beside)} sent while it was in flight)")
    print(f"  added by the big body      : {added * ms:8.1f} ms  [target < 1000 ms]")
    print(f"  the big body direct        : {direct:8.2f} s; through the guard {done['t']:.2f} s")
    print(f"  guard peak memory          : {peak_mb(guard_pid):.0f} MB main process, {worker:.0f} MB worker")
    print(f"  load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
