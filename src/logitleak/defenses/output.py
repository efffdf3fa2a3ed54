"""Output-side defences: transforms of the top-k log-probabilities an API returns per token.

:func:`apply_output_defense` starts from the model's logits (``defend``, the server);
:func:`defend_view` starts from log-probabilities an API already returned (the guard in front
of another server). Both apply the same transforms in the same order with the same seed rule:
one ``torch.Generator`` seeded with ``seed`` draws all the noise of one call, row by row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from logitleak.defenses.spec import Defense
from logitleak.errors import LogitleakError
from logitleak.models.tokens import api_logprobs, api_topk, check_k


@dataclass
class ApiView:
    """What an API returns per sample: ``(N, K)`` log-probabilities (descending) and token ids.

    Missing entries are ``nan`` (values) / ``-1`` (ids): ``values_only`` drops ids,
    ``ranks_only`` drops values. ``extra``: ``(N, E)`` defended log-probabilities of tokens asked
    for beside the list (the token a server generated), ``None`` when none were asked for.
    """

    logprobs: torch.Tensor
    ids: torch.Tensor
    extra: torch.Tensor | None = None

    @property
    def k(self) -> int:
        return self.logprobs.shape[1]

    def top1(self) -> torch.Tensor:
        """The id of the highest-ranked alternative (what a client takes as the answer)."""
        return self.ids[:, 0]


def check_defense(defense: Defense, vocab: int) -> None:
    """Refuse a defence that cannot apply to a vocabulary of ``vocab`` tokens (``topk:k`` with k > vocab)."""
    for t in defense.output_side:
        if t.name == "topk":
            check_k(int(t.value), vocab, f"Defence topk:{t.value}")


def api_view(logits: torch.Tensor, k: int, temperature: float = 1.0) -> ApiView:
    """Top-k log-probabilities of the final logits, as an API computes them."""
    check_k(k, logits.shape[-1], f"Defence topk:{k}")
    return ApiView(*api_topk(logits.float(), k, temperature))


def apply_output_defense(logits: torch.Tensor, defense: Defense, k: int, seed: int = 0,
                         extra_ids: torch.Tensor | None = None, dtype: torch.dtype | None = None) -> ApiView:
    """Apply a defence's output-side transforms, in order, to what an API with ``top_logprobs=k`` returns.

    ``extra_ids`` ``(N, E)``: tokens whose defended log-probability is wanted beside the list (a
    server's generated token); one in the list gets exactly its listed value. ``dtype``: the
    precision the transforms run in, after the API's log-probabilities (the server's float64,
    so a rounded value is the short decimal it names).
    """
    check_defense(defense, logits.shape[-1])
    temperature = 1.0
    for t in defense.output_side:
        if t.name == "temperature":
            temperature *= float(t.value)
    check_k(k, logits.shape[-1], f"Defence topk:{k}", at_least=0)
    logprobs = api_logprobs(logits, temperature)
    if dtype is not None:
        logprobs = logprobs.to(dtype)
    values, ids = api_topk(logits, k, logprobs=logprobs)
    extra = None if extra_ids is None else logprobs.gather(1, extra_ids.long())
    after = Defense(tuple(t for t in defense.output_side if t.name != "temperature"))
    return defend_view(ApiView(values, ids), after, seed=seed, extra_ids=extra_ids, extra=extra)


def defend_view(view: ApiView, defense: Defense, seed: int = 0, extra_ids: torch.Tensor | None = None,
                extra: torch.Tensor | None = None) -> ApiView:
    """The value transforms of a defence (``topk``, ``round``, ``gauss``, ``laplace``) and its
    redactions (``values_only``, ``ranks_only``) applied to log-probabilities already computed.

    ``temperature`` needs the whole distribution, which returned log-probabilities do not hold:
    it is refused here (:func:`apply_output_defense` applies it to the logits first). ``extra``
    ``(N, E)`` are the raw log-probabilities of ``extra_ids`` and get the same transforms.
    """
    if any(t.name == "temperature" for t in defense.output_side):
        raise LogitleakError("Defence temperature needs the model's full distribution, which returned "
                             "log-probabilities do not hold; apply it where the logits are (serve, defend).")
    top = view.k
    for t in defense.output_side:
        if t.name == "topk":
            top = min(top, int(t.value))
    dtype = _at_least_float32(view.logprobs)
    values, ids = view.logprobs[:, :top].to(dtype).clone(), view.ids[:, :top].clone()
    extra = None if extra is None else extra.to(dtype).clone()
    gen = torch.Generator().manual_seed(int(seed) % 2**64)
    for t in defense.output_side:
        values = _transform(values, t, gen)
        if extra is not None:
            extra = _transform(extra, t, gen)
        if t.name in ("gauss", "laplace"):  # an API lists alternatives in the order of the numbers it returns
            order = torch.argsort(values, dim=1, descending=True, stable=True)
            values, ids = values.gather(1, order), ids.gather(1, order)
    if extra is not None and extra_ids is not None and ids.shape[1]:
        match = extra_ids.long()[:, :, None] == ids[:, None, :]
        listed = values.gather(1, match.float().argmax(-1))
        extra = torch.where(match.any(-1), listed, extra)
    for t in defense.output_side:
        if t.name == "values_only":
            ids = torch.full_like(ids, -1)
        elif t.name == "ranks_only":
            values = torch.full_like(values, float("nan"))
            extra = None if extra is None else torch.full_like(extra, float("nan"))
    return ApiView(values, ids, extra)


def _at_least_float32(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def _transform(values: torch.Tensor, t, gen: torch.Generator) -> torch.Tensor:
    """One value transform (round / gauss / laplace); others leave the values as they are. Noise
    is drawn in float32 whatever the values' precision, so one seed gives one draw."""
    if t.name == "round":
        scale = 10.0 ** int(t.value)
        return torch.round(values * scale) / scale
    if t.name == "gauss" and t.value > 0:
        return (values + float(t.value) * torch.randn(values.shape, generator=gen).to(values.dtype)).clamp(max=0.0)
    if t.name == "laplace" and t.value > 0:
        u = (torch.rand(values.shape, generator=gen) - 0.5).to(values.dtype)
        return (values - float(t.value) * torch.sign(u) * torch.log1p(-2 * u.abs())).clamp(max=0.0)
    return values


def content_seed(secret: int, *parts: bytes) -> int:
    """The noise seed of one response: a hash of a per-server secret and the request's content.

    An identical request gets identical noise (repeating a query cannot average it away); two
    different requests get independent noise; without the secret nobody can predict it.
    """
    import hashlib

    h = hashlib.sha256(int(secret).to_bytes(16, "little", signed=True))
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return int.from_bytes(h.digest()[:8], "little") >> 1
