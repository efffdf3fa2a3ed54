"""One forward pass -> Capture: everything every representational level needs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from logitleak.capture.source import MemoryReads
from logitleak.capture.vision import VISION_POOLS, HookSet, _VisionRecorder, image_counts, pool_per_sample  # noqa: F401
from logitleak.errors import LogitleakError
from logitleak.progress import PhaseBar

if TYPE_CHECKING:
    from logitleak.data.probeset import ProbeSet
    from logitleak.models.adapter import ModelAdapter


@dataclass
class Capture(MemoryReads):
    """What one pass (or one black-box query) yields for N samples, at the read position.

    - ``hidden``: ``(N, L+1, D)`` raw residual stream: index 0 the embedding output, index l the
      output of decoder block l (before the final norm, for every l including the last).
      ``None`` for a black-box capture.
    - ``logits``: ``(N, V)`` float32 final logits. ``None`` for a black-box capture.
    - ``topk_logprobs`` / ``topk_ids``: ``(N, K)`` what an API returned (sorted descending,
      ids mapped per run, ``-1`` / ``nan`` where fewer than K alternatives came back). ``None``
      for a white-box capture, whose top-k is derived from ``logits``.
    - the vision-to-language transition (VLMs whose family declares its vision tower; ``None``
      otherwise), from the same pass: ``vision`` ``(N, Lv+1, Dv)`` the vision tower's states
      (index 0 its embedding output, index j block j's output) pooled over each sample's image
      tokens; ``projector`` ``(N, Dp)`` the projector's output pooled the same way;
      ``image_hidden`` ``(N, L+1, D)`` the decoder's residual stream averaged over the positions
      of the image tokens.
    - ``gen_*``: the whole response (``--generate N``, :mod:`logitleak.capture.generation`): ``gen_hidden``
      ``(N, G, L+1, D)`` (white-box only), ``gen_topk_logprobs`` / ``gen_topk_ids`` ``(N, G, K)``,
      ``gen_tokens`` ``(N, G)`` and ``gen_mask`` ``(N, G)`` (positions before the response ended).
      ``None`` when only the first token was read.

    Levels read it through :class:`~logitleak.capture.source.CaptureSource` (``contents``,
    ``read_*``), the interface a stored capture has too.
    """

    hidden: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    topk_logprobs: torch.Tensor | None = None
    topk_ids: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)
    vision: torch.Tensor | None = None
    projector: torch.Tensor | None = None
    image_hidden: torch.Tensor | None = None
    gen_hidden: torch.Tensor | None = None
    gen_topk_logprobs: torch.Tensor | None = None
    gen_topk_ids: torch.Tensor | None = None
    gen_tokens: torch.Tensor | None = None
    gen_mask: torch.Tensor | None = None

    def __len__(self) -> int:
        for t in (self.logits, self.hidden, self.topk_logprobs):
            if t is not None:
                return t.shape[0]
        return 0

    @property
    def n_layers(self) -> int:
        """Number of decoder blocks (``hidden`` holds ``n_layers + 1`` states)."""
        return 0 if self.hidden is None else self.hidden.shape[1] - 1


EditHook = Callable[[torch.Tensor], torch.Tensor]
GEN_FIELDS = ("gen_hidden", "gen_topk_logprobs", "gen_topk_ids", "gen_tokens", "gen_mask")


def concat_captures(parts: Sequence[Capture]) -> Capture:
    """Captures of consecutive batches -> one capture (meta of the first, without batch bounds)."""
    if not parts:
        return Capture()

    def cat(name):
        ts = [getattr(p, name) for p in parts]
        return None if any(t is None for t in ts) else torch.cat(ts, dim=0)

    meta = {k: v for k, v in parts[0].meta.items() if k not in ("start", "stop")}
    return Capture(hidden=cat("hidden"), logits=cat("logits"), topk_logprobs=cat("topk_logprobs"),
                   topk_ids=cat("topk_ids"), meta=meta, vision=cat("vision"), projector=cat("projector"),
                   image_hidden=cat("image_hidden"),
                   **{f: cat(f) for f in GEN_FIELDS})


def read_positions(attention_mask: torch.Tensor, read_position: str | int = "last") -> torch.Tensor:
    """Index of the read token in each row: the last attended token (where the first answer token
    is predicted), whatever side the batch is padded on; an int ``-j`` reads ``j - 1`` tokens
    before it (``-1`` is the last)."""
    mask = attention_mask.long()
    t = mask.shape[1]
    last = t - 1 - torch.flip(mask, dims=[1]).argmax(dim=1)
    if read_position == "last" or read_position == -1:
        return last
    if isinstance(read_position, int) and not isinstance(read_position, bool) and read_position < 0:
        first = mask.argmax(dim=1)
        pos = last + 1 + read_position
        if bool((pos < first).any()):
            raise LogitleakError(f"Read position {read_position} falls before the start of a prompt; use a position "
                                 "closer to the end (e.g. -1 for the last token).")
        return pos
    raise LogitleakError(f"Read position {read_position!r} is not valid; use 'last' or a negative integer such as -1.")


def _output_tensor(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def _replace_output(output, new: torch.Tensor):
    if isinstance(output, tuple):
        return (new,) + tuple(output[1:])
    if isinstance(output, list):
        return [new] + list(output[1:])
    return new


class _Recorder(HookSet):
    """Forward hooks on the decoder blocks: optional edits (``edit_hooks``), then a gather of every
    block's output — and of block 0's input (the embedding output) — at the read positions."""

    def __init__(self, layers, edit_hooks: Mapping[int, EditHook] | None) -> None:
        self.layers = layers
        self.edit_hooks = dict(edit_hooks or {})
        self.pos: torch.Tensor | None = None
        self.seq_len: int | None = None
        self.states: list[torch.Tensor | None] = [None] * (len(layers) + 1)
        self.image_mask: torch.Tensor | None = None   # (B, T) float: image-token positions, or None
        self.image_states: list[torch.Tensor | None] = [None] * (len(layers) + 1)
        self.handles: list = []

    def _image_pool(self, idx: int, h: torch.Tensor) -> None:
        if self.image_mask is not None:
            m = self.image_mask.to(h.device, torch.float32)
            self.image_states[idx] = (h.float() * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp_min(1.0)

    def _gather(self, h: torch.Tensor) -> torch.Tensor:
        if h.dim() != 3 or h.shape[1] != self.seq_len:
            raise LogitleakError(f"A decoder block returned states of shape {tuple(h.shape)} for a batch of "
                                 f"{self.seq_len} tokens; the architecture rewrites its sequence inside the model, "
                                 "which logitleak cannot read at the prompt's last token.")
        return h[torch.arange(h.shape[0], device=h.device), self.pos.to(h.device)]

    def stacked(self, hidden_dtype: torch.dtype, where: str) -> torch.Tensor:
        """``(B, L+1, D)`` the recorded states on the CPU; one sentence naming any layer that did not
        run (``where``: e.g. "did not run in the forward pass")."""
        if any(s is None for s in self.states):
            missing = [i for i, s in enumerate(self.states) if s is None]
            raise LogitleakError(f"Decoder layers {missing} {where}; pass mapping={{'layers': ...}} naming the blocks "
                                 "the model actually uses.")
        return torch.stack(self.states, dim=1).to(device="cpu", dtype=hidden_dtype)

    def _register(self) -> None:
        def pre_hook(module, args, kwargs):
            h = args[0] if args else kwargs.get("hidden_states")
            self.states[0] = self._gather(h)
            self._image_pool(0, h)

        def make_edit(fn):
            def hook(module, args, output):
                h = _output_tensor(output)
                new = fn(h)
                if not isinstance(new, torch.Tensor) or new.shape != h.shape:
                    raise LogitleakError("An edit hook must return a tensor of the same shape as the block output "
                                         f"{tuple(h.shape)}; got {getattr(new, 'shape', type(new).__name__)}.")
                return _replace_output(output, new.to(h.dtype))
            return hook

        def make_rec(idx):
            def hook(module, args, output):
                h = _output_tensor(output)
                self.states[idx] = self._gather(h)
                self._image_pool(idx, h)
            return hook

        self.handles.append(self.layers[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
        for i, layer in enumerate(self.layers):
            fn = self.edit_hooks.get(i + 1)
            if fn is not None:  # before any other hook, so every reader sees the edited state
                self.handles.append(layer.register_forward_hook(make_edit(fn), prepend=True))
            self.handles.append(layer.register_forward_hook(make_rec(i + 1)))


def _check_edit_hooks(edit_hooks, n_layers: int) -> None:
    for layer, fn in (edit_hooks or {}).items():
        if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= n_layers:
            raise LogitleakError(f"Edit hook layer {layer!r} does not exist: block outputs are layers 1..{n_layers}.")
        if not callable(fn):
            raise LogitleakError(f"Edit hook for layer {layer} is not callable; pass a function (B, T, D) -> (B, T, D).")


def check_compatible(adapter: ModelAdapter, probeset: ProbeSet) -> None:
    """Fail early, in one sentence, when the probe set cannot go through this model."""
    if probeset.has_images and not adapter.is_vlm:
        raise LogitleakError(f"Probe set {probeset.name!r} has images but {adapter.name!r} is a text-only language "
                             "model; use a text probe set or a vision-language model.")


def _forward_batch(adapter: ModelAdapter, rec: _Recorder, inputs: Mapping[str, torch.Tensor], read_position,
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
    _check_edit_hooks(edit_hooks, adapter.n_layers)
    has_images = any(k in inputs for k in ("pixel_values", "pixel_values_videos"))
    vis = wants_vision(adapter, has_images, vision_pool)
    batch = int(inputs["attention_mask"].shape[0])
    vrec = _VisionRecorder(adapter.vision_layers, adapter.projector, vision_pool or "mean") if vis else None
    with torch.inference_mode(), _Recorder(adapter.layers, edit_hooks) as rec, (vrec or contextlib.nullcontext()):
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
        out.vision = torch.stack(vrec.states, dim=1).to(device="cpu", dtype=hidden_dtype).clone()
        if vrec.proj is not None:
            out.projector = vrec.proj.to(device="cpu", dtype=hidden_dtype).clone()
    if rec.image_mask is not None and all(v is not None for v in rec.image_states):
        out.image_hidden = torch.stack(rec.image_states, dim=1).to(device="cpu", dtype=hidden_dtype).clone()
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
        from logitleak.capture.generation import check_generate

        check_generate(generate)
        if logits_transform is not None or read_position not in ("last", -1):
            raise LogitleakError("Generation reads the last prompt token and the response as the model produced them; "
                                 "drop the logits transform / read position, or generate=None.")
    check_compatible(adapter, probeset)
    _check_edit_hooks(edit_hooks, adapter.n_layers)
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
                from logitleak.capture.generation import capture_generate

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
