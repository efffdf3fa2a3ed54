"""Black-box audits: an OpenAI-compatible endpoint's top-k logprobs -> Capture, cached and resumable.

Against the real server (in-process on a loopback port, or a subprocess that gets killed) the
black-box capture must equal the white-box one; against small fake endpoints every fault (too
few alternatives, no logprobs, HTTP 500s, 429s, a bad key) must be reported, never dropped.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from servers import organism_server, serve_command, start_process

from logitleak.config import make_config
from logitleak.data.probeset import ProbeSet
from logitleak.data.shapes import make_shapes
from logitleak.endpoint.assemble import VOCAB_FILE
from logitleak.endpoint.cache import RESPONSES_FILE
from logitleak.endpoint.capture import blackbox_capture
from logitleak.endpoint.client import RetryPolicy
from logitleak.errors import LogitleakError
from logitleak.serve.app import RunningServer, free_port

MODEL = "organism"
FAST = RetryPolicy(attempts=3, backoff_s=0.01, max_backoff_s=0.05, connect_patience_s=1.0, timeout_s=30)






@pytest.fixture(scope="module")
def model_dir(organism_dir):
    return organism_dir


@pytest.fixture(scope="module")
def adapter(model_dir):
    from logitleak.models.loading import load_model

    return load_model(model_dir, device="cpu")


@pytest.fixture(scope="module")
def server(adapter, one_thread):
    with organism_server(adapter, served_model_name=MODEL) as srv:
        yield srv


def bb_config(endpoint: str, n: int, k=(1, 5), **extra):
    return make_config({"endpoint": endpoint, "served_model": MODEL, "k": list(k), "samples": max(n, 10),
                        "concurrency": 4, **extra})


def cache_lines(cache: Path) -> list[dict]:
    path = cache / RESPONSES_FILE
    if not path.exists():
        return []
    out = []
    for raw in path.read_bytes().splitlines():
        try:
            out.append(json.loads(raw))
        except ValueError:
            pass
    return out


# ----------------------------------------------------------------------------- agreement with white box

def test_blackbox_capture_equals_white_box_topk(server, adapter, tmp_path):
    from logitleak.capture.forward import capture as white_capture

    ps = make_shapes(48, questions="all", seed=11)
    cfg = bb_config(server.url, len(ps), k=(1, 3, 5))
    cap, problems = blackbox_capture(cfg, ps, tmp_path, progress=False)
    assert problems == []
    assert cap.hidden is None and cap.logits is None
    assert cap.topk_logprobs.shape == (48, 5) and cap.topk_ids.shape == (48, 5)
    assert cap.meta["requests_sent"] == 48 and cap.meta["answered"] == 48

    white = white_capture(adapter, ps, batch_size=16, progress=False)
    ref_v, ref_i = torch.log_softmax(white.logits.float(), -1).topk(5, dim=-1)
    assert torch.allclose(cap.topk_logprobs, ref_v, atol=1e-4)
    # Run ids -> token strings -> model ids: the same tokens, wherever ranks are not (near) tied.
    tokens = cap.meta["tokens"]
    model_ids = torch.tensor([[adapter.tokenizer.convert_tokens_to_ids(tokens[j]) for j in row]
                              for row in cap.topk_ids.tolist()])
    gap_next = torch.cat([ref_v[:, :-1] - ref_v[:, 1:], torch.full((48, 1), 1.0)], dim=1)
    gap_prev = torch.cat([torch.full((48, 1), 1.0), ref_v[:, :-1] - ref_v[:, 1:]], dim=1)
    clear = (gap_next > 1e-4) & (gap_prev > 1e-4)
    assert clear.float().mean() > 0.5
    assert torch.equal(model_ids[clear], ref_i[clear])
    # One token, one run id, everywhere.
    pairs = {(int(r), int(m)) for r, m in zip(cap.topk_ids.flatten(), model_ids.flatten())}
    assert len({r for r, _ in pairs}) == len(pairs) == len({m for _, m in pairs})
    assert json.loads((tmp_path / VOCAB_FILE).read_text()) == {t: i for i, t in enumerate(tokens)}

    again, _ = blackbox_capture(cfg, ps, tmp_path, progress=False)  # everything cached: nothing sent
    assert again.meta["requests_sent"] == 0 and again.meta["cached"] == 48
    assert torch.equal(again.topk_ids, cap.topk_ids) and torch.equal(again.topk_logprobs, cap.topk_logprobs)


def test_budget_stops_clearly_and_rerun_resumes(server, tmp_path):
    ps = make_shapes(30, seed=2)
    cfg = bb_config(server.url, 30, k=(3,), max_requests=10)
    with pytest.raises(LogitleakError) as exc:
        blackbox_capture(cfg, ps, tmp_path, progress=False)
    msg = str(exc.value)
    assert "--max-requests 10" in msg and "10 of 30 samples" in msg and "rerun" in msg and "20 remaining" in msg
    assert len(cache_lines(tmp_path)) == 10
    with open(tmp_path / RESPONSES_FILE, "ab") as fh:  # a write torn by a crash
        fh.write(b'{"index": 25, "key": "tru')
    cap, problems = blackbox_capture(bb_config(server.url, 30, k=(3,)), ps, tmp_path, progress=False)
    assert cap.meta["requests_sent"] == 20 and cap.meta["cached"] == 10 and not problems
    lines = cache_lines(tmp_path)
    assert len(lines) == 30 and sorted(r["index"] for r in lines) == list(range(30))
    assert not torch.isnan(cap.topk_logprobs).any()


def test_k_above_api_limit_is_refused(server, tmp_path):
    with pytest.raises(LogitleakError, match="top_logprobs"):
        blackbox_capture(bb_config(server.url, 10, k=(5, 50)), make_shapes(10), tmp_path, progress=False)


# ----------------------------------------------------------------------------- end to end

def test_blackbox_run_audit_agrees_with_white_box(server, model_dir, tmp_path):
    from logitleak.audit import run_audit

    common = {"data": "shapes", "task": "color", "levels": ["topk_logprobs", "topk_ids"], "k": [1, 3],
              "samples": 160, "seed": 0, "device": "cpu",
              "probes": {"families": ["linear"], "folds": 3, "permutations": 0, "bootstrap": 200}}
    white = run_audit(make_config({**common, "model": str(model_dir), "out": str(tmp_path / "white")}), progress=False)
    black = run_audit(make_config({**common, "endpoint": server.url, "served_model": MODEL,
                                   "out": str(tmp_path / "black")}), progress=False)
    assert black.problems == []
    key = ["level", "k", "attribute", "probe"]
    w = white.results[white.results["level"].isin(common["levels"])].set_index(key).sort_index()
    b = black.results.set_index(key).sort_index()
    assert list(b.index) == list(w.index) and len(b) > 0
    for idx in w.index:
        # class attributes: accuracy and its interval; numeric ones (box, centre, area): R² and its interval
        score, lo, hi = ("accuracy", "ci_low", "ci_high") if pd.notna(w.loc[idx, "accuracy"]) else ("r2", "r2_ci_low", "r2_ci_high")
        aw, ab = float(w.loc[idx, score]), float(b.loc[idx, score])
        hw = max(float(w.loc[idx, hi] - w.loc[idx, lo]), float(b.loc[idx, hi] - b.loc[idx, lo])) / 2
        assert abs(aw - ab) <= hw + 1e-9, (idx, aw, ab, hw)


# ----------------------------------------------------------------------------- a server that dies

def _start_server(model_dir: Path, port: int, log: Path) -> subprocess.Popen:
    return start_process(serve_command(model_dir, MODEL, port, "--threads", "1", "--max-batch", "4"),
                         f"http://127.0.0.1:{port}/v1", log, env={"OMP_NUM_THREADS": "1"}, poll_s=0.1)


def _posts(log: Path) -> int:
    return sum("POST /v1/chat/completions" in line for line in log.read_text(errors="replace").splitlines())


def _run_in_thread(fn):
    outcome: dict = {}

    def target():
        try:
            outcome["result"] = fn()
        except BaseException as err:  # noqa: BLE001
            outcome["error"] = err

    th = threading.Thread(target=target)
    th.start()
    return th, outcome


def _wait_for_lines(cache: Path, at_least: int, th: threading.Thread, outcome: dict, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(cache_lines(cache)) < at_least:
        assert th.is_alive(), f"the audit finished before the server could be killed: {outcome}"
        assert time.monotonic() < deadline
        time.sleep(0.002)


@pytest.mark.slow
def test_killed_server_run_fails_clearly_and_rerun_resumes_exactly(model_dir, tmp_path):
    n = 300
    ps = make_shapes(n, seed=5)
    port = free_port()
    cfg = bb_config(f"http://127.0.0.1:{port}/v1", n, k=(5,), concurrency=2)
    cache = tmp_path / "cache"
    proc = _start_server(model_dir, port, tmp_path / "server1.log")
    try:
        th, outcome = _run_in_thread(lambda: blackbox_capture(cfg, ps, cache, progress=False, policy=FAST))
        _wait_for_lines(cache, 40, th, outcome)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        th.join(120)
    finally:
        proc.kill()
    err = outcome.get("error")
    assert isinstance(err, LogitleakError), outcome
    assert "Could not connect" in str(err) and f"of {n} samples" in str(err) and "rerun" in str(err)
    first = cache_lines(cache)
    answered = len({r["index"] for r in first})
    assert len(first) == answered and 40 <= answered < n  # nothing written twice

    log2 = tmp_path / "server2.log"
    proc = _start_server(model_dir, port, log2)
    try:
        cap, problems = blackbox_capture(cfg, ps, cache, progress=False, policy=FAST)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert problems == []
    assert cap.meta["requests_sent"] == n - answered == _posts(log2)
    lines = cache_lines(cache)
    assert len(lines) == n and sorted(r["index"] for r in lines) == list(range(n))
    assert not torch.isnan(cap.topk_logprobs).any() and (cap.topk_ids >= 0).all()


@pytest.mark.slow
def test_server_restarting_mid_audit_is_waited_for(model_dir, tmp_path):
    n = 200
    ps = make_shapes(n, seed=6)
    port = free_port()
    cfg = bb_config(f"http://127.0.0.1:{port}/v1", n, k=(5,), concurrency=2)
    cache = tmp_path / "cache"
    patient = RetryPolicy(attempts=3, backoff_s=0.05, max_backoff_s=0.5, connect_patience_s=180, timeout_s=30)
    procs = [_start_server(model_dir, port, tmp_path / "server1.log")]
    try:
        th, outcome = _run_in_thread(lambda: blackbox_capture(cfg, ps, cache, progress=False, policy=patient))
        _wait_for_lines(cache, 30, th, outcome)
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(30)
        procs.append(_start_server(model_dir, port, tmp_path / "server2.log"))
        th.join(180)
    finally:
        for p in procs:
            p.kill()
    assert "error" not in outcome, outcome.get("error")
    cap, problems = outcome["result"]
    assert problems == []
    lines = cache_lines(cache)
    assert len(lines) == n and sorted(r["index"] for r in lines) == list(range(n))
    assert not torch.isnan(cap.topk_logprobs).any()


# ----------------------------------------------------------------------------- fake endpoints

def text_probeset(n: int) -> ProbeSet:
    return ProbeSet(name="text", prompts=[f"what color is sample {i}" for i in range(n)],
                    attributes=pd.DataFrame({"color": ["red", "blue"] * (n // 2)}), asked=["color"] * n,
                    groups=np.arange(n))


def completion(tops: list[tuple], n_tokens: int = 1, logprobs: bool = True) -> dict:
    def alt(t):
        token, lp, raw = (t + (None,))[:3]
        return {"token": token, "logprob": lp, "bytes": raw if raw is not None else list(token.encode())}

    first = {**alt(tops[0]), "top_logprobs": [alt(t) for t in tops]} if tops else None
    content = ([first] + [{**alt(tops[0]), "top_logprobs": []}] * (n_tokens - 1)) if first else []
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": tops[0][0] if tops else "red"},
                         "finish_reason": "length", "logprobs": {"content": content} if logprobs else None}],
            "usage": {"prompt_tokens": 5, "completion_tokens": n_tokens, "total_tokens": 5 + n_tokens}}


def fake_endpoint(behaviour, models: dict | None = None) -> tuple[FastAPI, Counter]:
    """A tiny OpenAI-shaped endpoint: ``behaviour(sample_index, body, attempt)`` -> dict or Response;
    ``models``: its ``/v1/models`` answer (none: 404, as some servers have no such route)."""
    app = FastAPI()
    calls: Counter = Counter()

    if models is not None:
        @app.get("/v1/models")
        async def listing():
            return JSONResponse(models)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        i = int(body["messages"][0]["content"].split()[-1])
        calls[i] += 1
        out = behaviour(i, body, calls[i])
        return out if isinstance(out, Response) else JSONResponse(out)

    return app, calls


def _error(status: int, message: str, headers=None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "server_error"}}, status_code=status, headers=headers)


GOOD = [("red", -0.1), ("blue", -2.5), ("green", -3.0), ("cyan", -4.0), ("gray", -5.0)]


def test_fewer_alternatives_than_k_are_counted(tmp_path):
    app, calls = fake_endpoint(lambda i, body, a: completion(GOOD if i % 2 == 0 else GOOD[:2]))
    with RunningServer(app) as srv:
        cap, problems = blackbox_capture(bb_config(srv.url, 40, k=(2, 5)), text_probeset(40), tmp_path,
                                         progress=False, policy=FAST)
    assert any("20 samples had fewer than 5 alternatives" in p for p in problems), problems
    assert torch.isnan(cap.topk_logprobs[1::2, 2:]).all() and (cap.topk_ids[1::2, 2:] == -1).all()
    assert not torch.isnan(cap.topk_logprobs[0::2]).any() and (cap.topk_ids[0::2] >= 0).all()
    assert sum(calls.values()) == 40


def test_engine_quirks_duplicates_empty_strings_extra_tokens(tmp_path):
    quirky = [("\ufffd", -3.0, [0xFF]), ("", -2.0, [0xE2, 0x81]), ("", -1.0, [0xE2, 0x80]),
              ("red", -0.5), ("red", -0.1)]  # unsorted on purpose
    app, _ = fake_endpoint(lambda i, body, a: completion(quirky, n_tokens=3))
    with RunningServer(app) as srv:
        cap, problems = blackbox_capture(bb_config(srv.url, 20, k=(5,)), text_probeset(20), tmp_path,
                                         progress=False, policy=FAST)
    assert torch.allclose(cap.topk_logprobs[0], torch.tensor([-0.1, -0.5, -1.0, -2.0, -3.0]))
    tokens = cap.meta["tokens"]
    row = [tokens[j] for j in cap.topk_ids[0].tolist()]
    assert row == ["red", "red", "bytes:e280", "bytes:e281", "bytes:ff"]
    assert (cap.topk_ids == cap.topk_ids[0]).all()
    assert any("20 samples had alternatives with the same token string" in p for p in problems), problems
    assert any("more than max_tokens=1" in p for p in problems), problems


def test_no_logprobs_is_a_clear_error_after_one_request(tmp_path):
    app, calls = fake_endpoint(lambda i, body, a: completion(GOOD, logprobs=False))
    with RunningServer(app) as srv:
        with pytest.raises(LogitleakError, match="does not return logprobs"):
            blackbox_capture(bb_config(srv.url, 30), text_probeset(30), tmp_path, progress=False, policy=FAST)
    assert sum(calls.values()) == 1


def test_persistent_500_on_a_few_samples_is_named_in_problems(tmp_path):
    app, calls = fake_endpoint(lambda i, body, a: _error(500, "boom") if i == 3 else completion(GOOD))
    with RunningServer(app) as srv:
        cap, problems = blackbox_capture(bb_config(srv.url, 40), text_probeset(40), tmp_path, progress=False,
                                         policy=FAST)
    assert any("1 of 40 samples failed" in p and "samples 3;" in p and "HTTP 500" in p for p in problems), problems
    assert calls[3] == FAST.attempts
    assert torch.isnan(cap.topk_logprobs[3]).all() and (cap.topk_ids[3] == -1).all()
    assert not torch.isnan(cap.topk_logprobs[[0, 1, 2, 4]]).any()
    assert cap.meta["failed"] == [3]
    assert 3 not in {r["index"] for r in cache_lines(tmp_path)}  # failures are not cached: a rerun retries them


def test_persistent_500_everywhere_stops_with_an_error(tmp_path):
    app, calls = fake_endpoint(lambda i, body, a: _error(503, "overloaded"))
    with RunningServer(app) as srv:
        with pytest.raises(LogitleakError) as exc:
            blackbox_capture(bb_config(srv.url, 40, concurrency=2), text_probeset(40), tmp_path, progress=False,
                             policy=FAST)
    assert "of 40 samples got no usable answer" in str(exc.value) and "HTTP 503" in str(exc.value)
    assert sum(calls.values()) < 40 * FAST.attempts  # it stopped spending requests early


def test_rate_limits_are_retried(tmp_path):
    app, calls = fake_endpoint(lambda i, body, a: _error(429, "slow down", {"retry-after": "0"}) if a <= 2
                               else completion(GOOD))
    with RunningServer(app) as srv:
        cap, problems = blackbox_capture(bb_config(srv.url, 20), text_probeset(20), tmp_path, progress=False,
                                         policy=FAST)
    assert problems == [] and not torch.isnan(cap.topk_logprobs).any()
    assert cap.meta["requests_sent"] == 60 and all(c == 3 for c in calls.values())


def test_bad_api_key_and_missing_key_variable(tmp_path, monkeypatch):
    app, calls = fake_endpoint(lambda i, body, a: _error(401, "Incorrect API key provided"))
    with RunningServer(app) as srv:
        monkeypatch.setenv("LOGITLEAK_TEST_KEY", "nope")
        with pytest.raises(LogitleakError, match="LOGITLEAK_TEST_KEY"):
            blackbox_capture(bb_config(srv.url, 20, api_key_env="LOGITLEAK_TEST_KEY"), text_probeset(20), tmp_path,
                             progress=False, policy=FAST)
        assert sum(calls.values()) == 1
        monkeypatch.delenv("LOGITLEAK_TEST_KEY")
        with pytest.raises(LogitleakError, match="LOGITLEAK_TEST_KEY.*not set"):
            blackbox_capture(bb_config(srv.url, 20, api_key_env="LOGITLEAK_TEST_KEY"), text_probeset(20), tmp_path,
                             progress=False, policy=FAST)


def test_api_key_reaches_the_real_server(model_dir, tmp_path, monkeypatch, one_thread):
    from logitleak.models.loading import load_model

    monkeypatch.setenv("LOGITLEAK_TEST_KEY", "k-123")
    with organism_server(load_model(model_dir, device="cpu"), max_batch=16, served_model_name=MODEL,
                         api_key="k-123") as srv:
        cap, problems = blackbox_capture(bb_config(srv.url, 10, api_key_env="LOGITLEAK_TEST_KEY"), make_shapes(10),
                                         tmp_path, progress=False, policy=FAST)
    assert problems == [] and cap.meta["answered"] == 10


def test_unreachable_endpoint_fails_fast_and_clearly(tmp_path):
    cfg = bb_config(f"http://127.0.0.1:{free_port()}/v1", 10)
    policy = RetryPolicy(attempts=2, backoff_s=0.05, first_connect_patience_s=0.5, timeout_s=5)
    t0 = time.monotonic()
    with pytest.raises(LogitleakError) as exc:
        blackbox_capture(cfg, text_probeset(10), tmp_path, progress=False, policy=policy)
    assert time.monotonic() - t0 < 5
    assert "Could not connect" in str(exc.value) and "0 of 10 samples" in str(exc.value)


def test_unreadable_responses_are_reported_not_crashing(tmp_path):
    from fastapi.responses import PlainTextResponse

    app, _ = fake_endpoint(lambda i, body, a: PlainTextResponse("<html>not json</html>") if i == 4
                           else completion(GOOD))
    with RunningServer(app) as srv:
        cap, problems = blackbox_capture(bb_config(srv.url, 40), text_probeset(40), tmp_path, progress=False,
                                         policy=FAST)
    assert any("1 of 40 samples failed" in p and "samples 4;" in p for p in problems), problems
    assert torch.isnan(cap.topk_logprobs[4]).all()


# ----------------------------------------------------------------------------- token identity across the audit

VLLM_MODELS = {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "vllm", "root": "/m"}]}


def test_token_id_names_are_parsed_exactly(tmp_path):
    from logitleak.endpoint.responses import token_id_of, token_key

    assert token_id_of("token_id:12") == 12 and token_id_of("token_id:007") == 7
    for not_an_id in ("token_id:", "token_id:-1", "token_id:1.5", "token_id:12 ", " token_id:12", "token_id:1x",
                      "Token_id:3", "token_id:" + "9" * 13, None):
        assert token_id_of(not_an_id) is None, not_an_id
    assert token_key("token_id:007", list(b"token_id:007")) == "token_id:7"
    assert token_key("token_id:1.5", None) == "token_id:1.5"  # a plain string token
    tops = [("token_id:5", -0.1), ("token_id:17", -1.0), ("token_id:005", -2.0), ("token_id:17x", -3.0)]
    app, _ = fake_endpoint(lambda i, body, a: completion(tops), models=VLLM_MODELS)
    with RunningServer(app) as srv:
        cap, problems = blackbox_capture(bb_config(srv.url, 10, k=(4,)), text_probeset(10), tmp_path,
                                         progress=False, policy=FAST)
    row = [cap.meta["tokens"][j] for j in cap.topk_ids[0].tolist()]
    assert row == ["token_id:5", "token_id:17", "token_id:5", "token_id:17x"]
    assert cap.meta["server"] == "vLLM"
    assert any("10 samples had alternatives with the same token string" in p for p in problems), problems


def _with_blank(i: int) -> list[tuple]:
    """Sample i's alternatives: one byte-fragment token printed as "" with no bytes (vLLM's default),
    never twice in one sample, so only a count across samples finds it."""
    return [("red", -0.1), ("blue", -1.5), ("", -2.0 - i / 100, []), ("green", -3.0)]


def test_unidentified_alternatives_are_counted_across_the_whole_audit(tmp_path):
    app, _ = fake_endpoint(lambda i, body, a: completion(_with_blank(i)))  # no /v1/models: an unknown server
    with RunningServer(app) as srv:
        cap, problems = blackbox_capture(bb_config(srv.url, 20, k=(4,)), text_probeset(20), tmp_path,
                                         progress=False, policy=FAST)
    assert cap.meta["server"] == "unknown"
    assert any(p.startswith("20 alternatives in 20 of 20 samples (the top-1 in 0) came back") and
               "count them as one token" in p for p in problems), problems
    assert not any("same token string" in p for p in problems)


def test_through_vllm_unidentified_tokens_say_to_restart_it_with_token_ids(tmp_path):
    state = {"flag": False}

    def answer(i, body, a):
        if state["flag"]:  # restarted with --return-tokens-as-token-ids
            return completion([(f"token_id:{t}", lp) for t, lp in zip((7, 8, 9, 10), (-0.1, -1.5, -2.0, -3.0))])
        return completion(_with_blank(i))

    app, calls = fake_endpoint(answer, models=VLLM_MODELS)
    with RunningServer(app) as srv:
        cfg = bb_config(srv.url, 20, k=(4,), levels=["topk_ids", "topk_logprobs"])
        with pytest.raises(LogitleakError) as exc:
            blackbox_capture(cfg, text_probeset(20), tmp_path, progress=False, policy=FAST)
        msg = str(exc.value)
        assert "20 alternatives in 20 of 20 samples" in msg and "restart vLLM with --return-tokens-as-token-ids" in msg
        assert len(msg.splitlines()) == 1 and sum(calls.values()) == 20
        # values-only levels need no ids: the same answers are read, with the fix named
        values_only = bb_config(srv.url, 20, k=(4,), levels=["topk_logprobs"])
        cap, problems = blackbox_capture(values_only, text_probeset(20), tmp_path, progress=False, policy=FAST)
        assert any("--return-tokens-as-token-ids for exact ids" in p for p in problems), problems
        state["flag"] = True
        calls.clear()
        cap, problems = blackbox_capture(cfg, text_probeset(20), tmp_path, progress=False, policy=FAST)
    assert problems == [] and sum(calls.values()) == 20  # each answer asked again once, with ids
    assert cap.meta["requests_sent"] == 20 and cap.meta["cached"] == 0
    assert {cap.meta["tokens"][j] for j in cap.topk_ids.flatten().tolist()} == {f"token_id:{t}" for t in (7, 8, 9, 10)}


def test_by_string_answers_are_asked_again_once_ids_appear(tmp_path):
    """A vLLM restarted with ids between two runs: the answers cached by string are not mixed
    with answers by id (one token would get two ids); they are asked again."""
    state = {"flag": False}

    def answer(i, body, a):
        if state["flag"]:
            return completion([("token_id:3", -0.1), ("token_id:4", -1.0)])
        return completion([("red", -0.1), ("blue", -1.0)])

    app, calls = fake_endpoint(answer, models=VLLM_MODELS)
    with RunningServer(app) as srv:
        cfg = bb_config(srv.url, 20, k=(2,), max_requests=10)
        with pytest.raises(LogitleakError, match="--max-requests 10"):
            blackbox_capture(cfg, text_probeset(20), tmp_path, progress=False, policy=FAST)
        state["flag"] = True
        cap, problems = blackbox_capture(bb_config(srv.url, 20, k=(2,)), text_probeset(20), tmp_path,
                                         progress=False, policy=FAST)
    assert problems == [] and cap.meta["requests_sent"] == 20 and sum(calls.values()) == 30
    assert set(cap.meta["tokens"]) >= {"token_id:3", "token_id:4"}
    assert {cap.meta["tokens"][j] for j in cap.topk_ids.flatten().tolist()} == {"token_id:3", "token_id:4"}


def test_whole_response_equals_white_box_generate_and_the_stop_entry_is_dropped(server, adapter, tmp_path):
    """The organism answers one word and stops: `serve` returns the stop token's entry as vLLM does;
    the black-box reader drops it, so the response positions equal the white-box --generate capture's."""
    from logitleak.capture.forward import capture as white_capture

    ps = make_shapes(24, questions="all", seed=4)
    cap, problems = blackbox_capture(bb_config(server.url, 24, k=(5,), generate=3), ps, tmp_path, progress=False)
    white = white_capture(adapter, ps, batch_size=8, progress=False, generate=3, gen_k=5)
    assert cap.meta["server"] == "logitleak"
    raw = [json.loads(line) for line in (tmp_path / RESPONSES_FILE).read_text().splitlines()]
    assert all(r["finish_reason"] == "stop" and len(r["tokens"]) == int(white.gen_mask[r["index"]].sum()) + 1
               for r in raw)  # one entry more than the response: the stop token's
    assert torch.equal(cap.gen_mask, white.gen_mask)
    m = white.gen_mask
    assert torch.allclose(cap.gen_topk_logprobs[m], white.gen_topk_logprobs[m], atol=1e-4)
    words = [adapter.tokenizer.convert_tokens_to_ids(cap.meta["tokens"][j]) for j in cap.gen_tokens[m].tolist()]
    assert words == white.gen_tokens[m].tolist()
    assert any("ended before max_tokens=3" in p for p in problems)
