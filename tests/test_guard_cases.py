"""Issue 19's list, each case a test: a hostile or merely unusual upstream answers through
``guard --defense round:1``; no marker value reaches the client, whatever the shape, encoding,
route or status; what the guard knows comes back defended, the rest is refused naming the field."""

from __future__ import annotations

import gzip
import json

import httpx
import pytest
from guard_upstreams import DIGITS, MARKER, canned, chat, entry, guard, send, sse  # noqa: F401 - fixtures

GUARD = {"max_upstream_bytes": 4 * 2**20, "passthrough": ["/v1/metrics"]}

ROUNDED = round(MARKER, 1)


def call(guard, canned, name, status, ctype, body, path="/chat/completions", method="POST", headers=()):
    """Send one request through the guard, the upstream answering with this case; ``path``: a /v1
    route, or any other path as the client writes it (sent byte for byte, dot segments included)."""
    canned.cases[name] = (status, ctype, body, list(headers))
    target = "/v1" + path if path in ("/chat/completions", "/completions", "/models", "/responses") else path
    code, head, content = send(guard.port, method, target, name, b"{}" if method == "POST" else None)
    return httpx.Response(code, headers=head, content=content)


def refused(r, status=502, field=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == "undefended_logprobs" and "cannot defend" in err["message"]
    if field:
        assert field in err["message"], err["message"]
    assert DIGITS not in r.content


def values(obj):
    """Every number in a parsed body."""
    if isinstance(obj, dict):
        return [v for x in obj.values() for v in values(x)]
    if isinstance(obj, list):
        return [v for x in obj for v in values(x)]
    return [obj] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


# ---------------------------------------------------------------- vLLM's prompt_logprobs

def test_vllm_prompt_logprobs_are_defended_top_level_and_per_choice(guard, canned):
    rows = [None, {"7": {"logprob": MARKER, "rank": 1, "decoded_token": "a"},
                   "9": {"logprob": MARKER - 2, "rank": 4012, "decoded_token": "z"}}]
    r = call(guard, canned, "prompt-chat", 200, "application/json", json.dumps(chat(prompt_logprobs=rows)).encode())
    assert r.status_code == 200 and DIGITS not in r.content
    got = r.json()["prompt_logprobs"]
    assert got[0] is None and got[1] == {"7": {"logprob": ROUNDED, "rank": 1, "decoded_token": "a"},
                                         "9": {"logprob": round(MARKER - 2, 1), "rank": None, "decoded_token": "z"}}
    legacy = {"object": "text_completion", "choices": [{"index": 0, "text": "a", "prompt_logprobs": rows,
                                                         "logprobs": None}]}
    r = call(guard, canned, "prompt-completion", 200, "application/json", json.dumps(legacy).encode(), "/completions")
    assert r.status_code == 200 and DIGITS not in r.content
    assert r.json()["choices"][0]["prompt_logprobs"][1]["7"]["logprob"] == ROUNDED


# ---------------------------------------------------------------- probabilities under other names

def test_llamacpp_native_completion_probabilities_are_defended(guard, canned):
    old = {"content": " a", "completion_probabilities": [{"content": " a", "probs": [
        {"tok_str": " a", "prob": 0.123456789}, {"tok_str": " b", "prob": 0.0123456789}]}],
        "tokens_predicted": 1, "timings": {"predicted_ms": 1.5}}
    r = call(guard, canned, "native-old", 200, "application/json", json.dumps(old).encode(), "/completion")
    assert r.status_code == 200 and DIGITS not in r.content
    probs = r.json()["completion_probabilities"][0]["probs"]
    import math

    assert [p["tok_str"] for p in probs] == [" a", " b"]
    assert probs[0]["prob"] == pytest.approx(math.exp(round(math.log(0.123456789), 1)))
    new = {"content": "a", "completion_probabilities": [{"id": 5, "token": "a", "bytes": [97], "logprob": MARKER,
                                                          "top_logprobs": [{"id": 5, "token": "a", "bytes": [97],
                                                                            "logprob": MARKER}]}]}
    r = call(guard, canned, "native-new", 200, "application/json", json.dumps(new).encode(), "/completion")
    assert r.status_code == 200 and r.json()["completion_probabilities"][0] == {
        "id": 5, "token": "a", "bytes": [97], "logprob": ROUNDED,
        "top_logprobs": [{"id": 5, "token": "a", "bytes": [97], "logprob": ROUNDED}]}
    # llama.cpp's server as its README documents /completion (no such server is built here to record)
    full = {"index": 0, "content": " Paris", "tokens": [], "id_slot": 0, "stop": True, "model": "smollm2",
            "tokens_predicted": 1, "tokens_evaluated": 7, "tokens_cached": 7, "truncated": False, "stop_type": "limit",
            "stopping_word": "", "has_new_line": False,
            "generation_settings": {"n_predict": 1, "seed": 4294967295, "temperature": 0.8, "dynatemp_range": 0.0,
                                    "top_k": 40, "top_p": 0.95, "min_p": 0.05, "samplers": ["top_k", "top_p"],
                                    "logit_bias": [], "n_probs": 2, "lora": [{"id": 0, "scale": 1.0}]},
            "timings": {"prompt_n": 7, "prompt_ms": 12.5, "prompt_per_token_ms": 1.8, "prompt_per_second": 560.0,
                        "predicted_n": 1, "predicted_ms": 3.2, "predicted_per_token_ms": 3.2,
                        "predicted_per_second": 312.5},
            "completion_probabilities": [{"id": 12, "token": " Paris", "bytes": [32, 80, 97, 114, 105, 115],
                                          "logprob": MARKER, "top_logprobs": [
                                              {"id": 12, "token": " Paris", "bytes": [32, 80], "logprob": MARKER},
                                              {"id": 99, "token": " Lyon", "bytes": [32, 76], "logprob": MARKER - 2}]}]}
    r = call(guard, canned, "native-full", 200, "application/json", json.dumps(full).encode(), "/completion")
    assert r.status_code == 200 and DIGITS not in r.content
    got = r.json()
    assert got["timings"] == full["timings"] and got["generation_settings"] == full["generation_settings"]
    assert [a["logprob"] for a in got["completion_probabilities"][0]["top_logprobs"]] == [ROUNDED, round(MARKER - 2, 1)]
    top_probs = {"completion_probabilities": [{"id": 5, "token": "a", "prob": 0.123456789,
                                               "top_probs": [{"id": 5, "token": "a", "prob": 0.123456789}]}]}
    r = call(guard, canned, "native-top-probs", 200, "application/json", json.dumps(top_probs).encode(), "/completion")
    assert r.status_code == 200 and DIGITS not in r.content


@pytest.mark.parametrize("name, body, field", [
    ("token-logprobs-beside-content", chat(), "choices[0].logprobs.token_logprobs"),
    ("raw-logprob", chat(dict(entry(), raw_logprob=MARKER)), "choices[0].logprobs.content[0].raw_logprob"),
    ("alt-logprob", chat(dict(entry(), alt={"logprob": MARKER})), "choices[0].logprobs.content[0].alt.logprob"),
    ("logprobs-in-message", {"choices": [{"index": 0, "message": {"content": "a", "logprobs": [MARKER]}}]},
     "choices[0].message.logprobs[0]"),
    ("usage-value", chat(usage={"prompt_tokens": 3, "prob": MARKER}), "usage.prob"),
    ("top-level-list", [chat()], "[0].choices[0].logprobs"),
    ("wrapped", {"data": chat()}, "data.choices[0].logprobs"),
    ("top-probs", {"top_probs": [{"token": "a", "prob": 0.123456789}]}, "top_probs[0].prob"),
])
def test_probabilities_under_other_names_or_shapes_are_refused_naming_the_field(guard, canned, name, body, field):
    if name == "token-logprobs-beside-content":
        body["choices"][0]["logprobs"]["token_logprobs"] = [MARKER]
    refused(call(guard, canned, name, 200, "application/json", json.dumps(body).encode()), field=field)


# ---------------------------------------------------------------- whatever the status

@pytest.mark.parametrize("status", [400, 422, 500])
def test_error_statuses_are_parsed_too(guard, canned, status):
    r = call(guard, canned, f"status-{status}", status, "application/json", json.dumps(chat()).encode())
    assert r.status_code == status and DIGITS not in r.content  # defended where known...
    assert r.json()["choices"][0]["logprobs"]["content"][0]["logprob"] == ROUNDED
    odd = {"error": {"message": "bad", "code": status}, "detail": {"logprob": MARKER}}
    refused(call(guard, canned, f"odd-{status}", status, "application/json", json.dumps(odd).encode()), status,
            "detail.logprob")  # ...refused elsewhere, the upstream's error status kept


# ---------------------------------------------------------------- encoding tricks

def test_escaped_keys_and_a_bom_are_read_as_any_client_reads_them(guard, canned):
    text = json.dumps(chat()).replace('"logprobs"', '"log\\u0070robs"').replace('"logprob"', '"l\\u006fgprob"')
    r = call(guard, canned, "escaped", 200, "application/json", b"\xef\xbb\xbf" + text.encode())
    assert r.status_code == 200 and DIGITS not in r.content
    assert r.json()["choices"][0]["logprobs"]["content"][0]["logprob"] == ROUNDED
    stream = b"\xef\xbb\xbf" + sse(chat(), "[DONE]")
    r = call(guard, canned, "bom-stream", 200, "text/event-stream", [stream])
    assert DIGITS not in r.content and json.loads(r.text.split("data: ")[1])["choices"][0]["logprobs"]["content"][0][
        "logprob"] == ROUNDED


def stream_events(r) -> list:
    out, data = [], []
    for line in r.text.split("\n"):
        if line.startswith("data: "):
            data.append(line[6:])
        elif not line and data:
            out.append("\n".join(data))
            data = []
    return [e if e == "[DONE]" else json.loads(e) for e in out]


@pytest.mark.parametrize("name, raw", [
    ("multi-line", "data: " + json.dumps(chat(), indent=1).replace("\n", "\ndata: ") + "\n\n"),
    ("crlf", "data: " + json.dumps(chat()) + "\r\n\r\n"),
    ("cr", "data: " + json.dumps(chat()) + "\r\r"),
    ("comment", f": {MARKER}\ndata: " + json.dumps(chat()) + "\n\n"),
    ("unknown-fields", f"id: {MARKER}\nretry: 123456789\nlogprob: {MARKER}\ndata: " + json.dumps(chat()) + "\n\n"),
    ("event-block", "event: message\ndata: " + json.dumps(chat()) + "\n\n"),
])
def test_sse_encodings_are_parsed_and_written_anew(guard, canned, name, raw):
    r = call(guard, canned, f"sse-{name}", 200, "text/event-stream", [raw.encode()[:7], raw.encode()[7:]])
    assert r.status_code == 200 and DIGITS not in r.content, r.text
    (event,) = stream_events(r)
    assert event["choices"][0]["logprobs"]["content"][0]["logprob"] == ROUNDED


@pytest.mark.parametrize("raw", [f"event: {MARKER}\ndata: {{}}\n\n",
                                 "event: x\ndata: " + json.dumps({"x": {"p": MARKER}}) + "\n\n",
                                 "data: not json\n\n"])
def test_stream_events_the_guard_cannot_read_stop_the_stream(guard, canned, raw):
    r = call(guard, canned, "sse-bad", 200, "text/event-stream", [raw.encode()])
    assert DIGITS not in r.content
    (event,) = stream_events(r)
    assert "could not defend" in event["error"]["message"]


# ---------------------------------------------------------------- every route

def test_streams_on_other_routes_are_parsed_and_defended(guard, canned):
    delta = {"type": "response.output_text.delta", "sequence_number": 3, "output_index": 0, "content_index": 0,
             "delta": "a", "logprobs": [entry()]}
    r = call(guard, canned, "responses-stream", 200, "text/event-stream",
             [b"event: response.output_text.delta\n" + sse(delta)], "/responses")
    assert r.status_code == 200 and DIGITS not in r.content and "event: response.output_text.delta" in r.text
    assert stream_events(r)[0]["logprobs"][0]["logprob"] == ROUNDED
    native = {"content": "a", "completion_probabilities": [{"content": "a", "probs": [{"tok_str": "a",
                                                                                        "prob": 0.123456789}]}]}
    r = call(guard, canned, "native-stream", 200, "text/event-stream", [sse(native)], "/completion")
    assert r.status_code == 200 and DIGITS not in r.content and stream_events(r)[0]["content"] == "a"


def test_a_body_without_numbers_off_the_allowlist_passes_on_any_route(guard, canned):
    card = {"object": "list", "data": [{"id": "m", "object": "model", "created": 1700000000, "owned_by": "vllm",
                                        "max_model_len": 8192, "permission": [{"allow_logprobs": True, "created": 1}]}]}
    r = call(guard, canned, "models", 200, "application/json", json.dumps(card).encode(), "/models", "GET")
    assert r.status_code == 200 and r.json() == card
    r = call(guard, canned, "health", 200, "application/json", b"", "/health", "GET")
    assert r.status_code == 200 and r.content == b""
    r = call(guard, canned, "openapi", 200, "application/json",
             json.dumps({"paths": {}, "components": {"default": 0.7}}).encode(), "/openapi.json", "GET")
    refused(r, field="components.default")


def test_passthrough_routes_are_relayed_unread_and_path_tricks_do_not_reach_them(guard, canned):
    metrics = f"vllm:requests 3\nlogprob {MARKER}\n".encode()
    r = call(guard, canned, "metrics", 200, "text/plain", metrics, "/v1/metrics", "GET")
    assert r.status_code == 200 and r.content == metrics
    for trick in ("/v1/metrics/.", "/v1/%6detrics", "/v1/metrics;x", "/v1/METRICS", "/v1/./metrics"):
        r = call(guard, canned, "metrics", 200, "text/plain", metrics, trick, "GET")
        refused(r, field="not valid JSON")
    for trick in ("/v1/chat/completions/.", "/v1/chat/%63ompletions", "/v1/chat/completions;x", "/v1/CHAT/completions"):
        r = call(guard, canned, "trick", 200, "application/json", json.dumps(chat()).encode(), trick)
        assert r.status_code == 200 and DIGITS not in r.content


# ---------------------------------------------------------------- strict JSON out

@pytest.mark.parametrize("raw", [b'{"choices": [], "x": Infinity}', b'{"choices": [], "created": 1e999}',
                                 b'{"choices": [{"index": 0, "logprobs": {"content": [{"token": "a", "logprob": NaN}]}}]}'])
def test_non_finite_numbers_are_refused_never_written(guard, canned, raw):
    r = call(guard, canned, "infinity", 200, "application/json", raw)
    out = json.loads(r.content, parse_constant=lambda c: pytest.fail(f"{c} in the guard's output"))
    assert r.status_code == 502 and ("not finite" in out["error"]["message"] or
                                     "is not a JSON number" in out["error"]["message"])


# ---------------------------------------------------------------- bounded work

def test_a_gzip_bomb_is_refused_past_the_decompressed_cap(guard, canned):
    import zlib

    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = comp.compress(b'{"x": "') + b"".join(comp.compress(b" " * 2**20) for _ in range(64)) + comp.flush()
    assert len(bomb) < 2**20  # 64 MB of JSON text in well under 1 MB on the wire
    r = call(guard, canned, "bomb", 200, "application/json", bomb, headers=[("content-encoding", "gzip")])
    assert r.status_code == 502 and "over 4 MB once decompressed" in r.json()["error"]["message"]
    small = gzip.compress(json.dumps(chat()).encode())
    r = call(guard, canned, "gzip", 200, "application/json", small, headers=[("content-encoding", "gzip")])
    assert r.status_code == 200 and r.json()["choices"][0]["logprobs"]["content"][0]["logprob"] == ROUNDED


def test_a_stream_over_the_cap_is_stopped(guard, canned):
    event = sse(chat(*[entry()] * 50))
    r = call(guard, canned, "long-stream", 200, "text/event-stream", [event] * (4 * 2**20 // len(event) + 2))
    events = stream_events(r)
    assert "over 4 MB" in events[-1]["error"]["message"] and DIGITS not in r.content


# ---------------------------------------------------------------- what held up, and must keep holding

@pytest.mark.parametrize("raw, fragment", [
    (b"<html>oops</html>", "not valid JSON"), (b'{"choices": [', "not valid JSON"),
    (json.dumps(chat(entry(value="-0.1"))).encode(), "is str, not a number"),
    (json.dumps(chat(entry(value=None))).encode(), "is NoneType, not a number"),
    (b'{"a": ' * 100_000 + b"1" + b"}" * 100_000, "too deeply"),
])
def test_malformed_bodies_and_odd_logprobs_are_refused(guard, canned, raw, fragment):
    r = call(guard, canned, "malformed", 200, "application/json", raw)
    refused(r, field=fragment)


def test_values_the_guard_knows_come_back_defended_in_every_format(guard, canned):
    legacy = {"object": "text_completion", "choices": [{"index": 0, "text": "ab", "logprobs": {
        "tokens": ["a", "b"], "token_logprobs": [None, MARKER], "text_offset": [0, 1],
        "top_logprobs": [None, {"b": MARKER, "c": MARKER - 1}]}}], "usage": {"prompt_tokens": 2}}
    r = call(guard, canned, "legacy", 200, "application/json", json.dumps(legacy).encode(), "/completions")
    lp = r.json()["choices"][0]["logprobs"]
    assert r.status_code == 200 and lp["token_logprobs"] == [None, ROUNDED] and lp["text_offset"] == [0, 1]
    assert lp["top_logprobs"] == [None, {"b": ROUNDED, "c": round(MARKER - 1, 1)}]
    r = call(guard, canned, "chat", 200, "application/json", json.dumps(chat(entry(), entry())).encode())
    body = r.json()
    assert r.status_code == 200 and set(values(body["choices"][0]["logprobs"])) <= {ROUNDED, round(MARKER - 1, 1), 97, 98}
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4} and body["created"] == 1


def test_an_upstream_that_closes_mid_body_is_a_502(guard, canned):
    r = call(guard, canned, "cut", 200, "application/json", json.dumps(chat()).encode()[:40],
             headers=[("content-length", "4000")])
    assert r.status_code == 502 and "broke off" in r.json()["error"]["message"] and DIGITS not in r.content
