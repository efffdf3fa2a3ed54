"""The guard: an OpenAI-compatible proxy that defends any upstream's logprobs, tested against
``logitleak serve`` (the organism) and small fake upstreams (streams, odd shapes)."""

from __future__ import annotations

import base64
import io
import json
import logging

import httpx
import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from openai import OpenAI
from servers import organism_server

from logitleak.data.shapes import make_shapes
from logitleak.defenses.spec import parse_single_defense
from logitleak.errors import LogitleakError
from logitleak.guard.app import create_guard_app
from logitleak.guard.allowlist import UndefendedLogprobs
from logitleak.guard.defender import ResponseDefender
from logitleak.guard.document import defend_document
from logitleak.serve.app import RunningServer, create_app, free_port
from logitleak.serve.engine import Engine

MODEL = "organism"


def guard_for(upstream_url: str, spec: str | None, **kw) -> RunningServer:
    return RunningServer(create_guard_app(upstream_url, parse_single_defense(spec), secret=1, **kw))


@pytest.fixture(scope="module")
def adapter(organism_dir):
    from logitleak.models.loading import load_model

    return load_model(organism_dir, device="cpu")


@pytest.fixture(scope="module")
def upstream(adapter, one_thread):
    """The project's own server, undefended, with an API key."""
    with organism_server(adapter, served_model_name=MODEL, api_key="up-key") as srv:
        yield srv


@pytest.fixture(scope="module")
def shapes():
    return make_shapes(8, questions="all", seed=3)


def image_messages(image, prompt: str) -> list[dict]:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": prompt}]}]


def ask(url: str, msgs, key="up-key", **kw):
    client = OpenAI(base_url=url, api_key=key, max_retries=0, timeout=60)
    return client.chat.completions.create(model=MODEL, messages=msgs, logprobs=True, top_logprobs=5, **kw)


# ----------------------------------------------------------------------------- the defender alone

