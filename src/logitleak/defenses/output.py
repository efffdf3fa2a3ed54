"""Output-side defences: transforms of what an API returns for the first answer token."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from logitleak.defenses.spec import Defense
from logitleak.errors import LogitleakError


@dataclass
class ApiView:
    """What an API returns per sample: ``(N, K)`` log-probabilities (descending) and token ids.

    Missing entries are ``nan`` (values) / ``-1`` (ids): ``values_only`` drops ids,
    ``ranks_only`` drops values.
    """

    logprobs: torch.Tensor
    ids: torch.Tensor

    @property
    def k(self) -> int:
        return self.logprobs.shape[1]

    def top1(self) -> torch.Tensor:
        """The id of the highest-ranked alternative (what a client takes as the answer)."""
        return self.ids[:, 0]


def api_view(logits: torch.Tensor, k: int, temperature: float = 1.0) -> ApiView:
    """Top-k log-probabilities of the final logits, as an API computes them."""
    vocab = logits.shape[-1]
    if k > vocab:
        raise LogitleakError(f"Defence topk:{k} asks for more alternatives than the vocabulary has ({vocab}); use k <= {vocab}.")
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
    values, ids = torch.topk(logprobs, k, dim=-1)
    return ApiView(values, ids)


def apply_output_defense(logits: torch.Tensor, defense: Defense, k: int, seed: int = 0) -> ApiView:
    """Apply a defence's output-side transforms, in order, to what an API with ``top_logprobs=k`` returns."""
    temperature, top = 1.0, k
    for t in defense.output_side:
        if t.name == "temperature":
            temperature *= float(t.value)
        if t.name == "topk":
            top = min(top, int(t.value))
    if any(t.name == "topk" and int(t.value) > logits.shape[-1] for t in defense.output_side):
        bad = next(t for t in defense.output_side if t.name == "topk" and int(t.value) > logits.shape[-1])
        raise LogitleakError(f"Defence topk:{bad.value} asks for more alternatives than the vocabulary has ({logits.shape[-1]}); use k <= {logits.shape[-1]}.")
    view = api_view(logits, top, temperature)
    gen = torch.Generator().manual_seed(seed)
    values, ids = view.logprobs.clone(), view.ids.clone()
    for t in defense.output_side:
        if t.name == "round":
            scale = 10.0 ** int(t.value)
            values = torch.round(values * scale) / scale
        elif t.name == "gauss" and t.value > 0:
            values = values + float(t.value) * torch.randn(values.shape, generator=gen)
        elif t.name == "laplace" and t.value > 0:
            u = torch.rand(values.shape, generator=gen) - 0.5
            values = values - float(t.value) * torch.sign(u) * torch.log1p(-2 * u.abs())
        if t.name in ("gauss", "laplace"):  # an API lists alternatives in the order of the numbers it returns
            values = values.clamp(max=0.0)
            order = torch.argsort(values, dim=1, descending=True, stable=True)
            values, ids = values.gather(1, order), ids.gather(1, order)
    for t in defense.output_side:
        if t.name == "values_only":
            ids = torch.full_like(ids, -1)
        elif t.name == "ranks_only":
            values = torch.full_like(values, float("nan"))
    return ApiView(values, ids)
