"""A black-box response (``--generate N``): every returned token's ``top_logprobs`` as arrays."""

from __future__ import annotations

import torch


def response_arrays(done: dict[int, dict], n: int, k: int, g: int, vocab: dict[str, int]) -> dict:
    """Every returned token's alternatives as ``gen_*`` arrays ``(n, G, k)``, ids from the run's
    vocabulary (new keys appended in sample, position, rank order)."""
    from logitleak.blackbox.audit import alternatives, token_key  # the token-key rules live there

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