def chat_entry(values, tokens=None, chosen=0):
    tokens = tokens or [f"t{i}" for i in range(len(values))]
    return {"token": tokens[chosen], "logprob": values[chosen], "bytes": list(tokens[chosen].encode()),
            "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in zip(tokens, values)]}


def chat_body(*entries):
    return {"object": "chat.completion", "choices": [{"index": 0, "message": {"content": "x"},
                                                      "logprobs": {"content": list(entries), "refusal": None}}]}


def test_defender_rounds_truncates_and_redacts():
    values = [-0.123, -1.456, -2.789, -3.01]
    body = chat_body(chat_entry(values), chat_entry(values, chosen=2))
    defend_document(body, ResponseDefender(parse_single_defense("round:1+topk:2")), b"req")
    first, second = body["choices"][0]["logprobs"]["content"]
    assert [a["logprob"] for a in first["top_logprobs"]] == [-0.1, -1.5]
    assert [a["token"] for a in first["top_logprobs"]] == ["t0", "t1"]
    assert first["top_logprobs"][1]["bytes"] == list(b"t1")
    assert first["logprob"] == -0.1 and second["logprob"] == -2.8  # the generated token: the same transform
    body = chat_body(chat_entry(values))
    defend_document(body, ResponseDefender(parse_single_defense("values_only")), b"req")
    entry = body["choices"][0]["logprobs"]["content"][0]
    assert {a["token"] for a in entry["top_logprobs"]} == {"<hidden>"} and all(a["bytes"] is None for a in entry["top_logprobs"])
    assert [a["logprob"] for a in entry["top_logprobs"]] == values and entry["token"] == "t0"
    body = chat_body(chat_entry(values))
    defend_document(body, ResponseDefender(parse_single_defense("ranks_only")), b"req")
    entry = body["choices"][0]["logprobs"]["content"][0]
    assert [a["token"] for a in entry["top_logprobs"]] == ["t0", "t1", "t2", "t3"]
    assert {a["logprob"] for a in entry["top_logprobs"]} == {-9999.0} and entry["logprob"] == -9999.0


def test_defender_noise_is_seeded_by_the_request_and_keeps_order():
    values = [-0.5, -0.9, -1.2, -4.0, -6.0]
    d = ResponseDefender(parse_single_defense("gauss:1"), secret=5)

    def noisy(key: bytes):
        body = chat_body(chat_entry(values, chosen=1))
        defend_document(body, d, key)
        return body["choices"][0]["logprobs"]["content"][0]

    a, b, c = noisy(b"one"), noisy(b"one"), noisy(b"two")
    assert a == b and a != c  # repeating a request cannot average the noise away
    listed = [t["logprob"] for t in a["top_logprobs"]]
    assert listed == sorted(listed, reverse=True) and all(v <= 0 for v in listed)
    assert a["logprob"] == next(t["logprob"] for t in a["top_logprobs"] if t["token"] == "t1")


def test_defender_legacy_completions_and_unknown_shapes():
    body = {"object": "text_completion", "choices": [{"index": 0, "text": "ab", "logprobs": {
        "tokens": ["a", "b"], "token_logprobs": [-0.26, -1.04], "text_offset": [0, 1],
        "top_logprobs": [{"a": -0.26, "c": -1.81}, {"b": -1.04, "d": -1.2}]}}]}
    defend_document(body, ResponseDefender(parse_single_defense("round:1")), b"r")
    lp = body["choices"][0]["logprobs"]
    assert lp["token_logprobs"] == [-0.3, -1.0] and lp["top_logprobs"] == [{"a": -0.3, "c": -1.8}, {"b": -1.0, "d": -1.2}]
    assert lp["tokens"] == ["a", "b"] and lp["text_offset"] == [0, 1]
    with pytest.raises(UndefendedLogprobs):
        defend_document({"choices": [{"logprobs": {"probs": [0.1]}}]}, ResponseDefender(parse_single_defense("round:1")), b"r")
    with pytest.raises(LogitleakError, match="full distribution"):
        ResponseDefender(parse_single_defense("temperature:2"))


# ----------------------------------------------------------------------------- in front of `serve`

def test_guard_equals_the_server_applying_the_same_defence(upstream, adapter, shapes, one_thread):
    """round and topk are deterministic: guard(round:1+topk:3) over an undefended server returns
    what serve --defense round:1+topk:3 returns itself."""
    spec = "round:1+topk:3"
    engine = Engine(adapter, defense=parse_single_defense(spec), threads=1)
    with RunningServer(create_app(engine, served_model_name=MODEL)) as direct, guard_for(upstream.url, spec) as g:
        for i in range(4):
            msgs = image_messages(shapes.images[i], shapes.prompts[i])
            via = ask(g.url, msgs, max_tokens=2).choices[0]
            ref = ask(direct.url, msgs, max_tokens=2).choices[0]
            assert via.message.content == ref.message.content
            for a, b in zip(via.logprobs.content, ref.logprobs.content):
                assert (a.token, a.logprob) == (b.token, b.logprob)
                assert [(t.token, t.logprob) for t in a.top_logprobs] == [(t.token, t.logprob) for t in b.top_logprobs]
                assert len(a.top_logprobs) == 3


def test_guard_passes_everything_else_through(upstream, shapes):
    with guard_for(upstream.url, "gauss:0.5") as g:
        direct = httpx.get(upstream.url + "/models", headers={"authorization": "Bearer up-key"}).json()
        via = httpx.get(g.url + "/models", headers={"authorization": "Bearer up-key"})
        assert via.status_code == 200 and via.json()["data"][0]["id"] == direct["data"][0]["id"] == MODEL
        # The key is forwarded: without it the upstream's own 401 comes back, unchanged.
        with pytest.raises(openai.AuthenticationError) as exc:
            ask(g.url, [{"role": "user", "content": "what color is the object ?"}], key="wrong", max_tokens=1)
        assert "API key" in exc.value.body["message"]
        # The upstream's 400s (a request the client got wrong) pass through as 400s, deep JSON included.
        deep = b'{"model": "organism", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        r = httpx.post(g.url + "/chat/completions", content=deep, headers={"authorization": "Bearer up-key",
                                                                          "content-type": "application/json"})
        assert r.status_code == 400 and "nests" in r.json()["error"]["message"]
        resp = ask(g.url, image_messages(shapes.images[0], shapes.prompts[0]), max_tokens=1)
        ref = ask(upstream.url, image_messages(shapes.images[0], shapes.prompts[0]), max_tokens=1)
        assert resp.choices[0].message.content == ref.choices[0].message.content
        assert resp.usage == ref.usage and resp.model == ref.model
        noisy = [t.logprob for t in resp.choices[0].logprobs.content[0].top_logprobs]
        clean = [t.logprob for t in ref.choices[0].logprobs.content[0].top_logprobs]
        assert noisy != clean and len(noisy) == len(clean) == 5


