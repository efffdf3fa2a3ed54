"""Pydantic models of the OpenAI chat-completions wire format (the subset the server speaks).

Requests accept text and image content parts; images must be base64 ``data:`` URLs (the server
can reach nothing outside, so remote URLs are refused with a 400). A request field this server
does not implement is refused by name (a 400), never silently ignored: fields it implements are
those of :class:`ChatCompletionRequest`; fields it does not implement are accepted only at their
neutral value (``presence_penalty: 0``, ``echo: false``, ``best_of: 1``, ...: :data:`NEUTRAL`),
where they change nothing. Text holding a lone UTF-16 surrogate is refused by location.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 300  # entries in one request's logit_bias


INT64 = 2**63


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class ImageURL(_Lenient):
    url: str = Field(..., min_length=1)
    detail: str | None = None


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ImagePart(_Lenient):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatCompletionRequest(_Lenient):
    """``POST /v1/chat/completions`` body."""

    model: str = Field(..., min_length=1)
    messages: list[ChatMessage] = Field(..., min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=-INT64, lt=INT64)
    stop: str | list[str] | None = None
    stream: bool | None = False
    logit_bias: dict[str, float] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.n not in (None, 1):
            raise ValueError("n must be 1: this server returns one choice per request")
        if self.stream:
            raise ValueError("stream=true is not supported by this server; send stream=false")
        if self.top_logprobs is not None and self.top_logprobs > 0 and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs=true")
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise ValueError("stop takes at most 4 sequences")
        if self.logit_bias:
            if len(self.logit_bias) > MAX_LOGIT_BIAS:
                raise ValueError(f"logit_bias takes at most {MAX_LOGIT_BIAS} token ids")
            for key, value in self.logit_bias.items():
                if not (key.isascii() and key.isdigit()) or len(key) > 12:
                    raise ValueError(f"logit_bias key {key[:40]!r} is not a token id; key it by token ids such as \"50256\"")
                if not -100 <= value <= 100:
                    raise ValueError(f"logit_bias value {value:g} for token {key} is outside -100..100")
        return self

    @property
    def bias_by_id(self) -> dict[int, float]:
        return {int(k): float(v) for k, v in (self.logit_bias or {}).items()}

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [s for s in ([self.stop] if isinstance(self.stop, str) else self.stop) if s]


def _neutral_tools(v) -> bool:
    return v in (None, [], "none")


NEUTRAL = {
    "presence_penalty": lambda v: v in (None, 0),
    "frequency_penalty": lambda v: v in (None, 0),
    "repetition_penalty": lambda v: v in (None, 1),
    "echo": lambda v: v in (None, False),
    "best_of": lambda v: v in (None, 1),
    "top_k": lambda v: v in (None, -1, 0),
    "min_p": lambda v: v in (None, 0),
    "stream_options": lambda v: v is None,
    "tools": _neutral_tools, "tool_choice": _neutral_tools, "functions": _neutral_tools,
    "function_call": _neutral_tools,
    "parallel_tool_calls": lambda v: v is None or isinstance(v, bool),
    "response_format": lambda v: v is None or v == {"type": "text"},
    "modalities": lambda v: v in (None, ["text"]),
    "store": lambda v: v in (None, False),
    "service_tier": lambda v: v in (None, "auto", "default"),
    "user": lambda v: v is None or isinstance(v, str),
    "metadata": lambda v: v is None or isinstance(v, dict),
    "reasoning_effort": lambda v: v is None, "prediction": lambda v: v is None, "audio": lambda v: v is None,
    "web_search_options": lambda v: v is None,
}
"""Fields this server does not implement, and the values at which they change nothing."""


def refusal(data: dict) -> tuple[str, str, str] | None:
    """``(message, param, code)`` for a request body this server would otherwise answer wrongly: a field
    it does not know, one it does not implement set to a value that would change the answer, or
    a lone UTF-16 surrogate in a string; ``None`` when there is none."""
    where = lone_surrogate(data)
    if where is not None:
        where = where.encode("utf-8", "backslashreplace").decode("utf-8")
        return (f"Invalid request: {where} holds a lone UTF-16 surrogate, which is not valid Unicode; send valid "
                "UTF-8 text.", where, "invalid_text")
    implemented = set(ChatCompletionRequest.model_fields)
    unknown = [str(k) for k in data if k not in implemented and k not in NEUTRAL]
    if unknown:
        names = ", ".join(repr(k[:40]) for k in unknown[:5])
        return (f"This server does not know the request field{'s' if len(unknown) > 1 else ''} {names}; remove "
                f"{'them' if len(unknown) > 1 else 'it'} (a field it cannot honour is refused, never ignored).", unknown[0],
                "unknown_field")
    active = [k for k in data if k in NEUTRAL and not _is_neutral(k, data[k])]
    if active:
        shown = ", ".join(f"{k}={_short(data[k])}" for k in active)
        return (f"This server does not implement {shown}; leave {'them' if len(active) > 1 else 'it'} out (or at the "
                "neutral value) rather than get an answer that ignores it.", active[0], "unsupported_field")
    return None


def _is_neutral(name: str, value) -> bool:
    try:
        return bool(NEUTRAL[name](value))
    except Exception:  # noqa: BLE001 - an unhashable or odd value is not the neutral one
        return False


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 40 else text[:37] + "..."


def lone_surrogate(data) -> str | None:
    """Where in ``data`` (a parsed JSON body) a string holds a lone UTF-16 surrogate, e.g.
    ``messages.0.content``; ``None`` when every string is valid Unicode."""
    stack: list[tuple[str, object]] = [("", data)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return where or "the body"
        elif isinstance(value, dict):
            for k, v in value.items():
                stack.append((f"{where}.{k}" if where else str(k), v))
                stack.append((f"a key of {where or 'the body'}", str(k)))
        elif isinstance(value, list):
            stack.extend((f"{where}.{i}" if where else str(i), v) for i, v in enumerate(value))
    return None


# ----------------------------------------------------------------------------- responses

class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = []


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None
    refusal: None = None


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: Literal["stop", "length"]
    logprobs: ChoiceLogprobs | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "logitleak"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
