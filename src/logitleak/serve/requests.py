"""The engine's request and result types: a parsed chat request, its generated tokens, refusals."""

from __future__ import annotations

import re
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
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit at every step


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


_PATH = re.compile(r"(?<![\w:/.])(?:~|[A-Za-z]:)?(?:[/\\][\w.+@~-]+){2,}[/\\]?")


def public_message(text: str, *hidden: str) -> str:
    """``text`` fit to send a client: the ``hidden`` names (the model's folder) and every
    filesystem path replaced, so a refusal shows nothing of the server's disk."""
    for name in sorted((h for h in hidden if h), key=len, reverse=True):
        text = text.replace(name, "the model")
    return _PATH.sub("<path>", text).replace("'the model'", "the model")
