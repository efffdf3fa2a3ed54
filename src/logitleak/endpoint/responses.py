"""A black-box answer read: token keys, sorted alternatives, and each returned token's top-k as arrays.

Token keys (how a returned alternative is identified across the whole audit):

- ``token_id:N`` (vLLM with ``--return-tokens-as-token-ids``): the token id itself, parsed
  exactly (``N`` a whole number, written without leading zeros);
- otherwise the token string; its bytes (``"bytes:<hex>"``) when the string is empty or holds
  U+FFFD (a partial UTF-8 character, where different tokens print the same);
- :data:`UNIDENTIFIED` when neither a usable string nor bytes came back: such alternatives
  are different tokens the endpoint printed alike, and are counted across the whole audit.
"""

from __future__ import annotations

import math
import re

import torch

UNIDENTIFIED = "<empty>"
_TOKEN_ID = re.compile(r"token_id:([0-9]{1,12})")


def token_id_of(token) -> int | None:
    """The id in a ``token_id:N`` token name, or ``None`` for any other token string."""
    if not isinstance(token, str):
        return None
    m = _TOKEN_ID.fullmatch(token)
    return int(m.group(1)) if m else None


def token_key(token: str | None, raw: list[int] | None) -> str:
    """How an alternative is identified: its ``token_id:N``, its string, its bytes when the string
    is unusable, or :data:`UNIDENTIFIED`."""
    tid = token_id_of(token)
    if tid is not None:
        return f"token_id:{tid}"
    if token and "\ufffd" not in token:
        return token
    if raw:
        return "bytes:" + bytes(raw).hex()
    return token if token else UNIDENTIFIED


def names_token_ids(record: dict) -> bool:
    """Whether a cached answer names its tokens ``token_id:N`` (vLLM's exact ids)."""
    first = record["first"]
    return any(token_id_of(t.get("token")) is not None for t in (first.get("top_logprobs") or [first]))


def is_unidentified(key: str) -> bool:
    """Whether a token key names no one token (no usable string, no bytes)."""
    return key == UNIDENTIFIED or ("\ufffd" in key and not key.startswith("bytes:"))


def first_token_entry(response: dict) -> tuple[dict | None, int]:
    """The first generated token's logprob entry and how many tokens came back."""
    choices = response.get("choices") or []
    if not choices:
        return None, 0
    logprobs = choices[0].get("logprobs") or {}
    content = logprobs.get("content") or []
    return (content[0] if content else None), len(content)


def alternatives(entry: dict) -> list[tuple[str, float]]:
    """``(key, logprob)`` of the returned alternatives, sorted descending (stable); the generated
    token itself when the endpoint sent no alternatives."""
    tops = entry.get("top_logprobs") or []
    if not tops and entry.get("logprob") is not None:
        tops = [entry]
    out = []
    for t in tops:
        lp = t.get("logprob")
        if lp is None or (isinstance(lp, float) and math.isnan(lp)):
            continue
        out.append((token_key(t.get("token"), t.get("bytes")), float(lp)))
    out.sort(key=lambda kv: -kv[1])
    return out


def response_arrays(entries: dict[int, list[dict]], n: int, k: int, g: int, vocab: dict[str, int]) -> dict:
    """Every response position's alternatives (``entries[i]``: sample ``i``'s logprobs entries,
    the stop token's already dropped) as ``gen_*`` arrays ``(n, G, k)``, ids from the run's
    vocabulary (new keys appended in sample, position, rank order)."""
    lp = torch.full((n, g, k), float("nan"), dtype=torch.float32)
    ids = torch.full((n, g, k), -1, dtype=torch.long)
    tokens = torch.full((n, g), -1, dtype=torch.long)
    mask = torch.zeros((n, g), dtype=torch.bool)
    for i in range(n):
        for j, entry in enumerate(entries.get(i, [])[:g]):
            alts = alternatives(entry)
            if not alts:
                continue
            mask[i, j] = True
            own = token_key(entry.get("token"), entry.get("bytes"))
            tokens[i, j] = vocab.setdefault(own, len(vocab))
            for r, (key, value) in enumerate(alts[:k]):
                lp[i, j, r] = value
                ids[i, j, r] = vocab.setdefault(key, len(vocab))
    return {"gen_topk_logprobs": lp, "gen_topk_ids": ids, "gen_tokens": tokens, "gen_mask": mask}
