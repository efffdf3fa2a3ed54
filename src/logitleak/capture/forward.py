"""The capture pass over a probe set: one forward (or generate) pass per batch -> Capture."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

import torch

from logitleak.capture.generation import capture_generate, check_generate
from logitleak.capture.hooks import EditHook, Recorder, check_edit_hooks, read_positions, to_cpu_stack
from logitleak.capture.source import Capture, concat_captures
from logitleak.capture.vision import VisionRecorder, image_counts
from logitleak.errors import LogitleakError
from logitleak.progress import PhaseBar

if TYPE_CHECKING:
    from logitleak.data.probeset import ProbeSet
    from logitleak.models.adapter import ModelAdapter


def check_compatible(adapter: ModelAdapter, probeset: ProbeSet) -> None:
    """Fail early, in one sentence, when the probe set cannot go through this model."""
    if probeset.has_images and not adapter.is_vlm:
        raise LogitleakError(f"Probe set {probeset.name!r} has images but {adapter.name!r} is a text-only language "
                             "model; use a text probe set or a vision-language model.")


def _forward_batch(adapter: ModelAdapter, rec: Recorder, inputs: Mapping[str, torch.Tensor], read_position,
                   logits_transform, hidden_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    pos = read_positions(inputs["attention_mask"], read_position)
    rec.pos, rec.seq_len = pos, inputs["attention_mask"].shape[1]
    rec.states = [None] * (adapter.n_layers + 1)
    rec.image_states = [None] * (adapter.n_layers + 1)
    kwargs = adapter.forward_kwargs(inputs, pos)
    logits = adapter.model(**kwargs).logits
    if "logits_to_keep" in kwargs:
        logits = logits[:, 0]  # (B, 1, V): only the read positions were projected
    else:
        logits = logits[torch.arange(logits.shape[0], device=logits.device), pos.to(logits.device)]
    logits = logits.float()
    if logits_transform is not None:
        logits = logits_transform(logits).float()
    hidden = rec.stacked(hidden_dtype, f"of {adapter.name!r} did not run in the forward pass")
    return hidden, logits.cpu()


def wants_vision(adapter: ModelAdapter, has_images: bool, vision_pool: str | None) -> bool:
    """Whether a pass records the vision-to-language levels: a VLM whose family declares its
    vision tower, a batch with images, and pooling not switched off (``vision_pool=None``)."""
    return bool(vision_pool) and has_images and bool(getattr(adapter, "vision_layers", None))


def capture_inputs(adapter: ModelAdapter, inputs: Mapping[str, torch.Tensor], *, read_position: str | int = "last",
                   edit_hooks: Mapping[int, EditHook] | None = None,
                   logits_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   hidden_dtype: torch.dtype = torch.float32, vision_pool: str | None = "mean") -> Capture:
    """The capture pass on one batch of ready-made inputs (``adapter.build_inputs(...)``):
    ``hidden`` ``(B, L+1, D)`` and ``logits`` ``(B, V)`` at the read positions, and for a VLM
    batch with images the vision tower / projector / image-position states of the same pass
    (``vision_pool``: ``"mean"`` over image tokens, ``"cls"`` the first token, ``None`` none)."""
    check_edit_hooks(edit_hooks, adapter.n_layers)
    has_images = any(k in inputs for k in ("pixel_values", "pixel_values_videos"))
    vis = wants_vision(adapter, has_images, vision_pool)
    batch = int(inputs["attention_mask"].shape[0])
    vrec = VisionRecorder(adapter.vision_layers, adapter.projector, vision_pool or "mean") if vis else None
    with torch.inference_mode(), Recorder(adapter.layers, edit_hooks) as rec, (vrec or contextlib.nullcontext()):
        tid = adapter.image_token_id if vis else None
        if tid is not None and "input_ids" in inputs:
            mask = inputs["input_ids"] == tid
            rec.image_mask = mask if bool(mask.any(1).all()) else None
        if vrec is not None:
            vrec.reset(batch, image_counts(inputs))
        hidden, logits = _forward_batch(adapter, rec, inputs, read_position, logits_transform, hidden_dtype)
    # Clone outside inference mode: inference tensors cannot take part in autograd later (lens fitting).
    out = Capture(hidden=hidden.clone(), logits=logits.clone())
    if vrec is not None:
        if any(v is None for v in vrec.states):
            missing = [i for i, v in enumerate(vrec.states) if v is None]
            raise LogitleakError(f"Vision blocks {missing} of {adapter.name!r} did not run in the forward pass; capture "
                                 "with vision_pool=None or name the blocks the tower uses in the family table.")
        out.vision = to_cpu_stack(vrec.states, hidden_dtype).clone()
        if vrec.proj is not None:
            out.projector = vrec.proj.to(device="cpu", dtype=hidden_dtype).clone()
    if rec.image_mask is not None and all(v is not None for v in rec.image_states):
        out.image_hidden = to_cpu_stack(rec.image_states, hidden_dtype).clone()
    return out


def iter_capture(adapter: ModelAdapter, probeset: ProbeSet, *, batch_size: int = 32, read_position: str | int = "last",
                 edit_hooks: Mapping[int, EditHook] | None = None,
                 logits_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 hidden_dtype: torch.dtype = torch.float32, progress: bool = True,
                 start: int = 0, stop: int | None = None, vision_pool: str | None = "mean",
                 generate: int | None = None, gen_k: int = 20,
                 on_batch: Callable[[int], None] | None = None) -> Iterator[Capture]:
    """One :class:`Capture` per batch of ``probeset[start:stop]`` (``meta['start'/'stop']`` give the
    samples it covers). Images are touched one batch at a time, so a lazily loaded probe set
    streams. Hooks are installed around each batch's forward pass and removed right after it.
    ``generate=N``: one greedy generation pass of N tokens per batch instead of a forward pass,
    filling the ``gen_*`` fields (top ``gen_k`` at every position; :mod:`logitleak.capture.generation`).
    ``on_batch(n)`` is called after each batch of ``n`` samples (a caller's own progress)."""
    if batch_size < 1:
        raise LogitleakError(f"Batch size {batch_size} must be at least 1.")
    if generate is not None:
        check_generate(generate)
        if logits_transform is not None or read_position not in ("last", -1):
            raise LogitleakError("Generation reads the last prompt token and the response as the model produced them; "
                                 "drop the logits transform / read position, or generate=None.")
    check_compatible(adapter, probeset)
    check_edit_hooks(edit_hooks, adapter.n_layers)
    stop = len(probeset) if stop is None else min(stop, len(probeset))
    meta = capture_meta(adapter, probeset, read_position=read_position, edit_hooks=edit_hooks,
                        logits_transform=logits_transform)
    bounds = list(range(start, stop, batch_size))
    bar = PhaseBar(True, "capture", stop - start) if progress and bounds else None
    try:
        for b0 in bounds:
            b1 = min(b0 + batch_size, stop)
            prompts = probeset.prompts[b0:b1]
            images = None if probeset.images is None else [probeset.images[i] for i in range(b0, b1)]
            messages = None if probeset.messages is None else probeset.messages[b0:b1]
            # Hooks and inference mode live only inside one batch, never across a ``yield``.
            if generate is not None:
                side = adapter.padding_side
                adapter.set_padding_side("left")  # generation continues every row from the last column
                try:
                    inputs = adapter.build_inputs(prompts, images, messages=messages)
                finally:
                    adapter.set_padding_side(side)
                part = capture_generate(adapter, inputs, n_new=generate, k=gen_k, edit_hooks=edit_hooks,
                                        hidden_dtype=hidden_dtype)
            else:
                inputs = adapter.build_inputs(prompts, images, messages=messages)
                part = capture_inputs(adapter, inputs, read_position=read_position, edit_hooks=edit_hooks,
                                      logits_transform=logits_transform, hidden_dtype=hidden_dtype,
                                      vision_pool=vision_pool)
            part.meta = {**meta, "start": b0, "stop": b1}
            if bar is not None:
                bar.advance(b1 - b0)
            if on_batch is not None:
                on_batch(b1 - b0)
            yield part
    finally:
        if bar is not None:
            bar.close()


def capture(adapter: ModelAdapter, probeset: ProbeSet, *, batch_size: int = 32, read_position: str | int = "last",
            edit_hooks: Mapping[int, EditHook] | None = None,
            logits_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
            hidden_dtype: torch.dtype = torch.float32, progress: bool = True,
            vision_pool: str | None = "mean", generate: int | None = None, gen_k: int = 20) -> Capture:
    """Run the probe set through the model, one forward pass per batch, and keep the raw residual
    stream at every layer and the final logits at the read position (the last prompt token,
    after the generation prompt, where the first answer token is predicted).

    ``edit_hooks`` maps a layer ``l >= 1`` to a function applied to block ``l - 1``'s output
    ``(B, T, D)`` during the pass (model-side defences such as LEACE erasure); every later block,
    the stored state and the logits see the edited state. ``logits_transform`` rewrites the final
    ``(B, V)`` logits (output-side defences). Hidden states are ``(N, L+1, D)`` in
    ``hidden_dtype``; logits ``(N, V)`` float32; both on the CPU. A VLM's vision tower, projector
    and image-position states come from the same pass (see :class:`Capture`; ``vision_pool``).
    """
    parts = list(iter_capture(adapter, probeset, batch_size=batch_size, read_position=read_position,
                              edit_hooks=edit_hooks, logits_transform=logits_transform, hidden_dtype=hidden_dtype,
                              progress=progress, vision_pool=vision_pool, generate=generate, gen_k=gen_k))
    if not parts:
        raise LogitleakError(f"Probe set {probeset.name!r} is empty; give it at least one sample.")
    return concat_captures(parts)


def capture_meta(adapter: ModelAdapter, probeset: ProbeSet, *, read_position="last", edit_hooks=None,
                 logits_transform=None) -> dict:
    """What a capture records about how it was made (also part of the activation store's key)."""
    return {
        "model": adapter.name,
        "model_fingerprint": adapter.fingerprint(),
        "family": adapter.family.name,
        "probeset": probeset.name,
        "n_samples": len(probeset),
        "read_position": read_position,
        "padding_side": adapter.padding_side,
        "n_layers": adapter.n_layers,
        "d_model": adapter.d_model,
        "vocab_size": adapter.vocab_size,
        "edited_layers": sorted(edit_hooks) if edit_hooks else [],
        "logits_transform": logits_transform is not None,
        "n_vision_layers": getattr(adapter, "n_vision_layers", 0),
        "layer_types": getattr(adapter, "layer_types", None),
    }
