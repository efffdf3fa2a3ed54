"""The readout: a model's final norm and unembedding, held on their own, mapping residuals to logits."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from logitleak.errors import LogitleakError


def _detached(module: nn.Module) -> nn.Module:
    """A float32 CPU copy of ``module`` without accelerate's placement hooks (they would offload it again)."""
    norm = copy.deepcopy(module)
    if hasattr(norm, "_hf_hook"):
        from accelerate.hooks import remove_hook_from_module

        remove_hook_from_module(norm, recurse=True)
    return norm.to(device="cpu", dtype=torch.float32)


@dataclass
class Readout:
    """The model's final norm + unembedding (+ final-logit soft-cap / scale), detached from the
    model: ``readout(h)`` maps raw residuals ``(..., D)`` to the logits the model would produce
    from them. A copy of the norm module (float32, CPU), the unembedding matrix and bias — not an
    ``nn.Module`` and never the whole model."""

    norm: nn.Module | None
    weight: torch.Tensor
    bias: torch.Tensor | None = None
    softcap: float | None = None
    scale: float | None = None

    def __post_init__(self) -> None:
        # Frozen: gradients flow to the input (tuned-lens fitting), never into the readout itself.
        if self.norm is not None:
            self.norm.eval()
            for p in self.norm.parameters():
                p.requires_grad_(False)
        self.weight = self.weight.detach().to(torch.float32)
        if self.bias is not None:
            self.bias = self.bias.detach().to(torch.float32)

    @classmethod
    def from_adapter(cls, adapter) -> Readout:
        from logitleak.models.devices import weights_loaded

        un = adapter.unembed
        with weights_loaded(adapter.model, adapter.final_norm, un):  # offloaded under --device auto too
            norm = _detached(adapter.final_norm)
            weight = un.weight.detach().to(device="cpu", dtype=torch.float32).clone()
            bias = getattr(un, "bias", None)
            bias = None if bias is None else bias.detach().to(device="cpu", dtype=torch.float32).clone()
        tc = adapter.text_config
        fam = adapter.family
        softcap = getattr(tc, fam.logit_softcap, None) if fam.logit_softcap else None
        scale = getattr(tc, fam.logit_scale, None) if fam.logit_scale else None
        return cls(norm=norm, weight=weight, bias=bias, softcap=float(softcap) if softcap else None,
                   scale=float(scale) if scale not in (None, 1, 1.0) else None)

    def to(self, device: torch.device | str) -> Readout:
        """This readout with its norm and unembedding on ``device`` (e.g. the first GPU): a copy
        that moves its inputs there and returns logits there."""
        if torch.device(device) == self.device:
            return self
        norm = None if self.norm is None else copy.deepcopy(self.norm).to(device)
        return Readout(norm=norm, weight=self.weight.to(device), bias=None if self.bias is None else self.bias.to(device),
                       softcap=self.softcap, scale=self.scale)

    @property
    def device(self) -> torch.device:
        return self.weight.device

    @property
    def d_model(self) -> int:
        return int(self.weight.shape[1])

    @property
    def vocab_size(self) -> int:
        return int(self.weight.shape[0])

    def normed(self, h: torch.Tensor) -> torch.Tensor:
        h = h.to(device=self.weight.device, dtype=torch.float32)
        return self.norm(h) if self.norm is not None else h

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.nn.functional.linear(x, self.weight, self.bias)
        if self.scale is not None:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """Raw residual ``(..., D)`` -> logits ``(..., V)`` float32 on the readout's device (final norm applied once)."""
        if h.shape[-1] != self.d_model:
            raise LogitleakError(f"Hidden states of width {h.shape[-1]} do not fit this readout (d_model {self.d_model}); "
                                 "use the readout of the model the capture came from.")
        return self.unembed(self.normed(h))

    def fingerprint(self) -> str:
        """Hash of the unembedding and final-norm weights (and quirks): what a tuned lens is tied to."""
        h = hashlib.sha256()
        h.update(self.weight.cpu().contiguous().numpy().tobytes())
        if self.bias is not None:
            h.update(self.bias.cpu().contiguous().numpy().tobytes())
        if self.norm is not None:
            for name, t in sorted(self.norm.state_dict().items()):
                h.update(name.encode())
                h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
            h.update(type(self.norm).__name__.encode())
        h.update(repr((self.softcap, self.scale)).encode())
        return h.hexdigest()[:16]
