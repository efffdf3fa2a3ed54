"""What `serve` implements and what it refuses: logit_bias against the model's own logits, every other
sampling field implemented or refused by name (hostile bodies generated), no server path in any error,
a pixel budget per request, and no key in an access log."""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import string
import time

import httpx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logitleak.serve.app import MAX_REQUEST_PIXELS, RunningServer, create_app
from logitleak.serve.engine import Engine
from logitleak.serve.schemas import NEUTRAL, ChatCompletionRequest
from logitleak.wire.accesslog import REDACTED, redact_text, redact_url

MODEL = "organism"
QUESTION = "what color is the object ?"


@pytest.fixture(scope="module")
def adapter(organism_adapter):
    return organism_adapter


@pytest.fixture(scope="module")
def server(organism_api):
    return organism_api


def post(server, body: dict | None = None, raw: bytes | None = None) -> httpx.Response:
    kw = {"content": raw, "headers": {"content-type": "application/json"}} if raw is not None else {"json": body}
    return httpx.post(server.url + "/chat/completions", timeout=120, **kw)


def text_body(**extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 1, **extra}


def own_logprobs(adapter) -> torch.Tensor:
    """The model's log-probabilities of the first answer token for QUESTION (white box, float32)."""
    enc = adapter.build_chat_inputs([[{"role": "user", "content": [{"type": "text", "text": QUESTION}]}]])
    with torch.no_grad():
        return torch.log_softmax(adapter.model(**enc).logits[0, -1].float(), -1)


def top(resp: httpx.Response) -> list[tuple[str, float]]:
    entry = resp.json()["choices"][0]["logprobs"]["content"][0]
    return [(t["token"], t["logprob"]) for t in entry["top_logprobs"]]


# ----------------------------------------------------------------------------- logit_bias

def test_logit_bias_shifts_the_returned_distribution_as_the_models_logits_say(server, adapter):
    """Biasing a token outside the top 5 by +b brings it into the list with exactly the
    log-probability of log_softmax(z + b e_t); the logit-bias attack then recovers its unbiased
    log-probability and its logit gap to the top token."""
    lp = own_logprobs(adapter)
    order = torch.argsort(lp, descending=True)
    t, top1 = int(order[40]), int(order[0])
    b = 12.0
    z = torch.log_softmax(lp.double(), -1)
    biased = z.clone()
    biased[t] += b
    biased = torch.log_softmax(biased, -1)
    r = post(server, text_body(logprobs=True, top_logprobs=5, logit_bias={str(t): b}))
    assert r.status_code == 200, r.text
    got = top(r)
    table = server.engine.tokens
    want = torch.topk(biased, 5)
    assert [tok for tok, _ in got] == [table(int(i))[0] for i in want.indices]
    assert max(abs(v - float(w)) for (_, v), w in zip(got, want.values)) < 2e-5
    # the attack: p_b = p e^b / (1 - p + p e^b)  =>  p = p_b / (e^b (1 - p_b) + p_b)
    pb = math.exp(dict(got)[table(t)[0]])
    recovered = math.log(pb / (math.exp(b) * (1 - pb) + pb))
    assert abs(recovered - float(lp[t])) < 1e-4
    gap = dict(got)[table(t)[0]] - dict(got)[table(top1)[0]] - b
    assert abs(gap - float(lp[t] - lp[top1])) < 1e-4


def test_logit_bias_steers_generation_and_is_per_request(server, adapter):
    lp = own_logprobs(adapter)
    target = int(torch.argsort(lp, descending=True)[30])
    word = server.engine.tokens(target)[0]
    steered = post(server, text_body(logit_bias={str(target): 100}, logprobs=True, top_logprobs=1))
    plain = post(server, text_body(logprobs=True, top_logprobs=1))
    assert steered.json()["choices"][0]["logprobs"]["content"][0]["token"] == word
    assert plain.json()["choices"][0]["logprobs"]["content"][0]["token"] != word
    assert abs(plain.json()["choices"][0]["logprobs"]["content"][0]["logprob"] - float(lp.max())) < 1e-5


