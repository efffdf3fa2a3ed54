"""A black-box answer read: token keys, sorted alternatives, and each returned token's top-k as arrays."""

from __future__ import annotations

import math

import torch


def token_key(token: str | None, raw: list[int] | None) -> str:
    """How an alternative is identified: its string, or its bytes when the string is unusable."""
    if token and "\ufffd" not in token:
        return token
    if raw:
        return "bytes:" + bytes(raw).hex()
    return token if token else "<empty>"


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


def response_arrays(done: dict[int, dict], n: int, k: int, g: int, vocab: dict[str, int]) -> dict:
    """Every returned token's alternatives as ``gen_*`` arrays ``(n, G, k)``, ids from the run's
    vocabulary (new keys appended in sample, position, rank order)."""
    lp = torch.full((n, g, k), float("nan"), dtype=torch.float32)
    ids = torch.full((n, g, k), -1, dtype=torch.long)
    tokens = torch.full((n, g), -1, dtype=torch.long)
    mask = torch.zeros((n, g), dtype=torch.bool)
    for i in range(n):
        rec = done.get(i)
        if rec is None:
            continue
        for j, entry in enumerate((rec.get("tokens") or [rec["first"]])[:g]):
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
