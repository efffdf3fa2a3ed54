"""Forward hooks on a model's blocks: the read position, the decoder recorder, edits of a block's output."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from logitleak.errors import LogitleakError

EditHook = Callable[[torch.Tensor], torch.Tensor]


class HookSet:
    """Hooks registered by ``_register()`` on entry, all removed on exit (also when registering fails)."""

    handles: list

    def _register(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        try:
            self._register()
        except Exception:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()
        return False


def to_cpu_stack(states: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """``(B, n, D)`` per-layer states ``(B, D)`` stacked on the CPU in ``dtype``: each is read from
    wherever its layer lives (a model placed across GPUs keeps its blocks on several devices)."""
    if len({s.device for s in states}) == 1:  # one device: stack there, copy once
        return torch.stack(list(states), dim=1).to(device="cpu", dtype=dtype)
    return torch.stack([s.to(device="cpu", dtype=dtype) for s in states], dim=1)


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


def output_tensor(output) -> torch.Tensor:
    """The hidden states of a block's output (a tensor, or the first item of a tuple / list)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def replace_output(output, new: torch.Tensor):
    """A block's output with its hidden states replaced by ``new`` (same container as it came)."""
    if isinstance(output, tuple):
        return (new,) + tuple(output[1:])
    if isinstance(output, list):
        return [new] + list(output[1:])
    return new


class Recorder(HookSet):
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
        return to_cpu_stack(self.states, hidden_dtype)

    def _register(self) -> None:
        def pre_hook(module, args, kwargs):
            h = args[0] if args else kwargs.get("hidden_states")
            self.states[0] = self._gather(h)
            self._image_pool(0, h)

        def make_edit(fn):
            def hook(module, args, output):
                h = output_tensor(output)
                new = fn(h)
                if not isinstance(new, torch.Tensor) or new.shape != h.shape:
                    raise LogitleakError("An edit hook must return a tensor of the same shape as the block output "
                                         f"{tuple(h.shape)}; got {getattr(new, 'shape', type(new).__name__)}.")
                return replace_output(output, new.to(h.dtype))
            return hook

        def make_rec(idx):
            def hook(module, args, output):
                h = output_tensor(output)
                self.states[idx] = self._gather(h)
                self._image_pool(idx, h)
            return hook

        self.handles.append(self.layers[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
        for i, layer in enumerate(self.layers):
            fn = self.edit_hooks.get(i + 1)
            if fn is not None:  # before any other hook, so every reader sees the edited state
                self.handles.append(layer.register_forward_hook(make_edit(fn), prepend=True))
            self.handles.append(layer.register_forward_hook(make_rec(i + 1)))


def check_edit_hooks(edit_hooks, n_layers: int) -> None:
    """One sentence for an edit hook on a layer that does not exist, or one that is not callable."""
    for layer, fn in (edit_hooks or {}).items():
        if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= n_layers:
            raise LogitleakError(f"Edit hook layer {layer!r} does not exist: block outputs are layers 1..{n_layers}.")
        if not callable(fn):
            raise LogitleakError(f"Edit hook for layer {layer} is not callable; pass a function (B, T, D) -> (B, T, D).")
