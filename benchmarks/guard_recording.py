"""Recording a real server's responses as the guard's test fixtures: one JSON file per request
holding the request, the status, the content type and the body exactly as the server sent it
(server-sent events as their raw text). Used by ``bench_guard_vllm.py`` and
``record_guard_llamacpp.py``; the tests replay the files through the guard."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

PROMPT = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


def chat(model: str, **extra) -> dict:
    return {"model": model, "messages": PROMPT, "max_tokens": 4, "temperature": 0, "logprobs": True,
            "top_logprobs": 5, **extra}


def completion(model: str, **extra) -> dict:
    return {"model": model, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0, "logprobs": 5,
            **extra}


def vllm_requests(model: str) -> list[tuple[str, str, str, dict | None]]:
    """(name, method, path, body): every shape issue 19 names, as vLLM answers them."""
    usage = {"stream_options": {"include_usage": True}}
    return [
        ("models", "GET", "/v1/models", None), ("health", "GET", "/health", None),
        ("version", "GET", "/version", None),
        ("chat", "POST", "/v1/chat/completions", chat(model)),
        ("chat_prompt_logprobs", "POST", "/v1/chat/completions", chat(model, prompt_logprobs=2)),
        ("chat_token_ids", "POST", "/v1/chat/completions", chat(model, return_tokens_as_token_ids=True)),
        ("chat_n2", "POST", "/v1/chat/completions", chat(model, n=2, temperature=0.8, seed=1)),
        ("chat_stream_usage", "POST", "/v1/chat/completions", chat(model, stream=True, **usage)),
        ("chat_stream_prompt_logprobs", "POST", "/v1/chat/completions",
         chat(model, stream=True, prompt_logprobs=1, **usage)),
        ("chat_too_many_logprobs", "POST", "/v1/chat/completions", chat(model, top_logprobs=25)),
        ("completions", "POST", "/v1/completions", completion(model)),
        ("completions_prompt_logprobs", "POST", "/v1/completions", completion(model, prompt_logprobs=2, echo=True)),
        ("completions_token_ids", "POST", "/v1/completions", completion(model, return_tokens_as_token_ids=True)),
        ("completions_stream", "POST", "/v1/completions", completion(model, stream=True, **usage)),
        ("responses", "POST", "/v1/responses", {"model": model, "input": "The capital of France is",
                                                "max_output_tokens": 4, "temperature": 0, "top_logprobs": 3,
                                                "include": ["message.output_text.logprobs"]}),
        ("responses_stream", "POST", "/v1/responses", {"model": model, "input": "The capital of France is",
                                                       "max_output_tokens": 4, "temperature": 0, "top_logprobs": 3,
                                                       "include": ["message.output_text.logprobs"], "stream": True}),
    ]


def llamacpp_requests(model: str) -> list[tuple[str, str, str, dict | None]]:
    """(name, method, path, body) for llama-cpp-python's OpenAI-compatible server."""
    return [
        ("models", "GET", "/v1/models", None),
        ("chat", "POST", "/v1/chat/completions", chat(model)),
        ("chat_stream", "POST", "/v1/chat/completions", chat(model, stream=True)),
        ("completions", "POST", "/v1/completions", completion(model)),
        ("completions_stream", "POST", "/v1/completions", completion(model, stream=True)),
    ]


def record(origin: str, requests: list, out: Path, server: str) -> list[str]:
    """Send ``requests`` to ``origin`` (``http://host:port``) and write one fixture file each; the names written."""
    out.mkdir(parents=True, exist_ok=True)
    names = []
    with httpx.Client(timeout=600) as client:
        for name, method, path, body in requests:
            with client.stream(method, origin + path, json=body) as r:
                raw = b"".join(r.iter_raw())
            fixture = {"server": server, "name": name, "request": {"method": method, "path": path, "body": body},
                       "status": r.status_code, "content_type": r.headers.get("content-type", ""),
                       "body": raw.decode("utf-8")}
            (out / f"{name}.json").write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
            names.append(f"{name} ({r.status_code}, {len(raw)} bytes)")
    return names
