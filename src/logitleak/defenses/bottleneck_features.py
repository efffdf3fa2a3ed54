"""What a bottleneck's objective reads from one batch: the task loss and every adversary's features.

:class:`Batches` turns the training split into model inputs (the adapter's one input path, left
padded; for a whole response, the base model's response appended for teacher forcing) and draws
batch ``s`` from ``(seed, s)`` alone. :func:`forward_features` runs one batch with gradients and
returns the task's cross-entropy and the features at every place an adversary reads: ``output``
(the log-probabilities, over every token or the tokens an API returned; for a response, each
token's highest log-probability over the response, as ``response_topk_ids`` combines them) and
``layer:l`` (the raw residual at the read position, or averaged over the response).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from logitleak.capture.forward import read_positions
from logitleak.data.probeset import ProbeSet
from logitleak.defenses.bottleneck import OUTPUT, AdversaryBank, BottleneckSettings


class _Taps:
    """Forward hooks keeping chosen decoder blocks' outputs ``(B, T, D)``, gradients intact."""

    def __init__(self, blocks: nn.ModuleList, layers: list[int]) -> None:
        self.blocks, self.layers = blocks, layers
        self.out: dict[int, torch.Tensor] = {}
        self.handles: list = []

    def __enter__(self) -> _Taps:
        for layer in self.layers:
            def hook(module, args, output, layer=layer):
                self.out[layer] = output[0] if isinstance(output, (tuple, list)) else output
            self.handles.append(self.blocks[layer - 1].register_forward_hook(hook))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


