"""The one generate pass of capture and ``serve``: ``model.generate`` with the capture's hooks and one stop rule.

An API at temperature 0 answers with a whole response and returns ``top_logprobs`` for every
token of it; a real chat model rarely answers in its first token. :func:`generate` runs
``model.generate`` once per batch of left-padded inputs, with the request's settings only (no
checkpoint sampling defaults), the model's end-of-sequence ids (:func:`logitleak.models.tokens.eos_ids`)
and per-row limits and stop strings, and returns every step's raw logits. ``serve`` answers
from it; :func:`capture_generate` runs it with forward hooks on the decoder blocks and keeps,
for each generated position ``j`` (the position whose output predicts response token ``j``;
``j = 0`` is the last prompt token, the usual read position):

- ``gen_hidden``: ``(B, N, L+1, D)`` raw residual at every layer;
- ``gen_topk_logprobs`` / ``gen_topk_ids``: ``(B, N, K)`` the API's top-k
  (:func:`logitleak.models.tokens.api_topk` of the raw logits, before any generation processor);
- ``gen_tokens``: ``(B, N)`` the generated tokens; ``gen_mask``: ``(B, N)`` the response's
  positions (:func:`response_mask`: the stop token and the padding after it are ``False``).

Position 0 also fills the first-token ``hidden`` ``(B, L+1, D)`` and full ``logits`` ``(B, V)``,
so every first-token level is computed from the same pass. So the server's log-probabilities
are the capture's by construction: the same inputs, the same call, the same logits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from logitleak.capture.hooks import EditHook, Recorder, check_edit_hooks, output_tensor, read_positions
from logitleak.capture.source import Capture
from logitleak.config import MAX_GENERATE
from logitleak.errors import LogitleakError
from logitleak.models.tokens import api_topk, check_k, eos_ids, pad_id


def check_generate(n: int) -> int:
    """``n`` as a valid number of generated tokens, or one sentence saying what to pass."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_GENERATE:
        raise LogitleakError(f"--generate {n!r} is not a valid number of generated tokens; pass a whole number from 1 "
                             f"to {MAX_GENERATE} (e.g. --generate 8), or leave it out to read only the first token.")
    return n


