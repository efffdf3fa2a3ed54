"""The guard's added latency: the same requests sent straight to ``logitleak serve`` and through
``logitleak guard`` in front of it, interleaved, on loopback.

Starts ``serve`` (the organism by default; ``--upstream canned``: a fixed chat completion with
five top logprobs, so the model's own time and its variance drop out) and ``guard --upstream
<it> --defense <spec>`` as subprocesses on free loopback ports, then sends ``--requests`` pairs of identical requests (an
image + a question, ``logprobs=True, top_logprobs=5``), one straight and one through the guard,
alternating which goes first. Prints both medians, the median of the paired differences (the
guard's added latency; target <= 5 ms) with a bootstrap 95% interval, p90 of the differences,
the guard process's CPU time per request (independent of other load), and the machine's load
average (on a shared CPU the latency figure includes waiting for a core).

    .venv/bin/python benchmarks/bench_guard.py [--model organism|DIR] [--upstream serve|canned]
                                               [--requests 300] [--defense gauss:0.5] [--max-tokens 1]
                                               [--threads 1]
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def start(cmd: list[str], url: str, log: Path) -> subprocess.Popen:
    fh = open(log, "ab")
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    fh.close()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[3]} exited early:\n{log.read_text()}")
        try:
            if httpx.get(url + "/models", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{cmd[3]} did not come up:\n{log.read_text()}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), robust to a busy machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


CANNED = {"id": "chatcmpl-canned", "object": "chat.completion", "created": 0, "model": "m",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "red"}, "finish_reason": "length",
                       "logprobs": {"content": [{"token": "red", "logprob": -0.01, "bytes": [114, 101, 100],
                                                 "top_logprobs": [{"token": t, "logprob": -0.01 - i, "bytes": list(t.encode())}
                                                                  for i, t in enumerate(("red", "blue", "green", "yellow", "circle"))]}]}}],
          "usage": {"prompt_tokens": 80, "completion_tokens": 1, "total_tokens": 81}}


MODELS = b'{"object": "list", "data": [{"id": "m", "object": "model"}]}'


def serve_bodies(port: int, pick) -> None:
    """A minimal OpenAI-shaped upstream on ``port``: ``/models`` lists model ``m``, any other request
    gets ``pick(scope)`` (bytes, sent as JSON with its length)."""
    import uvicorn

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        body = MODELS if scope["path"].endswith("/models") else pick(scope)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def serve_canned(port: int) -> None:
    """Every POST gets ``CANNED``."""
    import json

    chat = json.dumps(CANNED).encode()
    serve_bodies(port, lambda scope: chat)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-canned":
        return serve_canned(int(sys.argv[2]))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="organism")
    ap.add_argument("--upstream", choices=("serve", "canned"), default="serve")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--defense", default="gauss:0.5")
    ap.add_argument("--max-tokens", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    from logitleak.data.shapes import make_shapes
    from logitleak.serve.app import free_port

    exe = [sys.executable, "-c", "from logitleak.cli import main; main()"]
    up_port, g_port = free_port(), free_port()
    up, via = f"http://127.0.0.1:{up_port}/v1", f"http://127.0.0.1:{g_port}/v1"
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if args.upstream == "canned":
                procs.append(start([sys.executable, __file__, "--serve-canned", str(up_port)], up,
                                   Path(tmp) / "serve.log"))
            else:
                procs.append(start(exe + ["serve", "--model", args.model, "--served-model-name", "m", "--port",
                                          str(up_port), "--threads", str(args.threads), "--quiet"], up,
                                   Path(tmp) / "serve.log"))
            procs.append(start(exe + ["guard", "--upstream", up, "--defense", args.defense, "--port", str(g_port),
                                      "--quiet"], via, Path(tmp) / "guard.log"))
            ps = make_shapes(32, seed=0)
            bodies = []
            for img, prompt in zip(ps.images, ps.prompts):
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
                bodies.append({"model": "m", "logprobs": True, "top_logprobs": 5, "max_tokens": args.max_tokens,
                               "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                                         {"type": "text", "text": prompt}]}]})
            straight, guarded = [], []
            with httpx.Client(timeout=60) as client:
                def timed(base: str, body: dict) -> float:
                    t0 = time.perf_counter()
                    r = client.post(base + "/chat/completions", json=body)
                    dt = time.perf_counter() - t0
                    if r.status_code != 200:
                        raise SystemExit(f"{base}: HTTP {r.status_code}: {r.text[:300]}")
                    return dt

                for body in bodies[:8]:  # warm up both paths (connections, caches)
                    timed(up, body), timed(via, body)
                cpu0 = cpu_seconds(procs[1].pid)
                for i in range(args.requests):
                    body = bodies[i % len(bodies)]
                    if i % 2:
                        straight.append(timed(up, body))
                        guarded.append(timed(via, body))
                    else:
                        guarded.append(timed(via, body))
                        straight.append(timed(up, body))
                guard_cpu = cpu_seconds(procs[1].pid) - cpu0
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
    diffs = [g - s for g, s in zip(guarded, straight)]
    rng = random.Random(0)
    boot = sorted(statistics.median(rng.choices(diffs, k=len(diffs))) for _ in range(1000))
    ms = 1000.0
    what = f"model {args.model}" if args.upstream == "serve" else "canned upstream"
    print(f"guard benchmark: {args.requests} request pairs, {what}, defence {args.defense}, "
          f"max_tokens {args.max_tokens}, top_logprobs 5, loopback")
    print(f"  straight to serve : median {statistics.median(straight) * ms:7.2f} ms")
    print(f"  through the guard : median {statistics.median(guarded) * ms:7.2f} ms")
    print(f"  added by the guard: median {statistics.median(diffs) * ms:7.2f} ms "
          f"(95% CI {boot[25] * ms:.2f} .. {boot[975] * ms:.2f}), p90 {statistics.quantiles(diffs, n=10)[-1] * ms:.2f} ms"
          f"  [target <= 5 ms]")
    print(f"  guard process CPU : {guard_cpu / args.requests * ms:7.2f} ms per request (user + system; what the "
          "guard costs whatever else the machine runs)")
    print(f"  load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