def test_guard_never_logs_keys(upstream, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    with RunningServer(create_guard_app(upstream.url, parse_single_defense("round:1")), access_log=True,
                       log_level="info") as g:
        httpx.get(g.url + "/models?api_key=sk-query-secret&x=1", headers={"authorization": "Bearer sk-header-secret"})
    out = capfd.readouterr()
    logs = caplog.text + out.out + out.err
    assert "GET /v1/models?api_key=" in logs and "x=1" in logs  # the request was logged...
    assert "sk-query-secret" not in logs and "sk-header-secret" not in logs  # ...without its keys


def test_unreachable_upstream_is_a_502_with_a_message():
    with guard_for(f"http://127.0.0.1:{free_port()}/v1", "round:1") as g:
        r = httpx.post(g.url + "/chat/completions", json={"model": MODEL, "messages": []})
    assert r.status_code == 502 and "could not reach the upstream" in r.json()["error"]["message"]


@pytest.mark.parametrize("url", ["ftp://x/v1", "127.0.0.1:8000", "http://h:99999/v1", "http://h/v1?key=1"])
def test_bad_upstream_urls_are_refused(url):
    with pytest.raises(LogitleakError, match="Upstream"):
        create_guard_app(url, parse_single_defense("round:1"))


# ----------------------------------------------------------------------------- fake upstreams

def fake_upstream(chunks=None, body=None, path_body=None) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req = await request.json()
        if req.get("stream"):
            async def events():
                for c in chunks:
                    yield f"data: {json.dumps(c)}\n\n"
                yield "data: [DONE]\n\n"
            return StreamingResponse(events(), media_type="text/event-stream")
        return JSONResponse(body)

    @app.get("/v1/other")
    async def other():
        return JSONResponse(path_body)

    return app


def chunk(i, values, tokens):
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": tokens[0]}, "finish_reason": None,
                         "logprobs": {"content": [chat_entry(values, tokens)]}}]}


def test_streamed_logprobs_are_defended_chunk_by_chunk():
    chunks = [chunk(i, [-0.123 - i, -1.456 - i, -2.2 - i], [f"w{i}", "x", "y"]) for i in range(4)]
    with RunningServer(fake_upstream(chunks=chunks)) as up, guard_for(up.url, "round:1+topk:2") as g:
        client = OpenAI(base_url=g.url, api_key="k", max_retries=0)
        got = list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                  stream=True, logprobs=True, top_logprobs=3))
    assert len(got) == 4
    for i, c in enumerate(got):
        entry = c.choices[0].logprobs.content[0]
        assert c.choices[0].delta.content == f"w{i}" and c.id == "c1"  # everything else unchanged
        assert [t.logprob for t in entry.top_logprobs] == [round(-0.123 - i, 1), round(-1.456 - i, 1)]
        assert entry.logprob == round(-0.123 - i, 1) and entry.token == f"w{i}"


def test_logprobs_the_guard_cannot_defend_are_refused():
    odd = {"choices": [{"index": 0, "logprobs": {"probs": [0.5]}}]}
    with RunningServer(fake_upstream(body=odd, path_body={"logprobs": [-0.1]})) as up, guard_for(up.url, "round:1") as g:
        r = httpx.post(g.url + "/chat/completions", json={"model": "m", "messages": []})
        assert r.status_code == 502 and "cannot defend" in r.json()["error"]["message"]
        r = httpx.get(g.url + "/other")
        assert r.status_code == 502 and "/v1/other" in r.json()["error"]["message"]


# ----------------------------------------------------------------------------- what the guard buys

