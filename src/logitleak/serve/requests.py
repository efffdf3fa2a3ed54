"""The engine's request and result types: a parsed chat request, its generated tokens, refusals."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_MAX_TOKENS = 16


@dataclass
class GenRequest:
    """One chat request, already parsed: HF-format messages (``{"type": "image"}`` parts in the
    order the images came), the decoded images, and sampling / logprob settings."""

    messages: list[dict]
    images: list = field(default_factory=list)
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    top_logprobs: int | None = None  # None: no logprobs; 0..20 alternatives otherwise
    stop: list[str] = field(default_factory=list)


@dataclass
class Alternative:
    token: str
    logprob: float
    bytes: list[int] | None


@dataclass
class Step:
    """One generated token: its string, its (defended) log-probability and the alternatives."""

    token_id: int
    token: str
    bytes: list[int] | None
    logprob: float
    top: list[Alternative]


@dataclass
class GenResult:
    text: str
    finish_reason: str
    steps: list[Step]
    prompt_tokens: int
    completion_tokens: int
    logprobs: bool


def text_of(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(p.get("text") or "" for p in content or ())


def prompt_chars(messages: list[dict]) -> int:
    """Characters of text in a conversation (what bounds its length before tokenising)."""
    return sum(len(text_of(m)) for m in messages)
