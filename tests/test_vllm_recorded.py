"""A real vLLM's answers to an audit, replayed: recorded by benchmarks/record_vllm_audit.py from vLLM 0.32
(CPU, float32) serving the SmolLM2 folder logitleak converts, once as started by default and once with
--return-tokens-as-token-ids, for the exact requests `audit --endpoint` sends on `personas`.

Without the flag the audit stops and says, in one sentence, to restart vLLM with it (byte-fragment
tokens come back as "" with no bytes, so different tokens cannot be told apart); restarted with it,
the rerun asks every answer again once and its token ids, response positions and values are the
white-box capture's (vLLM's stop-token entry dropped, as the white-box side has no such position)."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from logitleak.config import make_config
from logitleak.data.loading import load_probe_set
from logitleak.endpoint.cache import request_messages
from logitleak.endpoint.capture import blackbox_capture
from logitleak.endpoint.client import RetryPolicy
from logitleak.endpoint.responses import token_id_of
from logitleak.errors import LogitleakError
from logitleak.serve.app import RunningServer, free_port

pytest.importorskip("gguf", reason="the real-model extra is not installed (the white-box side is SmolLM2)")

FIXTURES = Path(__file__).parent / "fixtures" / "recorded" / "vllm_audit"
FAST = RetryPolicy(attempts=2, backoff_s=0.01, max_backoff_s=0.05, connect_patience_s=1.0, timeout_s=30)
G, K = 4, 20


def recorded(name: str) -> dict:
    with gzip.open(FIXTURES / f"{name}.json.gz", "rt", encoding="utf-8") as fh:
        return json.load(fh)


PLAIN, IDS = recorded("plain"), recorded("token_ids")


def replay(rec: dict) -> tuple[FastAPI, Counter]:
    """vLLM as recorded: its /v1/models, and its answer to each recorded request (404 otherwise)."""
    answers = {json.dumps(a["messages"], sort_keys=True): a["response"] for a in rec["answers"]}
    settings = rec["settings"]
    app, calls = FastAPI(), Counter()

    @app.get("/v1/models")
    async def models():
        return JSONResponse(rec["models"])

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        key = json.dumps(body.get("messages"), sort_keys=True)
        same = all(body.get(k) == v for k, v in settings.items()) and body.get("model") == "smollm2"
        if key not in answers or not same:
            return JSONResponse({"error": {"message": "not recorded", "type": "NotFoundError"}}, status_code=404)
        calls[key] += 1
        return JSONResponse(answers[key])

    return app, calls


@pytest.fixture(scope="module")
def probeset():
    ps = load_probe_set(make_config(PLAIN["probeset"]))
    assert [request_messages(ps, i) for i in range(len(ps))] == [a["messages"] for a in PLAIN["answers"]]
    return ps


def config(url: str, **extra):
    return make_config({**PLAIN["probeset"], "endpoint": url, "served_model": "smollm2", "k": [1, 5, K],
                        "generate": G, **extra})


@pytest.fixture(scope="module")
def white(probeset, one_thread):
    """The white-box --generate capture of the same prompts through the same converted folder."""
    from logitleak.capture.forward import capture
    from logitleak.models.loading import load_model
    from logitleak.models.resolve import resolve_model

    adapter = load_model(resolve_model("smollm2", progress=False), device="cpu", dtype="float32")
    return capture(adapter, probeset, batch_size=25, progress=False, generate=G, gen_k=K)


def expected_unidentified(rec: dict) -> tuple[int, int, int]:
    """Counted straight from the recording: alternatives printed "" with no bytes among those the
    audit reads (the first token's top 20, and each response position's, the stop entry left out)."""
    total = samples = top1 = 0
    for a in rec["answers"]:
        choice = a["response"]["choices"][0]
        entries = choice["logprobs"]["content"]
        if choice["finish_reason"] == "stop":
            entries = entries[:-1] or entries[:1]
        n = sum(t["token"] == "" and not t["bytes"] for e in entries[:G] for t in e["top_logprobs"])
        total, samples = total + n, samples + (n > 0)
        top1 += choice["logprobs"]["content"][0]["top_logprobs"][0]["token"] == ""
    return total, samples, top1


def test_the_recordings_show_what_the_issue_measured():
    assert PLAIN["vllm"] == IDS["vllm"] == "0.32.0" and "--return-tokens-as-token-ids" in IDS["args"]
    blank = [t for a in PLAIN["answers"] for t in a["response"]["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
             if t["token"] == ""]
    assert len(blank) > 20 and all(t["bytes"] == [] for t in blank)  # byte fragments: "" and no bytes
    ids = [t["token"] for a in IDS["answers"] for e in a["response"]["choices"][0]["logprobs"]["content"]
           for t in e["top_logprobs"]]
    assert all(token_id_of(t) is not None for t in ids)
    ended = [a for a in PLAIN["answers"] if a["response"]["choices"][0]["finish_reason"] == "stop"]
    assert ended and all(a["response"]["choices"][0]["logprobs"]["content"][-1]["token"] == "<|im_end|>" for a in ended)


def test_without_the_flag_the_audit_says_to_restart_vllm_with_token_ids(probeset, tmp_path):
    app, calls = replay(PLAIN)
    with RunningServer(app) as srv:
        with pytest.raises(LogitleakError) as exc:
            blackbox_capture(config(srv.url), probeset, tmp_path, progress=False, policy=FAST)
    total, samples, top1 = expected_unidentified(PLAIN)
    msg = str(exc.value)
    assert f"{total} alternatives in {samples} of 200 samples (the top-1 in {top1})" in msg, msg
    assert "restart vLLM with --return-tokens-as-token-ids and rerun the same audit" in msg
    assert len(msg.splitlines()) == 1 and sum(calls.values()) == 200


def _model_ids(cap, ids: torch.Tensor) -> torch.Tensor:
    return torch.tensor([[token_id_of(cap.meta["tokens"][j]) if j >= 0 else -1 for j in row] for row in ids.tolist()])


def test_with_the_flag_the_ids_are_the_white_box_capture(probeset, white, tmp_path):
    app, _ = replay(IDS)
    with RunningServer(app) as srv:
        cap, problems = blackbox_capture(config(srv.url), probeset, tmp_path, progress=False, policy=FAST)
    assert cap.meta["server"] == "vLLM" and not any("alternatives" in p for p in problems), problems
    ref_v, ref_i = torch.topk(torch.log_softmax(white.logits, -1), K)
    assert torch.equal(_model_ids(cap, cap.topk_ids), ref_i)  # first token: ordered top 20, every prompt
    assert torch.allclose(cap.topk_logprobs, ref_v, atol=1e-3)
    # every response position: the stop token's entry dropped, the same positions, tokens and top 20
    assert torch.equal(cap.gen_mask, white.gen_mask) and int((~white.gen_mask).sum()) > 0
    m = white.gen_mask
    assert torch.equal(_model_ids(cap, cap.gen_tokens)[m], white.gen_tokens[m])
    flat = cap.gen_topk_ids[m]
    assert torch.equal(_model_ids(cap, flat), white.gen_topk_ids[m])
    assert torch.allclose(cap.gen_topk_logprobs[m], white.gen_topk_logprobs[m], atol=1e-3)


def test_restarted_with_the_flag_the_rerun_asks_each_answer_again_once(probeset, tmp_path):
    port = free_port()
    plain_app, _ = replay(PLAIN)
    with RunningServer(plain_app, port=port) as srv:
        with pytest.raises(LogitleakError, match="--return-tokens-as-token-ids"):
            blackbox_capture(config(srv.url), probeset, tmp_path, progress=False, policy=FAST)
    ids_app, calls = replay(IDS)
    with RunningServer(ids_app, port=port) as srv:  # the same URL: the same audit, rerun
        cap, problems = blackbox_capture(config(srv.url), probeset, tmp_path, progress=False, policy=FAST)
    assert cap.meta["requests_sent"] == 200 and set(calls.values()) == {1}
    assert not any("alternatives" in p for p in problems), problems
    used = {cap.meta["tokens"][j] for j in cap.topk_ids.flatten().tolist()}
    assert all(token_id_of(t) is not None for t in used)


def test_the_installed_command_says_it_in_one_sentence(tmp_path):
    """`logitleak audit --endpoint` at the recorded vLLM: exit 2, one line, the flag named, no traceback."""
    import subprocess
    import sys

    command = Path(sys.executable).with_name("logitleak")
    app, _ = replay(PLAIN)
    with RunningServer(app) as srv:
        r = subprocess.run([str(command), "audit", "--endpoint", srv.url, "--served-model", "smollm2",
                            "--data", "personas", "--task", "capital", "--samples", "200", "--k", "1,5,20",
                            "--generate", str(G), "--out", str(tmp_path / "out")],
                           capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    error = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "restart vLLM with --return-tokens-as-token-ids" in error[0], r.stderr[-2000:]