def test_audit_through_the_guard_matches_the_defend_row(upstream, organism_dir, tmp_path, one_thread, monkeypatch):
    """`audit --endpoint` through guard(gauss:2) in front of an undefended `serve` reads the same
    leakage as `defend`'s gauss:2 row (within the two intervals), and clearly less than the
    undefended endpoint where the defence bites."""
    from logitleak.audit import run_audit
    from logitleak.config import make_config
    from logitleak.defend import run_defend
    from logitleak.defenses.spec import parse_defenses

    monkeypatch.setenv("UP_KEY", "up-key")
    spec = "gauss:2"
    common = {"data": "shapes", "task": "color", "k": [5], "samples": 400, "seed": 0, "device": "cpu",
              "probes": {"families": ["linear"], "folds": 3, "permutations": 0, "bootstrap": 200}}
    d = run_defend(make_config({**common, "model": str(organism_dir), "out": str(tmp_path / "d")}),
                   parse_defenses(f"none;{spec}"), progress=False).tradeoff
    d = d[d.level.isin(["topk_logprobs", "topk_ids"])]
    with guard_for(upstream.url, spec) as g:
        via = run_audit(make_config({**common, "endpoint": g.url, "served_model": MODEL, "api_key_env": "UP_KEY",
                                     "levels": ["topk_logprobs", "topk_ids"], "out": str(tmp_path / "g")}),
                        progress=False)
    assert via.problems == []
    key = ["level", "k", "attribute", "probe"]
    b = via.results.set_index(key).sort_index()
    rows = d[d.defense_label == spec].set_index(key).sort_index()
    plain = d[d.defense_label == "none"].set_index(key).sort_index()
    assert len(rows) > 0 and set(rows.index) <= set(b.index)  # every defend row has its endpoint reading

    def score(r, idx):  # a class attribute's accuracy or a numeric one's R², with its interval
        numeric = "target" in r.columns and r.loc[idx, "target"] == "numeric"
        cols = ("r2", "r2_ci_low", "r2_ci_high") if numeric else ("accuracy", "ci_low", "ci_high")
        return tuple(float(r.loc[idx, c]) for c in cols)

    bites = 0
    for idx in rows.index:
        (a_d, lo_d, hi_d), (a_g, lo_g, hi_g), (_, lo_p, _) = score(rows, idx), score(b, idx), score(plain, idx)
        assert abs(a_d - a_g) <= (hi_d - lo_d) / 2 + (hi_g - lo_g) / 2 + 1e-9, (idx, a_d, a_g)
        bites += lo_p > hi_g
    assert bites >= 1  # the defence measurably changed what the endpoint leaks


def test_each_choice_and_each_stream_chunk_gets_its_own_noise():
    values = [-0.5, -0.9, -1.2]
    d = ResponseDefender(parse_single_defense("gauss:1"), secret=2)
    body = {"choices": [{"index": i, "logprobs": {"content": [chat_entry(values)]}} for i in range(2)]}
    defend_document(body, d, b"req")
    a, b = (c["logprobs"]["content"][0]["top_logprobs"] for c in body["choices"])
    assert [t["logprob"] for t in a] != [t["logprob"] for t in b]
    offsets: dict[int, int] = {}
    seen = []
    for _ in range(2):  # the same chunk twice in one stream: the token position changes the seed
        c = {"choices": [{"index": 0, "logprobs": {"content": [chat_entry(values)]}}]}
        defend_document(c, d, b"req", offsets)
        seen.append([t["logprob"] for t in c["choices"][0]["logprobs"]["content"][0]["top_logprobs"]])
    assert seen[0] != seen[1] and offsets == {0: 2}


def test_a_stream_chunk_the_guard_cannot_defend_stops_the_stream():
    good = chunk(0, [-0.1, -1.0], ["a", "b"])
    odd = {"object": "chat.completion.chunk", "choices": [{"index": 0, "logprobs": {"probs": [0.2]}}]}
    with RunningServer(fake_upstream(chunks=[good, odd, good])) as up, guard_for(up.url, "round:0") as g:
        r = httpx.post(g.url + "/chat/completions", json={"model": "m", "messages": [], "stream": True})
    events = [line[5:].strip() for line in r.text.splitlines() if line.startswith("data:")]
    assert json.loads(events[0])["choices"][0]["logprobs"]["content"][0]["logprob"] == -0.0
    assert "could not defend" in json.loads(events[1])["error"]["message"]
    assert len(events) == 2  # nothing after it, the undefended chunk included


@pytest.mark.parametrize("args, fragment", [
    (["--upstream", "ftp://x/v1", "--defense", "round:1"], "not an http(s) URL"),
    (["--upstream", "http://[::1/v1", "--defense", "round:1"], "not a valid URL"),
    (["--upstream", "http://127.0.0.1:9/v1", "--defense", "temperature:2"], "full distribution"),
    (["--upstream", "http://127.0.0.1:9/v1", "--defense", "leace:2"], "inside the model"),
    (["--upstream", "http://127.0.0.1:9/v1", "--defense", "round:1,2"], "expands to 2 settings"),
    (["--upstream", "http://127.0.0.1:9/v1", "--defense", "wobble:1"], "Unknown defence"),
    (["--upstream", "http://127.0.0.1:9/v1", "--port", "70000"], "Port 70000"),
    (["--upstream", "http://127.0.0.1:9/v1", "--host", "999.1.1.1"], "Cannot listen on --host"),
    (["--upstream", "http://127.0.0.1:9/v1", "--passthrough", "/v1/chat/completions"], "returns log-probabilities"),
    (["--upstream", "http://127.0.0.1:9/v1", "--passthrough", "/v1/%6detrics"], "is not a plain path"),
    (["--upstream", "http://127.0.0.1:9/v1", "--passthrough", "/v1/../completion"], "is not a plain path"),
])
def test_guard_cli_refuses_bad_input_in_one_sentence(args, fragment):
    from typer.testing import CliRunner

    from logitleak.cli import app

    result = CliRunner().invoke(app, ["guard", *args])
    assert isinstance(result.exception, LogitleakError), result.output
    assert fragment in str(result.exception)


