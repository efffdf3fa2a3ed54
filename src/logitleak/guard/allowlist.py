"""The declared allowlist: the only numbers the guard passes on without defending them, and paths.

A number in a response either sits at a known log-probability position (rewritten by
:mod:`logitleak.guard.defender`) or matches one entry here; anything else is refused by
:func:`check_numbers` with the path of the field. An entry is a path pattern (segments joined by
``.``; ``[]`` is any list item, ``*`` any one key, a leading ``**`` any prefix, including none)
and the kind of number it may hold: a ``count`` (an integer >= 0), an ``int``, a ``byte``
(0..255) or, where a server reports measurements, any finite ``number``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from functools import lru_cache

Path = tuple  # of str keys and int list positions

ALLOWLIST: tuple[tuple[str, str], ...] = (
    # identity, time and position fields of OpenAI-format bodies (chat, completions, models, responses)
    ("**.created", "count"), ("**.created_at", "count"), ("**.completed_at", "count"),
    ("**.index", "count"), ("**.output_index", "count"), ("**.content_index", "count"),
    ("**.summary_index", "count"), ("**.sequence_number", "count"),
    # token counts: usage and its details (prompt_tokens_details.cached_tokens, ...)
    ("**.usage.*", "count"), ("**.usage.*.*", "count"),
    # token ids and byte values of text the response already shows
    ("**.bytes.[]", "byte"), ("**.text_offset.[]", "count"), ("**.token_ids.[]", "count"),
    ("**.prompt_token_ids.[]", "count"), ("**.stop_reason", "count"),
    # server facts: vLLM's model card, error codes, FastAPI's validation errors
    ("**.max_model_len", "count"), ("**.code", "int"), ("detail.[].loc.[]", "count"),
    # llama.cpp's native /completion: its counters, timings and an echo of the request's settings
    ("completion_probabilities.[].id", "count"), ("completion_probabilities.[].*.[].id", "count"),
    ("id_slot", "int"), ("tokens_predicted", "count"), ("tokens_evaluated", "count"), ("tokens_cached", "count"),
    ("tokens.[]", "count"), ("generation_settings.**", "number"),
) + tuple((f"{at}{name}", kind) for at in ("", "response.") for name, kind in (
    # the Responses API's echo of the request's settings (a response object, and the one its stream events carry)
    ("temperature", "number"), ("top_p", "number"), ("presence_penalty", "number"), ("frequency_penalty", "number"),
    ("max_output_tokens", "count"), ("max_tool_calls", "count"), ("top_logprobs", "count"))
) + tuple((f"timings.{name}", "number") for name in (
    "prompt_n", "prompt_ms", "prompt_per_token_ms", "prompt_per_second", "predicted_n", "predicted_ms",
    "predicted_per_token_ms", "predicted_per_second", "cache_n", "draft_n", "draft_n_accepted"))


class UndefendedLogprobs(Exception):
    """A response holds a number the guard neither defends nor allows (the message names its path)."""


def render_path(path: Iterable) -> str:
    """``("choices", 0, "logprobs")`` -> ``choices[0].logprobs`` (odd keys quoted as JSON strings)."""
    out = ""
    for seg in path:
        if isinstance(seg, int):
            out += f"[{seg}]"
        else:
            name = seg if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", seg) else _quoted(seg)
            out += f".{name}" if out else name
    return out or "(the body itself)"


def _quoted(key: str) -> str:
    import json

    return json.dumps(key)


def pattern_of(path: Iterable) -> tuple[str, ...]:
    """A concrete path with list positions generalised to ``[]``: the key known positions match."""
    return tuple("[]" if isinstance(seg, int) else seg for seg in path)


def _match(pattern: tuple[str, ...], segs: tuple[str, ...]) -> bool:
    if not pattern:
        return not segs
    head = pattern[0]
    if head == "**":
        return any(_match(pattern[1:], segs[i:]) for i in range(len(segs) + 1))
    if not segs:
        return False
    if head == "*":
        ok = segs[0] != "[]"
    else:
        ok = head == segs[0]
    return ok and _match(pattern[1:], segs[1:])


_RULES = tuple((tuple(p.split(".")), kind) for p, kind in ALLOWLIST)


@lru_cache(maxsize=4096)
def allowed_kind(segs: tuple[str, ...]) -> str | None:
    """The kind of number the allowlist lets through at a (generalised) path, or ``None``."""
    for pattern, kind in _RULES:
        if _match(pattern, segs):
            return kind
    return None


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_FITS = {"count": lambda v: isinstance(v, int) and v >= 0, "int": lambda v: isinstance(v, int),
         "byte": lambda v: isinstance(v, int) and 0 <= v <= 255, "number": lambda v: True}


def _fits(kind: str | None, value) -> bool:
    return kind is not None and is_number(value) and (not isinstance(value, float) or math.isfinite(value)) \
        and _FITS[kind](value)


def check_number(value, path: Path, pattern: tuple[str, ...] | None = None) -> None:
    """Refuse ``value`` (a number at ``path``; ``pattern``: that path generalised, when known)
    unless it is finite and allowed there as what it is. The message names the field, never the
    value (which may be the very number refused)."""
    kind = allowed_kind(pattern_of(path) if pattern is None else pattern)
    if _fits(kind, value):
        return
    where = render_path(path)
    if isinstance(value, float) and not math.isfinite(value):
        raise UndefendedLogprobs(f"the number at {where} is not finite, which strict JSON cannot carry")
    what = "a number" if kind is None else f"a {type(value).__name__} where only a {kind} may stand"
    raise UndefendedLogprobs(f"the field {where} holds {what} that the guard neither defends nor allows")


def check_numbers(value, path: Path, pattern: tuple[str, ...] | None = None) -> None:
    """Walk ``value`` (found at ``path``, generalised ``pattern``) and refuse the first number the
    allowlist does not cover."""
    stack = [(value, path, pattern_of(path) if pattern is None else pattern)]
    while stack:
        node, at, pat = stack.pop()
        if isinstance(node, dict):
            stack.extend((v, at + (k,), pat + (k,)) for k, v in node.items())
        elif isinstance(node, list):
            kind = allowed_kind(pat + ("[]",))
            if kind is None or not all(_fits(kind, v) for v in node):  # a list of allowed numbers: one look-up
                stack.extend((v, at + (i,), pat + ("[]",)) for i, v in enumerate(node))
        elif is_number(node):
            check_number(node, at, pat)
