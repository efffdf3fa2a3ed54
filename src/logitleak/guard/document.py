"""Parse, defend, re-serialise one JSON document: the guard's one rule applied to a body or an event.

:func:`defend_json` reads strict JSON (RFC 8259: no ``NaN`` / ``Infinity``), walks the whole tree,
hands each known log-probability position (:data:`KNOWN_POSITIONS`) to the
:class:`~logitleak.guard.defender.ResponseDefender`, checks every other number against the
allowlist, and writes strict JSON from the parsed object: the upstream's bytes never reach the
client. Pure and picklable, so a large body can be defended in another process.
"""

from __future__ import annotations

import json

from logitleak.guard.allowlist import UndefendedLogprobs, check_number, is_number, pattern_of
from logitleak.guard.defender import ResponseDefender

# Where servers put log-probabilities (list positions as []): chat and legacy completions per
# choice, vLLM's prompt_logprobs (chat: top level; completions: per choice), llama.cpp's native
# /completion, and the Responses API (a response's output, its stream events' items, parts, deltas).
KNOWN_POSITIONS: dict[tuple[str, ...], str] = {
    ("choices", "[]", "logprobs"): "choice",
    ("prompt_logprobs",): "prompt",
    ("choices", "[]", "prompt_logprobs"): "prompt",
    ("completion_probabilities",): "llamacpp",
    ("output", "[]", "content", "[]", "logprobs"): "entries",
    ("response", "output", "[]", "content", "[]", "logprobs"): "entries",
    ("item", "content", "[]", "logprobs"): "entries",
    ("part", "logprobs"): "entries",
    ("logprobs",): "entries",
}


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def loads_strict(data: bytes | str):
    """JSON text -> objects, refusing what RFC 8259 does not allow (``NaN``, ``Infinity``) and
    documents nested past the parser's limit."""
    try:
        return json.loads(data, parse_constant=_no_constant)
    except RecursionError:
        raise UndefendedLogprobs("the body nests JSON too deeply to read") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise UndefendedLogprobs(f"the body is not valid JSON ({str(err)[:120]})") from None


def dumps_strict(obj) -> bytes:
    """Objects -> compact strict JSON (UTF-8; lone surrogates escaped)."""
    try:
        try:
            text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            return text.encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()
    except RecursionError:
        raise UndefendedLogprobs("the body nests JSON too deeply to write") from None
    except ValueError as err:
        raise UndefendedLogprobs(f"the body holds a value strict JSON cannot carry ({err})") from None


def defend_document(obj, defender: ResponseDefender, request_key: bytes, offsets: dict | None = None) -> None:
    """Defend a parsed document in place: known positions rewritten, every other number checked.

    ``offsets``: tokens already seen per position in this stream (updated), so each chunk's noise
    seed differs.
    """
    offsets = {} if offsets is None else offsets
    if is_number(obj):
        check_number(obj, ())
    stack = [(obj, ())] if isinstance(obj, (dict, list)) else []
    while stack:
        node, path = stack.pop()
        for key, value in (node.items() if isinstance(node, dict) else enumerate(node)):
            at = path + (key,)
            kind = KNOWN_POSITIONS.get(pattern_of(at))
            if kind == "choice" and isinstance(node, dict):
                defender.choice(node, at, request_key, offsets)
            elif kind is not None:
                defender.other(kind, value, at, request_key, offsets)
            elif isinstance(value, (dict, list)):
                stack.append((value, at))
            elif is_number(value):
                check_number(value, at)


def defend_json(data: bytes | str, defender: ResponseDefender, request_key: bytes,
                offsets: dict | None = None) -> tuple[bytes, dict]:
    """A JSON body or event -> (its defended strict-JSON bytes, the stream's updated offsets);
    :class:`UndefendedLogprobs` when any number in it cannot be defended or allowed."""
    offsets = dict(offsets or {})
    obj = loads_strict(data)
    try:
        defend_document(obj, defender, request_key, offsets)
    except RecursionError:
        raise UndefendedLogprobs("the body nests JSON too deeply to read") from None
    return dumps_strict(obj), offsets
