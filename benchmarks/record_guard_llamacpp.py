"""Record llama-cpp-python's OpenAI-compatible server (the ``real`` extra) serving the SmolLM2 GGUF as
the guard's fixtures: models, chat and legacy completions, each streamed and not.

    .venv/bin/python benchmarks/record_guard_llamacpp.py [--out tests/fixtures/recorded/llamacpp]
                                                         [--server-python PYTHON]

``--server-python``: the interpreter whose llama-cpp-python serves (default: this one). A build
for the machine's own CPU (the default) can crash on a virtual machine that reports AMX or
AVX-512 without supporting it; one built with ``CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF
-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"`` in a venv of its own serves there.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from guard_recording import llamacpp_requests, record  # noqa: E402
from servers import start_process  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("tests/fixtures/recorded/llamacpp"))
    ap.add_argument("--server-python", default=sys.executable)
    args = ap.parse_args()
    import subprocess

    from logitleak.models.gguf import smollm2_gguf
    from logitleak.serve.app import free_port

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="guard-llamacpp-") as tmp:
        version = subprocess.run([args.server_python, "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        proc = start_process([args.server_python, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()),
                              "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port),
                              "--n_threads", "1", "--n_ctx", "1024"], f"http://127.0.0.1:{port}/v1",
                             Path(tmp) / "server.log", name="llama.cpp's server", timeout_s=300)
        try:
            server = f"llama-cpp-python {version}"
            for line in record(f"http://127.0.0.1:{port}", llamacpp_requests("smollm2"), args.out, server):
                print("  recorded", line)
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
