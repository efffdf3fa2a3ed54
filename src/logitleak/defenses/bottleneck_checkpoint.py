"""A bottleneck run's checkpoint: trainable weights, adversaries, both optimisers and the feature buffer.

One safetensors file, written atomically with its checksum recorded (:func:`logitleak.results.atomic_write`),
the step in its metadata; a checkpoint whose bytes do not match, or of another version, is ignored
(the run starts again) rather than trusted.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from logitleak.defenses.bottleneck import AdversaryBank
from logitleak.results import atomic_write

CHECKPOINT_VERSION = 2


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters a run trains (every weight, or the LoRA adapters)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(path: Path, step: int, model: nn.Module, bank: AdversaryBank, opt, adv_opt,
                    buffer: dict[str, torch.Tensor]) -> None:
    """Write the run's state after ``step`` steps to ``path``."""
    from safetensors.torch import save_file

    tensors = {f"model.{n}": p.detach().contiguous() for n, p in trainable(model).items()}
    tensors.update({f"adv.{n}": t.detach().contiguous() for n, t in bank.state_dict().items()})
    tensors.update({f"buf.{k}": v.detach().contiguous() for k, v in buffer.items()})
    for tag, o in (("opt", opt), ("advopt", adv_opt)):
        for i, st in o.state_dict()["state"].items():
            for name, t in st.items():
                tensors[f"{tag}.{i}.{name}"] = torch.as_tensor(t).detach().clone().contiguous()
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"step": str(step), "version": str(CHECKPOINT_VERSION)}),
                 checksum=True)


def load_checkpoint(path: Path, model: nn.Module, bank: AdversaryBank, opt, adv_opt
                    ) -> tuple[int, dict[str, torch.Tensor] | None]:
    """The step a verified checkpoint ends at and its feature buffer (its other state loaded into
    the objects given), or ``(0, None)`` when there is none to trust."""
    from safetensors import safe_open

    from logitleak.integrity import verified

    if not path.is_file() or not verified(path):
        return 0, None
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        if meta.get("version") != str(CHECKPOINT_VERSION):
            return 0, None
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    with torch.no_grad():
        for n, p in trainable(model).items():
            p.copy_(tensors[f"model.{n}"])
    bank.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("adv.")})
    for tag, o in (("opt", opt), ("advopt", adv_opt)):
        sd = o.state_dict()
        state: dict = {}
        for k, v in tensors.items():
            if k.startswith(tag + "."):
                _, i, name = k.split(".", 2)
                state.setdefault(int(i), {})[name] = v
        sd["state"] = state
        o.load_state_dict(sd)
    buffer = {k[4:]: v for k, v in tensors.items() if k.startswith("buf.")}
    return int(meta["step"]), buffer
