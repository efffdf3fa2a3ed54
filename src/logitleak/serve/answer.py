"""One generated row -> the API's answer: tokens up to the stop rule, text, each kept token's defended logprobs.

The response's tokens are the generate pass's :func:`~logitleak.capture.generation.response_mask`
(the white-box capture's rule) plus, when the row ended on an end-of-sequence token, that stop
token, whose entry is returned as vLLM returns it (the black-box reader drops it again). Output
defences act only through :func:`~logitleak.defenses.output.apply_output_defense`, on the
API's float32 log-probabilities (:func:`~logitleak.models.tokens.api_logprobs`, the capture's),
transformed in float64 so a rounded value goes on the wire as the short decimal it is.
"""

from __future__ import annotations

import torch

from logitleak.capture.generation import response_mask, stop_cut
from logitleak.defenses.output import apply_output_defense
from logitleak.defenses.spec import Defense
from logitleak.serve.requests import Alternative, GenRequest, GenResult, Step
from logitleak.serve.tokens import TokenTable
from logitleak.wire.bodies import HIDDEN_TOKEN, wire_logprob


def kept_tokens(tokens: list[int], req: GenRequest, eos: frozenset[int], tokenizer) -> tuple[list[int], str, str]:
    """The tokens the answer keeps (its content, then the stop token if it ended on one), its
    text (cut before a stop string) and its finish reason."""
    limit = min(len(tokens), req.max_tokens)
    content = int(response_mask(torch.tensor([tokens], dtype=torch.long), limit, eos)[0].sum()) if tokens else 0
    ended = content < limit and tokens[content] in eos
    kept = tokens[:content + int(ended)]
    finish = "stop" if ended else "length"
    if req.stop:
        for n in range(1, content + 1):
            text = tokenizer.decode(tokens[:n], skip_special_tokens=True)
            cut = stop_cut(text, req.stop)
            if cut is not None:
                return tokens[:n], text[:cut], "stop"
    return kept, tokenizer.decode(tokens[:content], skip_special_tokens=True), finish


def answer_row(tokens: list[int], logits: torch.Tensor, req: GenRequest, *, eos: frozenset[int], tokenizer,
               table: TokenTable, defense: Defense, seed: int, n_prompt: int) -> GenResult:
    """One row of a generate call (``tokens`` and their ``(S, V)`` float32 logits) -> its result."""
    kept, text, finish = kept_tokens(tokens, req, eos, tokenizer)
    steps = logprob_steps(kept, logits[:len(kept)], req.top_logprobs, table, defense, seed) \
        if req.top_logprobs is not None else []
    return GenResult(text=text, finish_reason=finish, steps=steps, prompt_tokens=n_prompt,
                     completion_tokens=len(kept), logprobs=req.top_logprobs is not None)


def logprob_steps(tokens: list[int], logits: torch.Tensor, top: int, table: TokenTable, defense: Defense,
                  seed: int) -> list[Step]:
    """The defended log-probabilities of every kept token and its ``top`` alternatives."""
    if not tokens:
        return []
    k = min(int(top), logits.shape[-1])
    chosen = torch.tensor(tokens, dtype=torch.long)[:, None]
    view = apply_output_defense(logits.float(), defense, k, seed=seed, extra_ids=chosen, dtype=torch.float64)
    steps = []
    for i, tid in enumerate(tokens):
        alts = []
        for v, a in zip(view.logprobs[i].tolist(), view.ids[i].tolist()):
            tok, raw = (HIDDEN_TOKEN, None) if a < 0 else table(a)
            alts.append(Alternative(tok, wire_logprob(v), raw))
        tok, raw = table(tid)
        steps.append(Step(tid, tok, raw, wire_logprob(float(view.extra[i, 0])), alts))
    return steps
