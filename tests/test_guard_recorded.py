"""Real servers' recorded responses replayed through ``guard --defense round:1`` by a fake upstream:
vLLM 0.32 (CPU build; chat and completions with and without ``prompt_logprobs``, tokens as token
ids, ``n=2``, streams with usage, the Responses API, its model card, health and version, a 400)
and llama-cpp-python's server (models, chat and completions, streamed or not), all serving
SmolLM2-135M. Each comes back exactly as recorded except that every log-probability is rounded
to one decimal (and a prompt token's rank outside the listed ones is withheld).

Recorded by ``benchmarks/bench_guard_vllm.py --record`` and ``benchmarks/record_guard_llamacpp.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from guard_upstreams import canned, guard, send  # noqa: F401 - fixtures

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "recorded").glob("*/*.json"))
POSITIONS = ("logprobs", "prompt_logprobs", "completion_probabilities")


def replay(guard, canned, fixture: dict) -> tuple[int, bytes]:
    canned.cases["r"] = (fixture["status"], fixture["content_type"], fixture["body"].encode())
    req = fixture["request"]
    code, _, out = send(guard.port, req["method"], req["path"], "r",
                        json.dumps(req["body"]).encode() if req["body"] else None)
    return code, out


def rounded(node, inside: bool = False):
    """What round:1 makes of a recorded document: floats inside log-probability positions rounded
    (half to even of v * 10), listed alternatives sorted by value (vLLM lists a sampled token
    first), a prompt token's rank outside the listed ranks withheld."""
    if isinstance(node, dict):
        out = {k: rounded(v, inside or k in POSITIONS) for k, v in node.items()}
        top = node.get("top_logprobs")
        if inside and isinstance(top, list) and top and isinstance(top[0], dict) and "logprob" in top[0]:
            out["top_logprobs"] = [rounded(a, True) for a in sorted(node["top_logprobs"], key=lambda a: -a["logprob"])]
        if inside and out and all(isinstance(v, dict) and "rank" in v for v in out.values()):
            listed = 0
            for item in sorted(out.values(), key=lambda v: v["rank"]):
                if item["rank"] == listed + 1:
                    listed += 1
                else:
                    item["rank"] = None
        return out
    if isinstance(node, list):
        return [rounded(v, inside) for v in node]
    return round(node * 10) / 10 if inside and isinstance(node, float) else node


def events(text: str) -> list:
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(line[5:].lstrip(" ") for line in block.split("\n") if line.startswith("data:"))
        if data:
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_the_recordings_cover_the_shapes_the_issue_names():
    names = {f"{p.parent.name}/{p.stem}" for p in FIXTURES}
    assert {"vllm/models", "vllm/chat", "vllm/chat_prompt_logprobs", "vllm/chat_token_ids", "vllm/chat_n2",
            "vllm/chat_stream_usage", "vllm/completions", "vllm/completions_prompt_logprobs",
            "vllm/completions_stream", "vllm/responses", "vllm/responses_stream", "llamacpp/models", "llamacpp/chat",
            "llamacpp/chat_stream", "llamacpp/completions", "llamacpp/completions_stream"} <= names
    card = json.loads(json.loads((FIXTURES[0].parent.parent / "vllm" / "models.json").read_text())["body"])
    assert card["data"][0]["permission"][0]["allow_logprobs"] is True  # what the old guard refused


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recorded_responses_come_back_defended_and_otherwise_unchanged(guard, canned, path):
    fixture = json.loads(path.read_text())
    status, out = replay(guard, canned, fixture)
    assert status == fixture["status"], out[:300]
    if not fixture["body"]:
        assert out == b""
        return
    if "text/event-stream" in fixture["content_type"]:
        orig = events(fixture["body"])
        got, want = events(out.decode()), [rounded(e) for e in orig]
    else:
        orig = json.loads(fixture["body"])
        got, want = json.loads(out), rounded(orig)
    assert got == want
    if any(f'"{k}": [' in fixture["body"] or f'"{k}":[' in fixture["body"] for k in POSITIONS):
        assert want != orig  # full-precision values were there, and came back rounded
