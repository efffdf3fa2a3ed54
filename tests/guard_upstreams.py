"""Fake upstreams for the guard's tests: a raw ASGI app that answers each request with the canned
response its ``x-case`` header names (status, headers, body bytes or a list of stream chunks),
and the marker value planted in every probability a test wants to see defended."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json

import pytest

MARKER = -0.123456789  # round:1 -> -0.1; its digits must never reach a client
DIGITS = b"123456789"


def entry(value=MARKER, token="a", alts=(("a", MARKER), ("b", MARKER - 1))) -> dict:
    """One chat logprobs entry whose values are all markers (by default)."""
    return {"token": token, "logprob": value, "bytes": list(token.encode()),
            "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in alts]}


def chat(*entries, **extra) -> dict:
    return {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "a"}, "finish_reason": "length",
                         "logprobs": {"content": list(entries or [entry()])}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}, **extra}


def sse(*events, end: str = "\n\n") -> bytes:
    return b"".join(f"data: {json.dumps(e) if not isinstance(e, str) else e}{end}".encode() for e in events)


class Canned:
    """``cases[name] = (status, content_type, body)``: ``body`` bytes, or a list of byte chunks sent
    one by one (a stream), or a callable ``() -> body`` evaluated per request."""

    def __init__(self):
        self.cases: dict[str, tuple] = {}
        self.open = 0  # responses still being sent (a client that went away must not leave any)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        name = dict(scope["headers"]).get(b"x-case", b"").decode()
        status, ctype, body, *rest = self.cases[name]
        headers = [(b"content-type", ctype.encode())] + [(k.encode(), v.encode()) for k, v in (rest[0] if rest else [])]
        body = body() if callable(body) else body
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if isinstance(body, bytes):
            await send({"type": "http.response.body", "body": body})
            return
        self.open += 1
        try:
            for chunk in body:
                if isinstance(chunk, float):
                    await asyncio.sleep(chunk)
                    continue
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            self.open -= 1


@contextlib.contextmanager
def guard_over(canned: Canned, spec: str = "round:1", **kw):
    """``canned`` served on a loopback port and the guard (``spec``, noise secret 1) in front of it."""
    from logitleak.defenses.spec import parse_single_defense
    from logitleak.guard.app import create_guard_app
    from logitleak.serve.app import RunningServer

    with RunningServer(canned) as up, RunningServer(create_guard_app(up.url, parse_single_defense(spec), secret=1,
                                                                     **kw)) as g:
        yield g


@pytest.fixture(scope="module")
def canned() -> Canned:
    """One fake upstream per test module (import this fixture with ``guard``)."""
    return Canned()


@pytest.fixture(scope="module")
def guard(canned, request):
    """The guard in front of ``canned``: round:1 unless the module's ``GUARD`` dict says otherwise
    (``spec`` and any ``create_guard_app`` keyword)."""
    with guard_over(canned, **getattr(request.module, "GUARD", {})) as g:
        yield g


def send(port: int, method: str, path: str, case: str, body: bytes | None = None) -> tuple[int, list, bytes]:
    """One request sent byte for byte (the path as written, dot segments and escapes included):
    (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, body=body, headers={"x-case": case, "content-type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), resp.read()
    finally:
        conn.close()
