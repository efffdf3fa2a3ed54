"""``logitleak guard``: an OpenAI-compatible proxy that defends the logprobs of any upstream server.

Every request is forwarded to the upstream (vLLM, llama.cpp's server, a hosted API, ``logitleak
serve``) unchanged: method, path, query, body and headers (API keys included; hop-by-hop
headers aside). Every response, on every route and whatever its status, is parsed (JSON, or
server-sent events per :mod:`logitleak.guard.sse`), defended and re-serialised
(:mod:`logitleak.guard.document`): the upstream's bytes never reach the client. A body holding a
number the guard neither defends nor allows is refused with an error naming the field (a 502,
or the upstream's own status when that is an error). Routes the owner names with
``--passthrough`` are relayed unread. Upstream bodies are read up to a cap on their
decompressed size; large ones are defended in a worker process (:mod:`logitleak.guard.offload`),
so they never stall the event loop. Nothing is logged about headers or bodies.

One aiohttp connection pool (keep-alive, no cookie jar, no headers of its own) reaches the
upstream and a bare Starlette route serves the client (``benchmarks/bench_guard.py`` measures
what the guard adds).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable
from contextlib import asynccontextmanager
from urllib.parse import quote, urlsplit

import aiohttp
import yarl
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from logitleak.defenses.spec import Defense
from logitleak.errors import LogitleakError, first_line
from logitleak.guard.allowlist import UndefendedLogprobs
from logitleak.guard.defender import ResponseDefender
from logitleak.guard.document import dumps_strict
from logitleak.guard.offload import INLINE_BYTES, Offload
from logitleak.guard.routes import check_passthrough
from logitleak.guard.sse import EventStreamParser, format_event
from logitleak.wire.accesslog import redact_logger
from logitleak.wire.bodies import error_response, read_body

MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_UPSTREAM_BYTES = 64 * 1024 * 1024
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "trailers", "transfer-encoding", "upgrade", "host", "content-length", "accept-encoding",
                        "content-encoding"})
EVENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
log = logging.getLogger("logitleak.guard")
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]


class TooLarge(Exception):
    """An upstream body over the guard's cap."""


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
                     max_body_bytes: int = MAX_BODY_BYTES, max_upstream_bytes: int = MAX_UPSTREAM_BYTES,
                     passthrough: Iterable[str] = (), inline_bytes: int = INLINE_BYTES,
                     workers: int | None = None) -> Starlette:
    """The guard in front of ``upstream`` (an API base URL such as ``http://127.0.0.1:8000/v1``).

    Requests to ``/v1/<rest>`` go to ``<upstream>/<rest>``; any other path goes to the upstream's
    origin unchanged. ``secret`` seeds the defence's noise (random by default); ``passthrough``:
    exact request paths relayed unread; ``max_upstream_bytes``: the most an upstream body may
    hold once decompressed; bodies over ``inline_bytes`` are defended by ``workers`` processes.
    """
    base = check_upstream(upstream)
    unread = check_passthrough(passthrough)
    for name in ("aiohttp.client", "httpx"):  # never a URL with a key in it in a log of this process
        redact_logger(name)
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(base))
    defender = ResponseDefender(defense, secret=secret)
    offload = Offload(defender, inline_bytes=inline_bytes, workers=workers)
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
        try:
            yield
        finally:
            await state["session"].close()
            offload.close()

    def target(scope: dict) -> yarl.URL:
        """The upstream URL of a request, its path and query passed on exactly as the client encoded them."""
        path = _raw_path(scope)
        url = base + path[3:] if path == "/v1" or path.startswith("/v1/") else origin + path
        query = scope.get("query_string", b"")
        return yarl.URL(url + ("?" + query.decode("latin-1") if query else ""), encoded=True)

    async def proxy(request: Request) -> Response:
        body = await read_body(request, max_body_bytes, type="guard_error")
        if isinstance(body, JSONResponse):
            return body
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
        route = request.url.path
        if not defender.active or _raw_path(request.scope) in unread:
            return _stream(_raw(resp), resp.status, out_headers)
        if "text/event-stream" in resp.headers.get("content-type", "").lower():
            return _stream(_sse(resp, offload, body, max_upstream_bytes), resp.status, out_headers)
        try:
            data = await _read_capped(resp, max_upstream_bytes)
        except TooLarge:
            return _error(502, f"The upstream's response on {route} is over {_mb(max_upstream_bytes)} once "
                               "decompressed, more than the guard reads; raise --max-upstream-mb if such responses "
                               "are expected.", "upstream_too_large")
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return _error(502, "The upstream's response broke off.", "upstream_broken")
        finally:
            resp.release()
        if not data:  # nothing to read, nothing to defend (a 204, a HEAD, vLLM's /health)
            return _reply(data, resp.status, out_headers)
        try:
            out, _ = await offload.defend(data, body)
        except Exception as err:  # noqa: BLE001 - whatever the upstream sent, fail closed
            if not isinstance(err, UndefendedLogprobs):
                log.exception("the guard could not rewrite a response")
            status = resp.status if resp.status >= 400 else 502
            return _error(status, f"The guard cannot defend the upstream's response on {route} (HTTP "
                                  f"{resp.status}): {first_line(err)}; it passes on only the log-probabilities it "
                                  "defended and the numbers it allows.", "undefended_logprobs")
        return _reply(out, resp.status, out_headers, media_type="application/json")

    # A bare Starlette app with one catch-all route: a proxy needs no parameter parsing, response
    # models or API docs, and each middleware layer would cost on every request.
    app = Starlette(routes=[Route("/{path:path}", proxy, methods=METHODS)], lifespan=lifespan)
    app.state.defender = defender
    return app


