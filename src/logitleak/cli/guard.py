"""The `logitleak guard` command: an OpenAI-compatible proxy that defends an upstream server's logprobs."""

from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def guard(
        upstream: str = typer.Option(..., "--upstream",
                                     help="The upstream's API base URL, as a client would use it, e.g. "
                                          "http://127.0.0.1:8000/v1 (vLLM, llama.cpp's server, logitleak serve)."),
        defense: Optional[str] = typer.Option(None, "--defense",
                                              help="One output-side defence on every returned logprob (same syntax as "
                                                   "serve --defense), e.g. round:1, topk:2, gauss:0.5, values_only, "
                                                   "round:1+gauss:0.1. temperature needs the full distribution and "
                                                   "is refused."),
        host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (loopback by default)."),
        port: int = typer.Option(8001, "--port", help="TCP port."),
        timeout: float = typer.Option(600.0, "--timeout", min=1.0, help="Seconds to wait for the upstream per request."),
        passthrough: Optional[list[str]] = typer.Option(
            None, "--passthrough", metavar="ROUTE",
            help="A request path relayed unread, for a route the owner knows returns no log-probabilities "
                 "(e.g. /metrics, /openapi.json); repeat for several. Generation routes are always defended."),
        max_upstream_mb: float = typer.Option(64.0, "--max-upstream-mb", min=0.001,
                                              help="The most an upstream response may hold once decompressed (MB); "
                                                   "a larger one is refused."),
        quiet: bool = typer.Option(False, "--quiet", help="No access log."),
    ) -> None:
        """Proxy an OpenAI-compatible endpoint, applying an output-side defence to every response's logprobs."""
        import uvicorn
        from rich.console import Console

        from logitleak.cli.listen import check_listen, is_loopback
        from logitleak.defenses.spec import parse_single_defense
        from logitleak.guard.app import check_upstream, create_guard_app
        from logitleak.guard.defender import check_guard_defense
        from logitleak.guard.routes import check_passthrough
        from logitleak.wire.accesslog import uvicorn_log_config

        check_listen(host, port)
        base = check_upstream(upstream)
        parsed = parse_single_defense(defense)
        check_guard_defense(parsed)
        unread = check_passthrough(passthrough or ())
        console = Console(stderr=True)
        if not is_loopback(host):
            console.print(f"[yellow]warning:[/yellow] listening on {host}, reachable beyond this machine.")
        if not parsed.output_side:
            console.print("[yellow]warning:[/yellow] no --defense given: the guard passes logprobs through unchanged.")
        console.print(f"Guarding {base} at http://{host}:{port}/v1 (defence: {parsed.label()}). Ctrl-C stops it.")
        app_ = create_guard_app(base, parsed, timeout_s=timeout, passthrough=unread,
                                max_upstream_bytes=int(max_upstream_mb * 2**20))
        uvicorn.run(app_, host=host, port=port, log_level="warning" if quiet else "info", access_log=not quiet,
                    log_config=uvicorn_log_config())
