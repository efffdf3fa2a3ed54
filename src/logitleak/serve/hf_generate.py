"""One micro-batch of requests through transformers' own ``generate``: per-row stops, a fixed seed."""

from __future__ import annotations

from contextlib import contextmanager

import torch


def run_generate(model, inputs: dict, config, reqs: list, tokenizer, eos_ids: set[int], seed: int, device):
    """``model.generate`` on one left-padded batch with ``config`` (``output_logits=True``), each
    row stopping at its own ``max_tokens`` / stop strings, under ``seed``; transformers' output."""
    from transformers import StoppingCriteriaList

    stopper = _RowStop(int(inputs["input_ids"].shape[1]), reqs, tokenizer, eos_ids)
    with generation_defaults(model, config), seeded(seed, device):
        return model.generate(**inputs, generation_config=config, stopping_criteria=StoppingCriteriaList([stopper]))


class _RowStop:
    """Per-row stopping for ``generate``: a row is done at its own ``max_tokens`` or stop string
    (end-of-sequence tokens are ``generate``'s own rule)."""

    def __init__(self, t0: int, reqs: list[GenRequest], tokenizer, eos: set[int]):
        self.t0, self.tokenizer, self.eos = t0, tokenizer, eos
        self.limits = torch.tensor([r.max_tokens for r in reqs])
        self.stops = [r.stop for r in reqs]

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        n = input_ids.shape[1] - self.t0
        done = (n >= self.limits).to(input_ids.device)
        for b, stops in enumerate(self.stops):
            if stops and not bool(done[b]):
                ids = [t for t in input_ids[b, self.t0:].tolist() if t not in self.eos]
                if stop_cut(self.tokenizer.decode(ids, skip_special_tokens=True), stops) is not None:
                    done[b] = True
        return done


@contextmanager
def generation_defaults(model, config):
    """``generate`` fills unset options from the model's own generation config (a checkpoint's
    sampling defaults, repetition penalties...); the server's answer follows the request only."""
    saved = getattr(model, "generation_config", None)
    model.generation_config = config
    try:
        yield
    finally:
        model.generation_config = saved


@contextmanager
def seeded(seed: int, device):
    devices = [device] if getattr(device, "type", "cpu") == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def stop_cut(text: str, stops: list[str]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None
