"""``logitleak guard``: an OpenAI-compatible proxy that defends the logprobs of any upstream server.

Every request is forwarded to the upstream (vLLM, llama.cpp's server, a hosted API, ``logitleak
serve``) unchanged: method, path, query, body and headers (API keys included; hop-by-hop
headers aside). Responses come back unchanged too, except that on ``/v1/chat/completions`` and
``/v1/completions`` the log-probabilities of every generated token (``logprobs`` and
``top_logprobs``, JSON and server-sent-event streams alike) go through the output-side defence
(:class:`~logitleak.blackbox.logprob_defense.ResponseDefender`). A successful response that
carries log-probabilities the guard cannot rewrite (an unknown shape, or another route) is
refused with a 502, never passed on undefended. Nothing is logged about headers or bodies.
"""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from logitleak.blackbox.accesslog import redact_logger
from logitleak.blackbox.server import error_response, read_body
from logitleak.blackbox.logprob_defense import ResponseDefender, UndefendedLogprobs
from logitleak.defenses.spec import Defense
from logitleak.errors import LogitleakError

MAX_BODY_BYTES = 32 * 1024 * 1024
DEFENDED_ROUTES = ("/chat/completions", "/completions")
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "trailers", "transfer-encoding", "upgrade", "host", "content-length", "accept-encoding",
                        "content-encoding"})
log = logging.getLogger("logitleak.guard")
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]


def check_upstream(url: str) -> str:
    """The upstream's API base URL (``http(s)://host[:port][/prefix]``, no trailing slash), or a clear error."""
    try:
        parts = urlsplit(url.strip())
    except ValueError as err:
        raise LogitleakError(f"Upstream {url!r} is not a valid URL ({err}); pass the API base a client would use, "
                             "e.g. http://127.0.0.1:8000/v1.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LogitleakError(f"Upstream {url!r} is not an http(s) URL; pass the API base a client would use, "
                             "e.g. http://127.0.0.1:8000/v1.")
    if parts.query or parts.fragment:
        raise LogitleakError(f"Upstream {url!r} carries a query or fragment; pass the bare API base URL.")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise LogitleakError(f"Upstream {url!r} has an invalid port; use a number between 1 and 65535.") from None
    return url.strip().rstrip("/")


def _error(status: int, message: str, code: str | None = None) -> JSONResponse:
    return error_response(status, message, type="guard_error", code=code)


def _headers(items) -> dict[str, str]:
    return {k: v for k, v in items if k.lower() not in HOP_BY_HOP}