class Batches:
    """The training split as model inputs and targets, one seeded batch at a time."""

    def __init__(self, work, train_set: ProbeSet, targets: torch.Tensor, labels: Mapping[str, torch.Tensor],
                 response: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        self.work, self.set, self.targets, self.labels, self.response = work, train_set, targets, labels, response

    def indices(self, seed: int, step: int, size: int, extra: int = 0) -> np.ndarray:
        rng = np.random.default_rng([int(seed), int(step), int(extra), 0xB077])
        return np.sort(rng.choice(len(self.set), size=min(size, len(self.set)), replace=False))

    def inputs(self, idx: np.ndarray) -> dict:
        ps = self.set
        images = None if ps.images is None else [ps.images[int(i)] for i in idx]
        messages = None if ps.messages is None else [ps.messages[int(i)] for i in idx]
        side = self.work.padding_side
        self.work.set_padding_side("left")  # every prompt ends in the last column
        try:
            inputs = self.work.build_inputs([ps.prompts[int(i)] for i in idx], images, messages=messages)
        finally:
            self.work.set_padding_side(side)
        if self.response is not None:  # teacher forcing: the base model's response after the prompt
            tokens, mask = self.response[0][idx], self.response[1][idx]
            inputs["input_ids"] = torch.cat([inputs["input_ids"], tokens.clamp(min=0)], dim=1)
            inputs["attention_mask"] = torch.cat([inputs["attention_mask"], mask.long()], dim=1)
        return inputs


def forward_features(work, inputs: dict, idx: np.ndarray, batches: Batches, taps_layers: list[int],
             candidates: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Task loss and the features every adversary reads (``output`` and ``layer:l``) for one batch."""
    with _Taps(work.layers, taps_layers) as taps:
        if batches.response is None:
            pos = read_positions(inputs["attention_mask"])
            kw = work.forward_kwargs(inputs, pos)
            logits = work.model(**kw).logits
            logits = logits[:, 0] if "logits_to_keep" in kw else logits[torch.arange(len(pos)), pos]
            task = nn.functional.cross_entropy(logits.float(), batches.targets[idx])  # hard ids or soft targets
            feats = {OUTPUT: output_view(logits.float(), candidates)}
            rows = torch.arange(len(pos))
            for layer in taps_layers:
                feats[f"layer:{layer}"] = taps.out[layer][rows, pos]
            return task, feats
        tokens = batches.response[0][idx]
        g = tokens.shape[1]
        kw = work.forward_kwargs(inputs)
        kw["logits_to_keep"] = g + 1
        logits = work.model(**kw).logits[:, :g].float()   # position j predicts response token j
        keep = tokens >= 0                                  # the response and its end token
        task = nn.functional.cross_entropy(logits[keep], tokens[keep])
        shown = batches.labels["__shown__"][idx]            # positions an API returns (before the end)
        lp = output_view(logits, candidates).masked_fill(~shown.unsqueeze(-1), float("-inf"))
        feats = {OUTPUT: lp.amax(1).clamp(min=-100.0)}      # the bag of alternatives, as response_topk_ids
        start = inputs["input_ids"].shape[1] - g - 1
        w = shown.float().unsqueeze(-1)
        for layer in taps_layers:
            h = taps.out[layer][:, start:start + g]
            feats[f"layer:{layer}"] = (h * w).sum(1) / w.sum(1).clamp(min=1)
        return task, feats


@torch.no_grad()
def answer_mean_targets(adapter, train_set: ProbeSet, answer_ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``(N, V)`` soft targets: for each sample, the base model's output distribution averaged over the
    training samples with the same answer. Trained towards them, the model keeps its answer and its
    confidence in it, and its output depends on nothing but the answer (what the task needs)."""
    from logitleak.capture.forward import iter_capture

    probs = torch.cat([torch.softmax(part.logits.float(), dim=-1) for part in
                       iter_capture(adapter, train_set, batch_size=batch_size, progress=False, vision_pool=None)])
    classes, inverse = torch.unique(answer_ids, return_inverse=True)
    means = torch.zeros((len(classes), probs.shape[1]), dtype=torch.float64)
    means.index_add_(0, inverse, probs.double())
    means /= torch.bincount(inverse, minlength=len(classes)).unsqueeze(1).double()
    return means[inverse].float()


@torch.no_grad()
def all_features(work, batches: Batches, guarded: list[int], candidates, batch_size: int) -> dict[str, torch.Tensor]:
    """Every training sample's adversary features under the model as it is now (no gradients)."""
    parts: dict[str, list[torch.Tensor]] = {}
    n = len(batches.set)
    for b0 in range(0, n, batch_size):
        idx = np.arange(b0, min(n, b0 + batch_size))
        _, feats = forward_features(work, batches.inputs(idx), idx, batches, guarded, candidates)
        for k, v in feats.items():
            parts.setdefault(k, []).append(v.float())
    return {k: torch.cat(v) for k, v in parts.items()}


def fit_adversaries(bank: AdversaryBank, opt, buffer: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor],
                     settings: BottleneckSettings, steps: int, seed: list[int]) -> None:
    """``steps`` adversary updates on random rows of the feature buffer (the model untouched)."""
    rng = np.random.default_rng(seed)
    n = next(iter(buffer.values())).shape[0]
    for _ in range(steps):
        rows = torch.from_numpy(rng.choice(n, size=min(n, settings.adversary_batch), replace=False))
        loss, _ = bank.loss({k: v[rows] for k, v in buffer.items()}, {a: labels[a][rows] for a in settings.protect}, 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def output_view(logits: torch.Tensor, candidates: torch.Tensor | None) -> torch.Tensor:
    lp = torch.log_softmax(logits, dim=-1)
    return lp if candidates is None else lp[..., candidates]


def response_targets(cap, adapter) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(tokens, shown, topk_ids)`` of a generation capture (``capture(..., generate=G)`` of the base
    model) for :func:`~logitleak.defenses.bottleneck_train.train_bottleneck`: the response with its end
    token where it ended (``-1`` after), the positions an API returns, and their top-k ids."""
    shown = cap.gen_mask.bool()
    tokens = torch.where(shown, cap.gen_tokens, torch.full_like(cap.gen_tokens, -1))
    eos = getattr(adapter.model.generation_config, "eos_token_id", None)
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    eos = adapter.tokenizer.eos_token_id if eos is None else eos
    n = shown.sum(1)
    ended = n < tokens.shape[1]
    tokens[ended.nonzero().squeeze(1), n[ended]] = int(eos)
    return tokens, shown, cap.gen_topk_ids
