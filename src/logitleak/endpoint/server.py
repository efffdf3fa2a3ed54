"""Which server answers a black-box audit (vLLM, llama.cpp, logitleak's own), and what its token entries mean.

Told from ``GET /v1/models`` (each server's model card says who owns the model: ``"vllm"``,
``"logitleak"``, llama.cpp's ``"llamacpp"`` or llama-cpp-python's ``"me"`` with ``"permissions"``)
and from its answers (only vLLM started with ``--return-tokens-as-token-ids`` names tokens
``token_id:N``). What follows from it:

- vLLM and ``logitleak serve`` return the stop token (e.g. ``<|im_end|>``) as the last logprobs
  entry of a response that ended on it; llama.cpp does not. The stop token is no response
  position on the white-box side (:func:`logitleak.capture.generation.response_mask`), so the
  reader drops that entry (:func:`response_entries`).
- vLLM without the flag prints byte-fragment tokens as ``""`` with ``bytes: []``: different
  tokens that cannot be told apart; the fix is to restart it with the flag (:data:`VLLM_FIX`).
"""

from __future__ import annotations

from collections.abc import Iterable

from logitleak.endpoint.responses import names_token_ids

VLLM, LLAMACPP, LOGITLEAK, UNKNOWN = "vLLM", "llama.cpp", "logitleak", "unknown"
RETURNS_STOP_ENTRY = frozenset({VLLM, LOGITLEAK})
VLLM_FIX = "--return-tokens-as-token-ids"


def server_from_models(body) -> str | None:
    """The server behind a ``/v1/models`` answer (``None`` when it does not say)."""
    cards = body.get("data") if isinstance(body, dict) else None
    if not isinstance(cards, list) or not cards or not isinstance(cards[0], dict):
        return None
    owner = str(cards[0].get("owned_by", "")).lower()
    if owner == "vllm":
        return VLLM
    if owner == "logitleak":
        return LOGITLEAK
    if owner == "llamacpp" or (owner == "me" and "permissions" in cards[0]):
        return LLAMACPP
    return None


def server_from_answers(records: Iterable[dict]) -> str | None:
    """The server the cached answers themselves reveal, if any: ``token_id:N`` names are vLLM's."""
    return VLLM if any(names_token_ids(r) for r in records) else None


def response_entries(record: dict, server: str) -> list[dict]:
    """A cached answer's logprobs entries that are response positions: every returned token's,
    less the stop token's entry that vLLM and ``serve`` append to a response that ended on it."""
    entries = list(record.get("tokens") or [record["first"]])
    if server in RETURNS_STOP_ENTRY and record.get("finish_reason") == "stop" and entries:
        entries = entries[:-1]
    return entries
