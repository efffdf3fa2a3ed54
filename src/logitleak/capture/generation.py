"""One greedy generation pass -> the residual stream and top-k at every generated position.

An API at temperature 0 answers with a whole response and returns ``top_logprobs`` for every
token of it; a real chat model rarely answers in its first token. :func:`capture_generate` runs
``model.generate`` (greedy, ``max_new_tokens=N``) once per batch with forward hooks on the decoder
blocks, and keeps, for each generated position ``j`` (the position whose output predicts response
token ``j``; ``j = 0`` is the last prompt token, the usual read position):

- ``gen_hidden``: ``(B, N, L+1, D)`` raw residual at every layer;
- ``gen_topk_logprobs`` / ``gen_topk_ids``: ``(B, N, K)`` top-k log-probabilities (of the raw
  logits, before any generation processor) and their token ids;
- ``gen_tokens``: ``(B, N)`` the generated tokens; ``gen_mask``: ``(B, N)`` the positions an API
  returns (the end-of-sequence token and the padding after it are ``False``).

Position 0 also fills the first-token ``hidden`` ``(B, L+1, D)`` and full ``logits`` ``(B, V)``,
so every first-token level is computed from the same pass.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from logitleak.capture.hooks import EditHook, Recorder, check_edit_hooks, output_tensor, read_positions
from logitleak.capture.source import Capture
from logitleak.config import MAX_GENERATE
from logitleak.errors import LogitleakError


def check_generate(n: int) -> int:
    """``n`` as a valid number of generated tokens, or one sentence saying what to pass."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_GENERATE:
        raise LogitleakError(f"--generate {n!r} is not a valid number of generated tokens; pass a whole number from 1 "
                             f"to {MAX_GENERATE} (e.g. --generate 8), or leave it out to read only the first token.")
    return n


def _eos_ids(adapter) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(adapter.model, "generation_config", None), adapter.config, adapter.tokenizer):
        val = getattr(src, "eos_token_id", None) if src is not None else None
        if isinstance(val, int):
            ids.add(val)
        elif isinstance(val, (list, tuple)):
            ids.update(int(v) for v in val)
    return ids