def test_serve_cli_refuses_a_port_in_use():
    import socket

    from typer.testing import CliRunner

    from logitleak.cli import app

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", "--port", str(port)])
    assert isinstance(result.exception, LogitleakError) and "already in use" in str(result.exception)


# ----------------------------------------------------------------------------- a proxy, not a client

class RecordingUpstream:
    """A raw ASGI upstream that records every request it gets and answers with fixed bytes,
    setting a cookie and repeating a header (what a proxy must neither keep nor collapse)."""

    BODY = b'{"id": "x",   "choices": [{"index": 0, "message": {"content": "hi"}}]}'  # odd spacing: not what comes out

    def __init__(self):
        self.seen: list[dict] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        more = True
        while more:
            msg = await receive()
            more = msg.get("more_body", False)
        self.seen.append({"raw_path": scope.get("raw_path"), "query": scope.get("query_string"),
                          "headers": [(k.decode(), v.decode()) for k, v in scope["headers"]]})
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"set-cookie", b"session=user-one"),
            (b"x-upstream", b"a"), (b"x-upstream", b"b")]})
        await send({"type": "http.response.body", "body": self.BODY})


def test_guard_forwards_requests_exactly_and_keeps_no_cookies_between_users():
    rec = RecordingUpstream()
    with RunningServer(rec) as up, guard_for(up.url, "round:1") as g:
        first = httpx.post(g.url + "/chat/completions", content=b"{}", headers={"x-user": "one"})
        second = httpx.post(g.url + "/chat/completions", content=b"{}", headers={"x-user": "two"})
        odd = httpx.get(g.url.replace("/v1", "") + "/v1/files/a%2Fb%20c?q=%41&x=1", headers={"x-user": "three"})
    # the body is parsed and written anew (never the upstream's bytes), its content unchanged
    assert first.content == second.content == odd.content != RecordingUpstream.BODY
    assert json.loads(first.content) == json.loads(RecordingUpstream.BODY)
    # repeated response headers are all passed on, and the cookie reaches the client that got it...
    assert first.headers.get_list("x-upstream") == ["a", "b"] and "session=user-one" in first.headers["set-cookie"]
    # ...but is never replayed by the guard on another user's request
    assert [dict(s["headers"]).get("x-user") for s in rec.seen] == ["one", "two", "three"]
    assert all("cookie" not in dict(s["headers"]) for s in rec.seen)
    # the guard adds no header of its own (user agent, accept, content type) and passes the path as encoded
    sent = [dict(s["headers"]) for s in rec.seen]
    assert all(h.get("user-agent", "").startswith("python-httpx") for h in sent)  # the caller's own
    assert "content-type" not in sent[2] and sent[2].get("accept-encoding") == "identity"
    assert rec.seen[2]["raw_path"] == b"/v1/files/a%2Fb%20c" and rec.seen[2]["query"] == b"q=%41&x=1"


def test_a_slow_upstream_is_a_504_and_a_broken_stream_an_error_event():
    import asyncio

    async def slow(scope, receive, send):
        if scope["type"] != "http":
            return
        await receive()
        if scope["path"].endswith("/chat/completions"):
            await asyncio.sleep(3)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        chunk_ = json.dumps(chunk(0, [-0.1, -1.0], ["a", "b"]))
        await send({"type": "http.response.body", "body": f"data: {chunk_}\n\n".encode(), "more_body": True})
        await asyncio.sleep(3)  # then silence: the guard's read timeout ends the stream
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    with RunningServer(slow) as up, guard_for(up.url, "round:1", timeout_s=0.5) as g:
        r = httpx.post(g.url + "/chat/completions", json={"model": "m", "messages": []}, timeout=30)
        assert r.status_code == 504 and "did not answer within 0.5 s" in r.json()["error"]["message"]
        r = httpx.post(g.url + "/completions", json={"model": "m", "prompt": "x", "stream": True}, timeout=30)
    events = [line[5:].strip() for line in r.text.splitlines() if line.startswith("data:")]
    assert json.loads(events[0])["choices"][0]["logprobs"]["content"][0]["logprob"] == -0.1   # defended (round:1)
    assert "broke off" in json.loads(events[-1])["error"]["message"] and "[DONE]" not in events
