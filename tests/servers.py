"""Subprocesses for tests and benchmarks: servers started until they answer ``/models`` (or the organism in process), runs killed mid-phase."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def serve_command(model: str | Path, served_name: str, port: int, *extra: str) -> list[str]:
    """``logitleak serve`` for ``model`` on a loopback ``port`` (``extra``: more flags)."""
    return [sys.executable, "-c", "from logitleak.cli import main; main()", "serve", "--model", str(model),
            "--served-model-name", served_name, "--port", str(port), *extra]


def start_process(cmd: list[str], base_url: str, log: Path, *, name: str = "the server", timeout_s: float = 180,
                  poll_s: float = 0.2, env: dict | None = None, error: type[BaseException] = RuntimeError,
                  ) -> subprocess.Popen:
    """Run ``cmd`` with its output appended to ``log`` and return once ``base_url/models`` answers
    200; ``error`` (with the log's tail) when it exits first or is not up within ``timeout_s``."""
    fh = open(log, "ab")
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    fh.close()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise error(f"{name} exited early:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            if httpx.get(base_url.rstrip("/") + "/models", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(poll_s)
    proc.kill()
    raise error(f"{name} did not come up within {timeout_s:.0f} s:\n{log.read_text(errors='replace')[-4000:]}")


def kill_when(cmd: list[str], ready, *, env: dict, what: str, timeout_s: float = 600, poll_s: float = 0.05) -> None:
    """Start ``cmd`` in its own session and SIGKILL its process group as soon as ``ready()`` holds;
    the test fails (naming ``what``) if the run finishes first or ``ready`` never holds."""
    import pytest

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    t0 = time.time()
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"{what} finished before the phase to interrupt was reached")
            if time.time() - t0 > timeout_s:
                pytest.fail("the phase to interrupt was never reached")
            time.sleep(poll_s)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def organism_server(adapter, *, max_batch: int = 8, threads: int = 1, served_model_name: str = "organism",
                    **app_kwargs) -> Iterator:
    """The project's own server over ``adapter`` in this process (a ``RunningServer`` with its
    ``engine`` attached), stopped on exit."""
    from logitleak.serve.app import RunningServer, create_app
    from logitleak.serve.engine import Engine

    engine = Engine(adapter, max_batch=max_batch, threads=threads)
    with RunningServer(create_app(engine, served_model_name=served_model_name, **app_kwargs)) as srv:
        srv.engine = engine
        yield srv


# llama.cpp's CPU backend repacks weights for AMX / extra buffer types when the CPU has them, and its
# batched decode then segfaults (ggml-org/llama.cpp#20824, seen on llama-cpp-python 0.3.36 on AMX
# CPUs); llama-cpp-python's server has no flag to turn the repacking off, so it starts with it off.
_LLAMACPP_MAIN = (
    "import runpy, sys\n"
    "import llama_cpp.llama_cpp as C\n"
    "_defaults = C.llama_model_default_params\n"
    "def _params():\n"
    "    p = _defaults()\n"
    "    p.use_extra_bufts = False\n"
    "    return p\n"
    "C.llama_model_default_params = _params\n"
    "sys.argv[0] = 'llama_cpp.server'\n"
    "runpy.run_module('llama_cpp.server', run_name='__main__')\n"
)


def llamacpp_command(gguf_file: str | Path, alias: str, port: int, *extra: str) -> list[str]:
    """llama-cpp-python's OpenAI-compatible server for ``gguf_file`` on a loopback ``port``, with the
    CPU weight repacking that crashes it on AMX CPUs turned off (``extra``: more flags)."""
    return [sys.executable, "-c", _LLAMACPP_MAIN, "--model", str(gguf_file), "--model_alias", alias,
            "--host", "127.0.0.1", "--port", str(port), *extra]