def response_mask(tokens: torch.Tensor, n_steps: int, eos_ids: set[int]) -> torch.Tensor:
    """``(B, N)`` True where position ``j`` is part of the response an API returns: ``j`` below the
    steps run, and neither token ``j`` nor any before it an end-of-sequence token (an API returns
    no logprobs for the stop token)."""
    b, n = tokens.shape
    is_eos = torch.zeros_like(tokens, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= tokens == e
    ended_before = torch.zeros((b, n), dtype=torch.bool)
    if n > 1:
        ended_before[:, 1:] = torch.cumsum(is_eos[:, :-1].long(), dim=1) > 0
    steps = torch.arange(n).unsqueeze(0) < n_steps
    return steps & ~ended_before & ~is_eos


class _StepRecorder(Recorder):
    """The capture hooks, re-aimed at each generation step: the read position of the prompt at
    step 0, the one new token afterwards."""

    def __init__(self, layers, edit_hooks, read_pos: torch.Tensor):
        super().__init__(layers, edit_hooks)
        self.read_pos = read_pos
        self.steps: list[tuple[torch.Tensor, torch.Tensor]] = []

    def start_step(self, seq_len: int, batch: int) -> None:
        self.seq_len = seq_len
        self.pos = self.read_pos if not self.steps else torch.full((batch,), seq_len - 1, dtype=torch.long)
        self.states = [None] * (len(self.layers) + 1)

    def end_step(self, logits: torch.Tensor, hidden_dtype: torch.dtype) -> None:
        hidden = self.stacked(hidden_dtype, "did not run during generation")
        self.steps.append((hidden, logits.float().cpu()))


def capture_generate(adapter, inputs: Mapping[str, torch.Tensor], *, n_new: int, k: int,
                     edit_hooks: Mapping[int, EditHook] | None = None,
                     hidden_dtype: torch.dtype = torch.float32) -> Capture:
    """The generation pass on one batch of ready-made, left-padded inputs (see the module docstring)."""
    from transformers import GenerationConfig

    check_generate(n_new)
    check_edit_hooks(edit_hooks, adapter.n_layers)
    mask = inputs["attention_mask"]
    if not bool((mask[:, -1] == 1).all()):
        raise LogitleakError("Generation needs left-padded inputs (every prompt ending in the last column); build them "
                             "with the adapter's padding side set to 'left'.")
    b, t = mask.shape
    if k > adapter.vocab_size:
        raise LogitleakError(f"k={k} is larger than the vocabulary ({adapter.vocab_size}); pass a smaller k.")
    eos = _eos_ids(adapter)
    pad = getattr(adapter.tokenizer, "pad_token_id", None)
    gen_cfg = GenerationConfig(do_sample=False, max_new_tokens=n_new, min_new_tokens=0, num_beams=1,
                               eos_token_id=sorted(eos) or None, pad_token_id=pad if pad is not None else (min(eos) if eos else 0))
    rec = _StepRecorder(adapter.layers, edit_hooks, read_positions(mask))

    def model_pre(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        emb = kwargs.get("inputs_embeds")
        seq = ids.shape[1] if ids is not None else emb.shape[1]
        rec.start_step(seq, b)

    def model_post(module, args, kwargs, output):
        logits = output.logits if hasattr(output, "logits") else output_tensor(output)
        rec.end_step(logits[:, -1], hidden_dtype)

    with torch.inference_mode(), rec:
        h1 = adapter.model.register_forward_pre_hook(model_pre, with_kwargs=True)
        h2 = adapter.model.register_forward_hook(model_post, with_kwargs=True)
        try:
            out = adapter.model.generate(**dict(inputs), generation_config=gen_cfg)
        finally:
            h1.remove()
            h2.remove()
    n_steps = len(rec.steps)
    if n_steps == 0:
        raise LogitleakError(f"Generation with {adapter.name!r} ran no forward step; check the model's generate().")
    new = out[:, t:].cpu() if out.shape[1] > t else torch.empty((b, 0), dtype=torch.long)
    tokens = torch.full((b, n_new), -1, dtype=torch.long)
    tokens[:, :min(new.shape[1], n_new)] = new[:, :n_new]
    L1, D = adapter.n_layers + 1, adapter.d_model
    gen_hidden = torch.zeros((b, n_new, L1, D), dtype=hidden_dtype)
    gen_lp = torch.full((b, n_new, k), float("nan"), dtype=torch.float32)
    gen_ids = torch.full((b, n_new, k), -1, dtype=torch.long)
    for j, (hidden, logits) in enumerate(rec.steps[:n_new]):
        gen_hidden[:, j] = hidden
        top = torch.topk(torch.log_softmax(logits, dim=-1), k, dim=-1, sorted=True)
        gen_lp[:, j], gen_ids[:, j] = top.values, top.indices
    valid = response_mask(tokens.clamp(min=0), min(n_steps, n_new), eos)
    gen_lp[~valid] = float("nan")
    gen_ids[~valid] = -1
    gen_hidden[~valid] = 0
    tokens[~valid] = -1
    first_hidden, first_logits = rec.steps[0]
    return Capture(hidden=first_hidden.clone(), logits=first_logits.clone(), gen_hidden=gen_hidden,
                   gen_topk_logprobs=gen_lp, gen_topk_ids=gen_ids, gen_tokens=tokens, gen_mask=valid)


def decode_responses(tokenizer, tokens: torch.Tensor) -> list[str]:
    """The generated text of each row (``-1`` padding and special tokens dropped)."""
    return [tokenizer.decode([int(x) for x in row if int(x) >= 0], skip_special_tokens=True) for row in tokens]
