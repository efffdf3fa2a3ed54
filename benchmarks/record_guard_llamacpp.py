"""Record llama-cpp-python's OpenAI-compatible server (the ``real`` extra) serving the SmolLM2 GGUF as
the guard's fixtures: models, chat and legacy completions, each streamed and not.

    .venv/bin/python benchmarks/record_guard_llamacpp.py [--out tests/fixtures/recorded/llamacpp]

The server starts as the tests start it (``servers.llamacpp_command``: its AMX weight repacking,
which crashes it on this machine, turned off).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from guard_recording import llamacpp_requests, record  # noqa: E402
from servers import llamacpp_command, start_process  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("tests/fixtures/recorded/llamacpp"))
    args = ap.parse_args()
    import llama_cpp

    from logitleak.models.gguf import smollm2_gguf
    from logitleak.serve.app import free_port

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="guard-llamacpp-") as tmp:
        proc = start_process(llamacpp_command(smollm2_gguf(), "smollm2", port, "--n_threads", "1", "--n_ctx", "1024"),
                             f"http://127.0.0.1:{port}/v1", Path(tmp) / "server.log", name="llama.cpp's server",
                             timeout_s=300)
        try:
            server = f"llama-cpp-python {llama_cpp.__version__}"
            for line in record(f"http://127.0.0.1:{port}", llamacpp_requests("smollm2"), args.out, server):
                print("  recorded", line)
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
