"""The guard's promise tried by generated hostile upstreams (hypothesis): arbitrary JSON trees and
server-sent-event streams with marker probabilities planted at random depths and keys, written
with random encodings (escaped keys, a BOM, CR / LF / CRLF, multi-line ``data:``, comments,
unknown fields, event types), answered with any status: no marker digit reaches the client.
And well-formed known shapes, written as oddly, still come back defended, so a guard that
refused everything would fail here."""

from __future__ import annotations

import json
import math
import os

import pytest
from guard_upstreams import DIGITS, canned, guard, send  # noqa: F401 - fixtures
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MARKERS = (-0.123456789, 0.123456789, -1.123456789, -7.123456789e-3)
KEYS = ("choices", "logprobs", "content", "refusal", "top_logprobs", "token", "logprob", "bytes", "prob", "probs",
        "top_probs", "tok_str", "prompt_logprobs", "rank", "completion_probabilities", "usage", "index", "created",
        "data", "message", "delta", "output", "item", "part", "token_logprobs", "tokens", "text_offset", "timings",
        "id", "prompt_tokens", "raw_logprob", "error", "code", "response")
STATUSES = (200, 200, 200, 201, 400, 404, 422, 429, 500, 503)
SETTINGS = settings(max_examples=int(os.environ.get("GUARD_EXAMPLES", "60")), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

keys = st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=6))
leaves = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**6), st.text(max_size=5),
                   st.floats(allow_nan=False, allow_infinity=False, width=32), st.sampled_from(MARKERS))
trees = st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(keys, inner, max_size=5)), max_leaves=30)


def plant(tree, path: list[int | str], value):
    """``tree`` with ``value`` put at the place ``path`` reaches (as deep as it goes)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(tree, dict):
        key = head if isinstance(head, str) else (list(tree)[head % len(tree)] if tree else "logprob")
        return {**tree, key: plant(tree.get(key), rest, value)}
    if isinstance(tree, list) and tree and isinstance(head, int):
        i = head % len(tree)
        return tree[:i] + [plant(tree[i], rest, value)] + tree[i + 1:]
    return {head if isinstance(head, str) else "logprob": plant(None, rest, value)}


planted = st.builds(plant, trees, st.lists(st.one_of(st.sampled_from(KEYS), st.integers(0, 5)), max_size=7),
                    st.sampled_from(MARKERS))


def escape_keys(text: str, draw) -> str:
    """Some characters of some keys written as \\uXXXX escapes (the same JSON to any parser)."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == '"' and draw(st.booleans()):
            end = text.find('"', i + 1)
            if end > 0 and text[end + 1:end + 2] == ":" and "\\" not in text[i + 1:end]:
                out.append('"' + "".join(f"\\u{ord(ch):04x}" if ch.isalpha() and draw(st.booleans()) else ch
                                         for ch in text[i + 1:end]) + '"')
                i = end + 1
                continue
        out.append(c)
        i += 1
    return "".join(out)


@st.composite
def json_bytes(draw, tree_strategy=planted):
    tree = draw(tree_strategy)
    text = json.dumps(tree, indent=draw(st.sampled_from([None, 0, 1])), ensure_ascii=draw(st.booleans()))
    text = escape_keys(text, draw)
    return (b"\xef\xbb\xbf" if draw(st.booleans()) else b"") + text.encode()


@st.composite
def sse_bytes(draw, tree_strategy=planted, hostile: bool = True):
    """A stream of events carrying generated documents, in every line ending and with noise lines
    (``hostile``: an event type that is a marker too)."""
    nl = draw(st.sampled_from(["\n", "\r", "\r\n"]))
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        doc = json.dumps(draw(tree_strategy), indent=draw(st.sampled_from([None, 1])))
        lines = [f"data: {line}" for line in doc.split("\n")]
        noise = draw(st.lists(st.sampled_from([f": {MARKERS[0]}", f"id: {MARKERS[0]}", "retry: 123456789",
                                               f"logprob: {MARKERS[1]}", "event: message", "event: delta"]
                                              + [f"event: {MARKERS[0]}"] * hostile), max_size=2))
        parts.append(nl.join(noise + lines) + nl + nl)
    if draw(st.booleans()):
        parts.append("data: [DONE]" + nl + nl)
    raw = (("\ufeff" if draw(st.booleans()) else "") + "".join(parts)).encode()
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(raw) - 1)), max_size=4))))
    return [raw[a:b] for a, b in zip([0] + cuts, cuts + [len(raw)])]