def create_guard_app(upstream: str, defense: Defense, *, secret: int | None = None, timeout_s: float = 600.0,
                     max_body_bytes: int = MAX_BODY_BYTES, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """The guard in front of ``upstream`` (an API base URL such as ``http://127.0.0.1:8000/v1``).

    Requests to ``/v1/<rest>`` go to ``<upstream>/<rest>``; any other path goes to the upstream's
    origin unchanged. ``secret`` seeds the defence's noise (random by default).
    """
    base = check_upstream(upstream)
    redact_logger("httpx")  # httpx logs every upstream URL at INFO: never with a key in it
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(base))
    defender = ResponseDefender(defense, secret=secret)
    timeouts = {"timeout": httpx.Timeout(timeout_s, connect=10.0).as_dict()}
    state: dict = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        # One connection pool, kept alive across requests, used as a transport directly: the
        # client layer's cookie jar, auth, redirect and URL-merging steps cost per request and a
        # proxy must not use them anyway (a cookie one user's response set must never reach another).
        state["transport"] = transport or httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64), trust_env=False)
        yield
        await state["transport"].aclose()

    app = FastAPI(title="logitleak guard", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.defender = defender

    def target(path: str, query: bytes) -> str:
        url = base + path[3:] if path == "/v1" or path.startswith("/v1/") else origin + path
        return url + ("?" + query.decode("latin-1") if query else "")

    async def proxy(request: Request) -> Response:
        body = await read_body(request, max_body_bytes, type="guard_error")
        if isinstance(body, JSONResponse):
            return body
        route = request.url.path
        defended = request.method == "POST" and route.rstrip("/").endswith(DEFENDED_ROUTES)
        headers = [(k, v) for k, v in request.headers.raw if k.lower().decode("latin-1") not in HOP_BY_HOP]
        headers.append((b"accept-encoding", b"identity"))
        upstream_request = httpx.Request(request.method, target(route, request.scope.get("query_string", b"")),
                                         headers=headers, content=body, extensions=timeouts)
        try:
            resp = await state["transport"].handle_async_request(upstream_request)
        except httpx.TimeoutException:
            return _error(504, f"The upstream did not answer within {timeout_s:g} s.", "upstream_timeout")
        except httpx.HTTPError as err:
            return _error(502, f"The guard could not reach the upstream at {origin} ({type(err).__name__}); "
                               "check that it is running.", "upstream_unreachable")
        out_headers = _headers(resp.headers.items())
        if "text/event-stream" in resp.headers.get("content-type", ""):
            if not defended or not defender.active:
                return StreamingResponse(_raw(resp), status_code=resp.status_code, headers=out_headers)
            return StreamingResponse(_sse(resp, defender, body), status_code=resp.status_code,
                                     headers=out_headers)
        try:
            data = await resp.aread()
        except httpx.HTTPError:
            return _error(502, "The upstream's response broke off.", "upstream_broken")
        finally:
            await resp.aclose()
        if not 200 <= resp.status_code < 300 or not data or not defender.active:
            return Response(data, status_code=resp.status_code, headers=out_headers)
        if not defended:
            if b"logprob" in data:
                return _error(502, f"The upstream returned log-probabilities on {route}, which the guard cannot "
                                   "defend; use /v1/chat/completions or /v1/completions.", "undefended_logprobs")
            return Response(data, status_code=resp.status_code, headers=out_headers)
        if b"logprob" not in data:  # nothing to defend: the bytes go back as they came
            return Response(data, status_code=resp.status_code, headers=out_headers)
        try:
            obj = json.loads(data)
            defender.body(obj, body)
        except Exception as err:  # noqa: BLE001 - whatever the upstream sent, fail closed
            if not isinstance(err, (ValueError, RecursionError, UndefendedLogprobs)):
                log.exception("the guard could not rewrite a response")
            return _error(502, f"The upstream's response could not be read ({_short(err)}); the guard does not pass "
                               "on log-probabilities it cannot defend.", "undefended_logprobs")
        return Response(json.dumps(obj, separators=(",", ":")).encode(), status_code=resp.status_code,
                        headers=out_headers, media_type="application/json")

    # A plain Starlette route: the proxy needs no FastAPI parameter parsing or response models.
    app.router.add_route("/{path:path}", proxy, methods=METHODS)
    return app


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


async def _raw(resp: httpx.Response):
    try:
        async for chunk in resp.aiter_raw():
            yield chunk
    finally:
        await resp.aclose()


async def _sse(resp: httpx.Response, defender: ResponseDefender, request_key: bytes):
    """Server-sent events with every ``data:`` chunk's logprobs defended; a chunk that cannot be
    defended ends the stream with an error event instead."""
    offsets: dict[int, int] = {}
    try:
        async for line in resp.aiter_lines():
            if line.startswith("data:"):
                payload = line[5:].strip()
                if payload and payload != "[DONE]":
                    try:
                        obj = json.loads(payload)
                        defender.body(obj, request_key, offsets)
                    except Exception as err:  # noqa: BLE001 - fail closed
                        if "logprob" in payload and defender.active:
                            msg = {"error": {"message": f"The guard could not defend a stream chunk ({_short(err)}); "
                                                        "the stream was stopped.", "type": "guard_error"}}
                            yield f"data: {json.dumps(msg)}\n\n"
                            return
                    else:
                        line = "data: " + json.dumps(obj, separators=(",", ":"))
            yield line + "\n"
    except httpx.HTTPError:
        yield 'data: {"error": {"message": "The upstream stream broke off.", "type": "guard_error"}}\n\n'
    finally:
        await resp.aclose()
