"""The `logitleak serve` command: an OpenAI-compatible chat-completions server for a local model."""

from __future__ import annotations

import os
from typing import Optional

import typer

from logitleak.cli.listen import check_listen, is_loopback
from logitleak.errors import LogitleakError


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        model: str = typer.Option("organism", "--model", help="Local Hugging Face model directory, a GGUF file (or a folder "
                                                                    "holding one), 'organism' or 'smollm2'."),
        host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (loopback by default)."),
        port: int = typer.Option(8000, "--port", help="TCP port."),
        defense: Optional[str] = typer.Option(None, "--defense",
                                              help="One output-side defence on the returned logprobs, e.g. round:1, "
                                                   "topk:2, gauss:0.5, values_only, round:1+gauss:0.1. "
                                                   "values_only returns '<hidden>' as every alternative's token; "
                                                   "ranks_only returns -9999.0 as every log-probability."),
        api_key_env: Optional[str] = typer.Option(None, "--api-key-env",
                                                  help="Environment variable holding the API key clients must send "
                                                       "as 'Authorization: Bearer <key>'."),
        max_batch: int = typer.Option(16, "--max-batch", min=1, help="Most concurrent requests batched into one forward pass."),
        served_model_name: Optional[str] = typer.Option(None, "--served-model-name",
                                                        help="Model name clients pass (default: 'organism' or the directory name)."),
        device: Optional[str] = typer.Option(None, help="torch device (default: cuda if available, else cpu)."),
        dtype: Optional[str] = typer.Option(None, help="Model dtype, e.g. float32, bfloat16."),
        threads: Optional[int] = typer.Option(None, "--threads", min=1,
                                              help="torch CPU threads for generation (default: torch's; 1 is often fastest for small models)."),
        allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Also load pickle checkpoints "
                                          "(pytorch_model.bin) with torch's weights-only loader; by default only "
                                          "safetensors load."),
        quiet: bool = typer.Option(False, "--quiet", help="No access log."),
    ) -> None:
        """Serve a local model over the OpenAI chat-completions API, with logprobs and an optional defence."""
        import uvicorn
        from rich.console import Console

        from logitleak.models.devices import check_device
        from logitleak.serve.app import build_engine, create_app

        check_device(device)
        api_key = None
        if api_key_env:
            api_key = os.environ.get(api_key_env, "").strip()
            if not api_key:
                raise LogitleakError(f"The environment variable {api_key_env} named by --api-key-env is not set or "
                                     "empty; export the key there first.")
        check_listen(host, port)
        console = Console(stderr=True)
        engine, name = build_engine(model, defense=defense, max_batch=max_batch, device=device, dtype=dtype,
                                    threads=threads, progress=not quiet, allow_pickle=allow_pickle)
        name = served_model_name or name
        if not is_loopback(host):
            console.print(f"[yellow]warning:[/yellow] listening on {host}, reachable beyond this machine"
                          + ("" if api_key else " and without an API key (pass --api-key-env)") + ".")
        console.print(f"Serving [bold]{name}[/bold] at http://{host}:{port}/v1 "
                      f"(defence: {engine.defense.label()}, auth: {'API key' if api_key else 'none'}, "
                      f"max batch {max_batch}). Ctrl-C stops it.")
        app_ = create_app(engine, served_model_name=name, api_key=api_key)
        from logitleak.wire.accesslog import uvicorn_log_config

        uvicorn.run(app_, host=host, port=port, log_level="warning" if quiet else "info", access_log=not quiet,
                    log_config=uvicorn_log_config(secrets=[api_key] if api_key else []))
