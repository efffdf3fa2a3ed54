"""``logitleak guard``: an OpenAI-compatible proxy that defends the logprobs of any upstream server.

Every request is forwarded to the upstream (vLLM, llama.cpp's server, a hosted API, ``logitleak
serve``) unchanged: method, path, query, body and headers (API keys included; hop-by-hop
headers aside). Responses come back unchanged too, except that on ``/v1/chat/completions`` and
``/v1/completions`` the log-probabilities of every generated token (``logprobs`` and
``top_logprobs``, JSON and server-sent-event streams alike) go through the output-side defence
(:class:`~logitleak.guard.defender.ResponseDefender`). A successful response that
carries log-probabilities the guard cannot rewrite (an unknown shape, or another route) is
refused with a 502, never passed on undefended. Nothing is logged about headers or bodies.

Per request the guard does no setup: one aiohttp connection pool (keep-alive, no cookie jar, no
headers of its own) reaches the upstream, a bare Starlette route serves the client, and a body
with no log-probabilities in it goes back as the bytes that came (``benchmarks/bench_guard.py``
measures what it adds).
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager
from urllib.parse import quote, urlsplit

import aiohttp
import yarl
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from logitleak.defenses.spec import Defense
from logitleak.errors import LogitleakError
from logitleak.guard.defender import ResponseDefender, UndefendedLogprobs
from logitleak.wire.accesslog import redact_logger
from logitleak.wire.bodies import error_response, read_body

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


def _forwarded(raw: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """Header pairs without the hop-by-hop ones, repeated names kept (latin-1, as on the wire)."""
    out = []
    for k, v in raw:
        name = k.decode("latin-1")
        if name.lower() not in HOP_BY_HOP:
            out.append((name, v.decode("latin-1")))
    return out


def _reply(body: bytes, status: int, headers: list[tuple[str, str]], media_type: str | None = None) -> Response:
    resp = Response(body, status_code=status, media_type=media_type)
    resp.raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers
                         if not (media_type and k.lower() == "content-type")]
    return resp


def _stream(events, status: int, headers: list[tuple[str, str]]) -> StreamingResponse:
    resp = StreamingResponse(events, status_code=status)
    resp.raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    return resp


def create_guard_app(upstream: str, defense: Defense, *, secret: int | None = None, timeout_s: float = 600.0,
                     max_body_bytes: int = MAX_BODY_BYTES) -> Starlette:
    """The guard in front of ``upstream`` (an API base URL such as ``http://127.0.0.1:8000/v1``).

    Requests to ``/v1/<rest>`` go to ``<upstream>/<rest>``; any other path goes to the upstream's
    origin unchanged. ``secret`` seeds the defence's noise (random by default).
    """
    base = check_upstream(upstream)
    for name in ("aiohttp.client", "httpx"):  # never a URL with a key in it in a log of this process
        redact_logger(name)
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(base))
    defender = ResponseDefender(defense, secret=secret)
    state: dict = {}

    @asynccontextmanager
    async def lifespan(_app: Starlette):
        # One keep-alive connection pool for every request. No cookie jar: a cookie one user's
        # response set must never ride on another user's request. No header of the client's own
        # (user agent, accept, content type): the upstream sees what the caller sent.
        state["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=timeout_s),
            cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"))
        yield
        await state["session"].close()

    def target(scope: dict) -> yarl.URL:
        """The upstream URL of a request, its path and query passed on exactly as the client encoded them."""
        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if raw else quote(scope["path"])
        url = base + path[3:] if path == "/v1" or path.startswith("/v1/") else origin + path
        query = scope.get("query_string", b"")
        return yarl.URL(url + ("?" + query.decode("latin-1") if query else ""), encoded=True)

    async def proxy(request: Request) -> Response:
        body = await read_body(request, max_body_bytes, type="guard_error")
        if isinstance(body, JSONResponse):
            return body
        route = request.url.path
        defended = request.method == "POST" and route.rstrip("/").endswith(DEFENDED_ROUTES)
        headers = _forwarded(request.headers.raw) + [("Accept-Encoding", "identity")]
        session: aiohttp.ClientSession = state["session"]
        try:
            resp = await session.request(request.method, target(request.scope), headers=headers, data=body or None,
                                         allow_redirects=False)
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            return _error(504, f"The upstream did not answer within {timeout_s:g} s.", "upstream_timeout")
        except aiohttp.ClientError as err:
            return _error(502, f"The guard could not reach the upstream at {origin} ({type(err).__name__}); "
                               "check that it is running.", "upstream_unreachable")
        out_headers = _forwarded(resp.raw_headers)
        if "text/event-stream" in resp.headers.get("content-type", ""):
            if not defended or not defender.active:
                return _stream(_raw(resp), resp.status, out_headers)
            return _stream(_sse(resp, defender, body), resp.status, out_headers)
        try:
            data = await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return _error(502, "The upstream's response broke off.", "upstream_broken")
        finally:
            resp.release()
        if not 200 <= resp.status < 300 or not data or not defender.active:
            return _reply(data, resp.status, out_headers)
        if not defended:
            if b"logprob" in data:
                return _error(502, f"The upstream returned log-probabilities on {route}, which the guard cannot "
                                   "defend; use /v1/chat/completions or /v1/completions.", "undefended_logprobs")
            return _reply(data, resp.status, out_headers)
        if b"logprob" not in data:  # nothing to defend: the bytes go back as they came
            return _reply(data, resp.status, out_headers)
        try:
            obj = json.loads(data)
            defender.body(obj, body)
        except Exception as err:  # noqa: BLE001 - whatever the upstream sent, fail closed
            if not isinstance(err, (ValueError, RecursionError, UndefendedLogprobs)):
                log.exception("the guard could not rewrite a response")
            return _error(502, f"The upstream's response could not be read ({_short(err)}); the guard does not pass "
                               "on log-probabilities it cannot defend.", "undefended_logprobs")
        return _reply(json.dumps(obj, separators=(",", ":")).encode(), resp.status, out_headers,
                      media_type="application/json")

    # A bare Starlette app with one catch-all route: a proxy needs no parameter parsing, response
    # models or API docs, and each middleware layer would cost on every request.
    app = Starlette(routes=[Route("/{path:path}", proxy, methods=METHODS)], lifespan=lifespan)
    app.state.defender = defender
    return app


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


async def _raw(resp: aiohttp.ClientResponse):
    try:
        async for chunk in resp.content.iter_any():
            yield chunk
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return
    finally:
        resp.release()


async def _sse(resp: aiohttp.ClientResponse, defender: ResponseDefender, request_key: bytes):
    """Server-sent events with every ``data:`` chunk's logprobs defended; a chunk that cannot be
    defended ends the stream with an error event instead."""
    offsets: dict[int, int] = {}
    try:
        async for raw in resp.content:
            line = raw.decode("utf-8").rstrip("\r\n")
            if line.startswith("data:"):
                payload = line[5:].strip()
                if payload and payload != "[DONE]":
                    try:
                        obj = json.loads(payload)
                        defender.body(obj, request_key, offsets)
                    except Exception as err:  # noqa: BLE001 - fail closed
                        if "logprob" in payload:
                            msg = {"error": {"message": f"The guard could not defend a stream chunk ({_short(err)}); "
                                                        "the stream was stopped.", "type": "guard_error"}}
                            yield f"data: {json.dumps(msg)}\n\n"
                            return
                    else:
                        line = "data: " + json.dumps(obj, separators=(",", ":"))
            yield line + "\n"
    except (aiohttp.ClientError, asyncio.TimeoutError, UnicodeDecodeError):
        yield 'data: {"error": {"message": "The upstream stream broke off.", "type": "guard_error"}}\n\n'
    finally:
        resp.release()