@dataclass(frozen=True)
class Decoding:
    """How a generate call picks tokens: greedy at ``temperature`` 0, else sampled with ``top_p``
    under ``seed`` (``None``: torch's current random state)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def sampled(self) -> bool:
        return self.temperature > 0


GREEDY = Decoding()


@dataclass
class Generated:
    """One generate call: ``tokens`` ``(B, S)`` for the ``S`` steps run (a row that stopped is
    padded), ``logits`` one ``(B, V)`` float32 tensor per step on the CPU (the model's raw
    logits, a request's logit bias included), ``hidden`` one ``(B, L+1, D)`` per step when hooks
    recorded the residual stream."""

    tokens: torch.Tensor
    logits: list[torch.Tensor]
    hidden: list[torch.Tensor] | None = None


def response_mask(tokens: torch.Tensor, n_steps: int | torch.Tensor, eos_ids: set[int] | frozenset[int]) -> torch.Tensor:
    """``(B, N)`` True where position ``j`` is part of the response: ``j`` below the steps run
    (``n_steps``: one count, or one per row), and neither token ``j`` nor any before it an
    end-of-sequence token. The stop token is no response position: an API that returns its
    entry (vLLM, ``serve``) has it dropped by the black-box reader, so both sides agree."""
    b, n = tokens.shape
    is_eos = torch.zeros_like(tokens, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= tokens == e
    ended_before = torch.zeros((b, n), dtype=torch.bool)
    if n > 1:
        ended_before[:, 1:] = torch.cumsum(is_eos[:, :-1].long(), dim=1) > 0
    limit = torch.as_tensor(n_steps).reshape(-1, 1)
    steps = torch.arange(n).unsqueeze(0) < limit
    return steps & ~ended_before & ~is_eos


def stop_cut(text: str, stops: Sequence[str]) -> int | None:
    """Where the first of ``stops`` begins in ``text`` (``None``: none occurs)."""
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


class _RowStop:
    """Per-row stopping for ``generate``: a row is done at its own limit or stop string
    (end-of-sequence tokens are ``generate``'s own rule)."""

    def __init__(self, t0: int, limits: Sequence[int], stops: Sequence[Sequence[str]], tokenizer, eos):
        self.t0, self.tokenizer, self.eos = t0, tokenizer, eos
        self.limits = torch.tensor(list(limits))
        self.stops = [list(s) for s in stops]

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        n = input_ids.shape[1] - self.t0
        done = (n >= self.limits).to(input_ids.device)
        for b, stops in enumerate(self.stops):
            if stops and not bool(done[b]):
                ids = [t for t in input_ids[b, self.t0:].tolist() if t not in self.eos]
                if stop_cut(self.tokenizer.decode(ids, skip_special_tokens=True), stops) is not None:
                    done[b] = True
        return done


class _StepRecorder(Recorder):
    """The capture hooks, re-aimed at each generation step: the read position of the prompt at
    step 0, the one new token afterwards."""

    def __init__(self, layers, edit_hooks, read_pos: torch.Tensor, hidden_dtype: torch.dtype):
        super().__init__(layers, edit_hooks)
        self.read_pos = read_pos
        self.hidden_dtype = hidden_dtype
        self.steps: list[torch.Tensor] = []

    def start_step(self, seq_len: int, batch: int) -> None:
        self.seq_len = seq_len
        self.pos = self.read_pos if not self.steps else torch.full((batch,), seq_len - 1, dtype=torch.long)
        self.states = [None] * (len(self.layers) + 1)

    def end_step(self) -> None:
        self.steps.append(self.stacked(self.hidden_dtype, "did not run during generation"))


def _step_hooks(model, recorder: _StepRecorder | None, logit_bias: torch.Tensor | None, batch: int) -> list:
    """Model-level hooks for one generate call: each step starts and ends the recorder's step;
    a logit bias is added to the model's output logits, so sampling, the returned logits and
    everything read from them see the biased distribution."""
    handles = []
    if recorder is not None:
        def pre(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            emb = kwargs.get("inputs_embeds")
            recorder.start_step(ids.shape[1] if ids is not None else emb.shape[1], batch)

        def post(module, args, kwargs, output):
            recorder.end_step()

        handles.append(model.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(model.register_forward_hook(post, with_kwargs=True))
    if logit_bias is not None:
        def bias(module, args, kwargs, output):
            logits = output.logits if hasattr(output, "logits") else output_tensor(output)
            biased = logits + logit_bias.to(logits.device, logits.dtype)[:, None, :]
            if hasattr(output, "logits"):
                output.logits = biased
                return output
            return (biased,) + tuple(output[1:])

        handles.append(model.register_forward_hook(bias, with_kwargs=True))
    return handles


@contextmanager
def _only_these_settings(model, config):
    """``generate`` fills unset options from the model's own generation config (a checkpoint's
    sampling defaults, repetition penalties...); a pass follows the settings it was given only."""
    saved = getattr(model, "generation_config", None)
    model.generation_config = config
    try:
        yield
    finally:
        model.generation_config = saved


@contextmanager
def _seeded(seed: int | None, device):
    if seed is None:
        yield
        return
    devices = [device] if getattr(device, "type", "cpu") == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed) % 2**64)
        yield


def generate(adapter, inputs: Mapping[str, torch.Tensor], *, max_new_tokens: int, decoding: Decoding = GREEDY,
             eos: set[int] | frozenset[int] | None = None, limits: Sequence[int] | None = None,
             stops: Sequence[Sequence[str]] | None = None, logit_bias: torch.Tensor | None = None,
             recorder: _StepRecorder | None = None) -> Generated:
    """``model.generate`` on one batch of left-padded ``inputs``: up to ``max_new_tokens`` tokens,
    row ``b`` stopping at ``limits[b]`` tokens, at one of ``stops[b]`` or at an end-of-sequence
    id (``eos``: the model's, :func:`~logitleak.models.tokens.eos_ids`, by default).
    ``logit_bias`` ``(B, V)`` is added to every step's logits; ``recorder`` hooks the decoder
    blocks (:func:`capture_generate`)."""
    from transformers import GenerationConfig, StoppingCriteriaList

    mask = inputs["attention_mask"]
    if not bool((mask[:, -1] == 1).all()):
        raise LogitleakError("Generation needs left-padded inputs (every prompt ending in the last column); build them "
                             "with the adapter's padding side set to 'left'.")
    b, t0 = mask.shape
    eos = eos_ids(adapter) if eos is None else frozenset(eos)
    sample = decoding.sampled
    config = GenerationConfig(
        max_new_tokens=int(max_new_tokens), min_new_tokens=0, do_sample=sample, num_beams=1,
        temperature=decoding.temperature if sample else 1.0, top_p=decoding.top_p if sample else 1.0,
        top_k=0 if sample else None, eos_token_id=sorted(eos) or None, pad_token_id=pad_id(adapter),
        output_logits=True, return_dict_in_generate=True)
    stopper = _RowStop(t0, limits if limits is not None else [max_new_tokens] * b, stops or [[]] * b,
                       adapter.tokenizer, eos)
    model = adapter.model
    handles = _step_hooks(model, recorder, logit_bias, b)
    try:
        with torch.inference_mode(), _only_these_settings(model, config), _seeded(decoding.seed if sample else None,
                                                                                   adapter.device):
            out = model.generate(**dict(inputs), generation_config=config,
                                 stopping_criteria=StoppingCriteriaList([stopper]))
    finally:
        for h in handles:
            h.remove()
    logits = [step.float().cpu() for step in (out.logits or ())]
    seq = out.sequences
    tokens = seq[:, t0:].cpu() if seq.shape[1] > t0 else torch.empty((b, 0), dtype=torch.long)
    return Generated(tokens=tokens[:, :len(logits)], logits=logits,
                     hidden=None if recorder is None else list(recorder.steps))


def capture_generate(adapter, inputs: Mapping[str, torch.Tensor], *, n_new: int, k: int,
                     edit_hooks: Mapping[int, EditHook] | None = None,
                     hidden_dtype: torch.dtype = torch.float32) -> Capture:
    """The generation pass on one batch of ready-made, left-padded inputs (see the module docstring)."""
    check_generate(n_new)
    check_edit_hooks(edit_hooks, adapter.n_layers)
    check_k(k, adapter.vocab_size)
    mask = inputs["attention_mask"]
    b = mask.shape[0]
    eos = eos_ids(adapter)
    rec = _StepRecorder(adapter.layers, edit_hooks, read_positions(mask), hidden_dtype)
    with rec:
        out = generate(adapter, inputs, max_new_tokens=n_new, eos=eos, recorder=rec)
    n_steps = len(out.logits)
    if n_steps == 0:
        raise LogitleakError(f"Generation with {adapter.name!r} ran no forward step; check the model's generate().")
    tokens = torch.full((b, n_new), -1, dtype=torch.long)
    tokens[:, :min(out.tokens.shape[1], n_new)] = out.tokens[:, :n_new]
    L1, D = adapter.n_layers + 1, adapter.d_model
    gen_hidden = torch.zeros((b, n_new, L1, D), dtype=hidden_dtype)
    gen_lp = torch.full((b, n_new, k), float("nan"), dtype=torch.float32)
    gen_ids = torch.full((b, n_new, k), -1, dtype=torch.long)
    for j, (hidden, logits) in enumerate(zip(out.hidden[:n_new], out.logits[:n_new])):
        gen_hidden[:, j] = hidden
        gen_lp[:, j], gen_ids[:, j] = api_topk(logits, k)
    valid = response_mask(tokens.clamp(min=0), min(n_steps, n_new), eos)
    gen_lp[~valid] = float("nan")
    gen_ids[~valid] = -1
    gen_hidden[~valid] = 0
    tokens[~valid] = -1
    return Capture(hidden=out.hidden[0].clone(), logits=out.logits[0].clone(), gen_hidden=gen_hidden,
                   gen_topk_logprobs=gen_lp, gen_topk_ids=gen_ids, gen_tokens=tokens, gen_mask=valid)


def decode_responses(tokenizer, tokens: torch.Tensor) -> list[str]:
    """The generated text of each row (``-1`` padding and special tokens dropped)."""
    return [tokenizer.decode([int(x) for x in row if int(x) >= 0], skip_special_tokens=True) for row in tokens]