@pytest.mark.parametrize("bias, fragment", [
    ({"abc": 1}, "'abc' is not a token id"),
    ({"-3": 1}, "'-3' is not a token id"),
    ({"5": 150}, "outside -100..100"),
    ({"99999999": 1}, "token id 99999999, outside this model's vocabulary"),
    ({str(i): 1 for i in range(301)}, "at most 300 token ids"),
])
def test_bad_logit_bias_is_a_400_naming_it(server, bias, fragment):
    r = post(server, text_body(logit_bias=bias))
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]["message"] and "logit_bias" in r.json()["error"]["message"]


# ----------------------------------------------------------------------------- fields it does not implement

@pytest.mark.parametrize("field, value", [
    ("echo", True), ("best_of", 3), ("presence_penalty", 0.5), ("frequency_penalty", -1.0),
    ("repetition_penalty", 1.3), ("top_k", 5), ("min_p", 0.1), ("stream_options", {"include_usage": True}),
    ("tools", [{"type": "function", "function": {"name": "f"}}]), ("tool_choice", "required"),
    ("response_format", {"type": "json_object"}), ("store", True), ("reasoning_effort", "high"),
    ("audio", {"voice": "alloy"}), ("modalities", ["text", "audio"]),
])
def test_a_field_it_does_not_implement_is_refused_by_name(server, field, value):
    r = post(server, text_body(**{field: value}))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field and f"does not implement {field}=" in err["message"], err


@pytest.mark.parametrize("field, value", [
    ("echo", False), ("best_of", 1), ("presence_penalty", 0), ("frequency_penalty", 0.0), ("top_k", -1),
    ("user", "alice"), ("metadata", {"run": "1"}), ("response_format", {"type": "text"}), ("tools", []),
    ("parallel_tool_calls", False), ("service_tier", "auto"), ("stream_options", None),
])
def test_a_neutral_value_changes_nothing_and_is_answered(server, field, value):
    base = post(server, text_body(logprobs=True, top_logprobs=3))
    r = post(server, text_body(logprobs=True, top_logprobs=3, **{field: value}))
    assert r.status_code == 200, r.text
    assert top(r) == top(base)


IMPLEMENTED = set(ChatCompletionRequest.model_fields) | set(NEUTRAL)
FIELD = st.text(string.ascii_letters + string.digits + "_-.", min_size=1, max_size=24).filter(lambda f: f not in IMPLEMENTED)
JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(max_size=20), lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=FIELD, value=JSON)
def test_an_unknown_field_is_never_ignored(server, field, value):
    r = post(server, text_body(**{field: value}))
    assert r.status_code == 400, r.text
    assert repr(field[:40]) in r.json()["error"]["message"] and r.json()["error"]["param"] == field


# ----------------------------------------------------------------------------- no server path in any error

SURROGATES = st.integers(0xD800, 0xDFFF).map(chr)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.text(max_size=10), lone=SURROGATES, where=st.sampled_from(["content", "system", "stop", "model", "key"]))
def test_a_lone_surrogate_is_a_400_naming_where_with_no_server_path(server, organism_dir, prefix, lone, where):
    text = prefix + lone
    body = text_body()
    if where == "content":
        body["messages"][0]["content"] = text
    elif where == "system":
        body["messages"].insert(0, {"role": "system", "content": text})
    elif where == "stop":
        body["stop"] = [text]
    elif where == "model":
        body["model"] = text
    else:
        body["metadata"] = {text: 1}
    raw = json.dumps(body, ensure_ascii=True).encode()  # \\udXXX escapes: valid JSON, invalid Unicode
    r = post(server, raw=raw)
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert "lone UTF-16 surrogate" in message
    assert str(organism_dir) not in r.text and "/root" not in r.text and ".cache" not in r.text


@pytest.mark.parametrize("content", [
    "<image> what color is the object ?",                # the image placeholder without an image
    "x" * 9000,                                          # over the organism's context in characters
    " ".join(["color"] * 400),                           # over its context in tokens
])
def test_refusals_carry_no_server_path(server, organism_dir, content):
    r = post(server, {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 1})
    assert r.status_code == 400, r.text
    assert str(organism_dir) not in r.text and "/root" not in r.text


