"""The vision side of the capture pass: hooks that pool the vision tower's and projector's outputs per sample."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from logitleak.capture.hooks import HookSet, output_tensor
from logitleak.errors import LogitleakError

VISION_POOLS = ("mean", "cls")


def pool_per_sample(h: torch.Tensor, batch: int, counts: torch.Tensor | None = None, mode: str = "mean") -> torch.Tensor:
    """One vector per sample from a vision module's output: ``(batch * m, ..., D)`` (m images or
    tiles per sample, stored sample by sample) -> mean over everything but the last axis, or the
    first token of each image (``mode="cls"``); a flattened ``(tokens, D)`` sequence (Qwen2-VL) is
    split by ``counts`` (tokens per sample, rescaled when the module merges tokens) or evenly."""
    if h.dim() >= 3:
        if h.shape[0] % batch:
            raise LogitleakError(f"A vision module returned {h.shape[0]} images for a batch of {batch} samples; logitleak "
                                 "pools one image (or an equal number of tiles) per sample.")
        if mode == "cls":
            return h.reshape(batch, -1, h.shape[-2], h.shape[-1])[:, :, 0].float().mean(1)
        return h.reshape(batch, -1, h.shape[-1]).float().mean(1)
    if h.dim() != 2:
        raise LogitleakError(f"A vision module returned states of shape {tuple(h.shape)}; expected (images, tokens, D) "
                             "or (tokens, D).")
    n = h.shape[0]
    if counts is not None and int(counts.sum()) > 0:
        total = int(counts.sum())
        if n != total and total % n == 0:
            counts = counts // (total // n)
        if int(counts.sum()) == n:
            parts = torch.split(h, [int(c) for c in counts])
            return torch.stack([p.float()[:1].mean(0) if mode == "cls" else p.float().mean(0) for p in parts])
    if n % batch:
        raise LogitleakError(f"A vision module returned {n} tokens for {batch} samples, which do not split evenly; "
                             "capture this model without vision levels.")
    h = h.reshape(batch, -1, h.shape[-1]).float()
    return h[:, 0] if mode == "cls" else h.mean(1)


class VisionRecorder(HookSet):
    """Forward hooks on the vision tower's blocks (and block 0's input) and on the projector: each
    output pooled per sample as soon as it is produced, so memory holds one vector per sample."""

    def __init__(self, blocks, projector, mode: str = "mean") -> None:
        if mode not in VISION_POOLS:
            raise LogitleakError(f"Vision pooling {mode!r} is not valid; use one of: {', '.join(VISION_POOLS)}.")
        self.blocks, self.projector, self.mode = list(blocks), projector, mode
        self.batch, self.counts = 0, None
        self.states: list[torch.Tensor | None] = []
        self.proj: torch.Tensor | None = None
        self.handles: list = []

    def reset(self, batch: int, counts: torch.Tensor | None) -> None:
        self.batch, self.counts = batch, counts
        self.states = [None] * (len(self.blocks) + 1)
        self.proj = None

    def _pool(self, h, mode=None):
        return pool_per_sample(output_tensor(h), self.batch, self.counts, mode or self.mode)

    def _register(self) -> None:
        def pre_hook(module, args, kwargs):
            if self.states[0] is None:
                self.states[0] = self._pool(args[0] if args else kwargs.get("hidden_states"))

        def make_rec(idx):
            def hook(module, args, output):
                self.states[idx] = self._pool(output)
            return hook

        def proj_hook(module, args, output):
            self.proj = self._pool(output, "mean")

        if self.blocks:
            self.handles.append(self.blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
        for i, block in enumerate(self.blocks):
            self.handles.append(block.register_forward_hook(make_rec(i + 1)))
        if self.projector is not None:
            self.handles.append(self.projector.register_forward_hook(proj_hook))


def image_counts(inputs: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """Vision tokens per sample for processors that flatten images into one sequence (Qwen2-VL's
    ``image_grid_thw``); ``None`` when the batch axis already separates samples."""
    thw = inputs.get("image_grid_thw")
    return None if thw is None else thw.long().prod(dim=-1).cpu()