def through(guard, canned, status: int, ctype: str, body, path: str = "/v1/chat/completions"):
    canned.cases["p"] = (status, ctype, body)
    code, _, out = send(guard.port, "POST", path, "p", b"{}")
    return code, out


def strict(raw: bytes):
    return json.loads(raw, parse_constant=lambda c: pytest.fail(f"{c} in the guard's output"))


ROUTES = st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/responses", "/completion", "/v1/models",
                          "/v1/anything", "/health"])


@SETTINGS
@given(status=st.sampled_from(STATUSES), body=json_bytes(), path=ROUTES)
def test_no_planted_marker_reaches_the_client_in_a_json_body(guard, canned, status, body, path):
    code, out = through(guard, canned, status, "application/json", body, path)
    assert DIGITS not in out, (body, out)
    strict(out)  # strict JSON, whatever came in
    assert code == status or code == 502


@SETTINGS
@given(status=st.sampled_from(STATUSES), chunks=sse_bytes(), path=ROUTES)
def test_no_planted_marker_reaches_the_client_in_a_stream(guard, canned, status, chunks, path):
    _, out = through(guard, canned, status, "text/event-stream", chunks, path)
    assert DIGITS not in out, (b"".join(chunks), out)
    for block in out.decode().split("\n\n"):
        data = "\n".join(line[6:] for line in block.split("\n") if line.startswith("data: "))
        if data and data != "[DONE]":
            strict(data.encode())


# ---------------------------------------------------------------- known shapes still come back defended

logprob_values = st.floats(-30, 0, allow_nan=False).map(lambda v: round(v, 9))
tokens = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=4)


@st.composite
def chat_shape(draw):
    """A chat completion (one to three entries of k alternatives each) with allowlisted extras."""
    k = draw(st.integers(0, 4))
    entries = []
    for _ in range(draw(st.integers(1, 3))):
        alts = sorted(draw(st.lists(logprob_values, min_size=k, max_size=k)), reverse=True)
        names = draw(st.lists(tokens, min_size=k, max_size=k, unique=True))
        entries.append({"token": names[0] if names else "x", "logprob": alts[0] if alts else draw(logprob_values),
                        "bytes": None, "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())}
                                                        for t, v in zip(names, alts)]})
    body = {"id": draw(st.text(max_size=5)), "object": "chat.completion", "created": draw(st.integers(0, 2**31)),
            "choices": [{"index": 0, "message": {"content": draw(st.text(max_size=8))}, "logprobs": {"content": entries}}],
            "usage": {"prompt_tokens": draw(st.integers(0, 99)), "completion_tokens": len(entries)}}
    if draw(st.booleans()):
        body["system_fingerprint"] = None
    return body


def expected(body: dict) -> list[float]:
    """round:1 as the defence computes it (round half to even of v * 10, then / 10)."""
    return [round(v * 10) / 10 for e in body["choices"][0]["logprobs"]["content"]
            for v in [e["logprob"]] + [a["logprob"] for a in e["top_logprobs"]]]


def got(body: dict) -> list[float]:
    return [v for e in body["choices"][0]["logprobs"]["content"]
            for v in [e["logprob"]] + [a["logprob"] for a in e["top_logprobs"]]]


@SETTINGS
@given(shape=chat_shape(), data=st.data(), status=st.sampled_from(STATUSES))
def test_well_formed_shapes_come_back_defended_however_they_are_written(guard, canned, shape, data, status):
    body = data.draw(json_bytes(st.just(shape)))
    code, out = through(guard, canned, status, "application/json", body)
    assert code == status, out
    back = strict(out)
    assert got(back) == pytest.approx(expected(shape), abs=1e-12) and back["usage"] == shape["usage"]
    assert all(math.isclose(v * 10, round(v * 10), abs_tol=1e-9) for v in got(back))
    chunks = data.draw(sse_bytes(st.just({**shape, "object": "chat.completion.chunk"}), hostile=False))
    code, out = through(guard, canned, status, "text/event-stream", chunks)
    events = [strict("\n".join(line[6:] for line in block.split("\n") if line.startswith("data: ")).encode())
              for block in out.decode().split("\n\n") if "data: {" in block]
    assert code == status and events and all("error" not in e for e in events), out
    for e in events:
        assert got(e) == pytest.approx(expected(shape), abs=1e-12)