def test_public_message_hides_paths_and_the_model_folder():
    from logitleak.serve.requests import public_message

    text = "The processor of '/srv/models/org-v1' rejected the batch (see /usr/lib/python3.11/x.py); check it."
    out = public_message(text, "/srv/models/org-v1")
    assert out == "The processor of the model rejected the batch (see <path>); check it."
    assert public_message("k=5 is over 3 and 1/2", "") == "k=5 is over 3 and 1/2"


# ----------------------------------------------------------------------------- pixels per request

def png(width: int, height: int) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_images_over_the_request_pixel_budget_are_refused_before_decoding(server):
    big = png(3000, 3000)  # 9 MP each: the second one goes over the request's 16.8 MP
    parts = [{"type": "image_url", "image_url": {"url": big}} for _ in range(8)] + [{"type": "text", "text": QUESTION}]
    t0 = time.process_time()
    r = post(server, {"model": MODEL, "messages": [{"role": "user", "content": parts}], "max_tokens": 1})
    cpu = time.process_time() - t0
    assert r.status_code == 400, r.text
    assert f"more than {MAX_REQUEST_PIXELS} pixels in all (image 2, 3000x3000, goes over" in r.json()["error"]["message"]
    assert r.json()["error"]["code"] == "image_too_large"
    assert cpu < 5  # (this process: the client; the server decoded one image, not eight)


# ----------------------------------------------------------------------------- keys in access logs

KEY = st.builds(lambda p, body: p + body, st.sampled_from(["sk-", "sk-proj-", "sk_live_", "hf_", "gsk_", "xai-", "ghp_"]),
                st.text(string.ascii_letters + string.digits + "_-", min_size=12, max_size=48))


@settings(max_examples=200, deadline=None)
@given(key=KEY, param=st.text(string.ascii_lowercase, min_size=1, max_size=8), encode=st.booleans())
def test_a_key_anywhere_in_a_url_is_redacted(key, param, encode):
    from urllib.parse import quote

    seg = quote(key, safe="") if encode else key
    for path in (f"/v1/models/{seg}", f"/v1/{seg}/chat/completions", f"/v1/models?{param}={seg}"):
        out = redact_url(path)
        assert key not in out and seg not in out and REDACTED in out, (path, out)
        assert key not in redact_text(f'GET http://127.0.0.1:8000{path} "HTTP/1.1 200 OK"')


def test_model_names_and_routes_are_left_alone():
    for path in ("/v1/models/Qwen2.5-VL-7B-Instruct", "/v1/models/meta-llama/Llama-3.2-11B-Vision-Instruct",
                 "/v1/chat/completions", "/v1/models/smollm2", "/v1/models?page=2"):
        assert redact_url(path) == path


def test_access_log_redacts_a_key_in_the_path_and_the_servers_own_key(adapter, one_thread, capfd, caplog):
    caplog.set_level(logging.INFO)
    engine = Engine(adapter, threads=1)
    app = create_app(engine, served_model_name=MODEL)
    with RunningServer(app, access_log=True, log_level="info", log_secrets=("own-secret-value-1",)) as srv:
        httpx.get(srv.url + "/models/sk-live-0123456789abcdef")
        httpx.get(srv.url + "/models/own-secret-value-1")
    out = capfd.readouterr()
    logs = "\n".join(r.getMessage() for r in caplog.records if r.name != "httpx") + out.out + out.err
    assert "GET /v1/models/[redacted]" in logs
    assert "sk-live-0123456789abcdef" not in logs and "own-secret-value-1" not in logs


def test_the_log_filter_redacts_url_objects_and_keeps_numbers():
    from logitleak.wire.accesslog import RedactKeysFilter

    record = logging.LogRecord("httpx", logging.INFO, __file__, 1, 'HTTP Request: %s %s "%s %d %s"',
                               ("GET", httpx.URL("http://h:1/v1/models/sk-abcdefgh12345678?key=k1&x=2"), "HTTP/1.1",
                                200, "OK"), None)
    RedactKeysFilter(secrets=("k1",)).filter(record)
    assert record.getMessage() == 'HTTP Request: GET http://h:1/v1/models/[redacted]?key=[redacted]&x=2 "HTTP/1.1 200 OK"'
