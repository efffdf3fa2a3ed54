"""The token rules every pass, level, defence and server shares: EOS, pad, k within the vocabulary, API top-k.

Each rule is written once here and read by the white-box capture, generation, the levels, the
output-side defences and both servers, so "what the model stops on" and "what an API with
``top_logprobs=k`` returns" cannot drift apart between them.
"""

from __future__ import annotations

import numpy as np
import torch

from logitleak.errors import LogitleakError


def eos_ids(adapter) -> frozenset[int]:
    """Every end-of-sequence id the model declares: its generation config, its config and its
    tokeniser (a chat model often ends its turn on a token only one of them names)."""
    ids: set[int] = set()
    for src in (getattr(adapter.model, "generation_config", None), getattr(adapter, "config", None), adapter.tokenizer):
        val = getattr(src, "eos_token_id", None) if src is not None else None
        if isinstance(val, int) and not isinstance(val, bool):
            ids.add(val)
        elif isinstance(val, (list, tuple)):
            ids.update(int(v) for v in val)
    return frozenset(ids)


def pad_id(adapter, eos: frozenset[int] | set[int] | None = None) -> int:
    """The id ``generate`` fills finished rows with: the tokeniser's pad token, else the smallest
    end-of-sequence id, else 0."""
    pad = getattr(adapter.tokenizer, "pad_token_id", None)
    if pad is not None:
        return int(pad)
    eos = eos_ids(adapter) if eos is None else eos
    return min(eos) if eos else 0


def check_k(k, available: int, what: str = "top-k", of: str = "the vocabulary has", at_least: int = 1) -> None:
    """The one check that ``k`` alternatives are a whole number from ``at_least`` (0: an API
    asked for the chosen token's log-probability only) and fit ``available`` (a vocabulary, or
    the values a capture holds)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < at_least:
        raise LogitleakError(f"{what}: k={k!r} is not valid; pass a positive whole number such as 5.")
    if k > available:
        raise LogitleakError(f"{what} asks for more alternatives than {of} ({available}): k={k} is larger than "
                             f"{available}; use k <= {available}.")


def api_logprobs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The log-probabilities an API computes from final logits: log-softmax over the vocabulary
    in at least float32 (after ``temperature`` when a defence tempers the distribution)."""
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if temperature != 1.0:
        x = x / temperature
    return torch.log_softmax(x, dim=-1)


def api_topk(logits: torch.Tensor, k: int, temperature: float = 1.0,
             logprobs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """What an API with ``top_logprobs=k`` returns per row: the k largest log-probabilities,
    sorted descending, and their token ids (``logprobs``: :func:`api_logprobs` of ``logits``,
    when the caller already holds them)."""
    check_k(k, logits.shape[-1], at_least=0)
    lp = api_logprobs(logits, temperature) if logprobs is None else logprobs
    top = torch.topk(lp, k, dim=-1, sorted=True)
    return top.values, top.indices