def _raw_path(scope: dict) -> str:
    raw = scope.get("raw_path")
    return raw.decode("latin-1") if raw else quote(scope["path"])


def _mb(n: int) -> str:
    return f"{n / 2**20:g} MB"


async def _read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    """The whole (decompressed) body, or :class:`TooLarge` as soon as it is over ``cap`` bytes."""
    if resp.content_length is not None and resp.content_length > cap:
        raise TooLarge
    buf = bytearray()
    async for chunk in resp.content.iter_any():
        buf += chunk
        if len(buf) > cap:
            raise TooLarge
    return bytes(buf)


async def _raw(resp: aiohttp.ClientResponse):
    try:
        async for chunk in resp.content.iter_any():
            yield chunk
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return
    finally:
        resp.release()


def _error_event(message: str) -> bytes:
    return format_event(dumps_strict({"error": {"message": message, "type": "guard_error"}}))


async def _events(resp: aiohttp.ClientResponse, cap: int):
    """The upstream stream's events as the parser completes them (:class:`TooLarge` past ``cap`` bytes);
    an event the stream did not finish is discarded, as a browser would."""
    parser, total = EventStreamParser(), 0
    async for chunk in resp.content.iter_any():
        total += len(chunk)
        if total > cap:
            raise TooLarge
        for ev in parser.feed(chunk):
            yield ev
    for ev in parser.close():
        yield ev


async def _sse(resp: aiohttp.ClientResponse, offload: Offload, request_key: bytes, cap: int):
    """Server-sent events parsed, each event's JSON defended and written anew; an event the guard
    cannot defend, or a stream over ``cap`` bytes, ends the stream with an error event instead."""
    offsets: dict = {}
    try:
        async for ev in _events(resp, cap):
            try:
                if ev.event is not None and not EVENT_NAME.fullmatch(ev.event):
                    raise UndefendedLogprobs("an event type is not a name")
                out = ev.data.strip()
                if out not in ("", "[DONE]"):
                    out, offsets = await offload.defend(ev.data, request_key, offsets)
            except Exception as err:  # noqa: BLE001 - fail closed
                if not isinstance(err, UndefendedLogprobs):
                    log.exception("the guard could not rewrite a stream event")
                yield _error_event(f"The guard could not defend a stream event ({first_line(err)}); the stream "
                                   "was stopped.")
                return
            if out:
                yield format_event(out, ev.event)
    except TooLarge:
        yield _error_event(f"The upstream's stream is over {_mb(cap)}, more than the guard reads; the stream was "
                           "stopped.")
    except (aiohttp.ClientError, asyncio.TimeoutError):
        yield _error_event("The upstream stream broke off.")
    finally:
        resp.release()
