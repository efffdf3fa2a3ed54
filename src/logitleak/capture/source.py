"""What a capture holds and the one interface every level function reads it through.

:class:`Capture` (tensors in memory, what a pass yields) and
:class:`~logitleak.capture.stored.StoredCapture` (shards on disk, read lazily) both implement
:class:`CaptureSource`, so :mod:`logitleak.levels.features`, :mod:`logitleak.levels.transition`,
:mod:`logitleak.levels.response`, the tuned lens and the utility measures never ask which one
they were given. ``contents`` says what a capture holds (names from
:mod:`logitleak.levels.table`) without reading any array; every ``read_*`` method reads its array
once per call (from disk for a stored capture), so a caller that needs an array twice keeps it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from logitleak.errors import LogitleakError
from logitleak.levels.table import (
    API,
    API_IDS,
    HIDDEN,
    IMAGE_HIDDEN,
    LOGITS,
    PROJECTOR,
    RESPONSE,
    RESPONSE_HIDDEN,
    VISION,
)


@runtime_checkable
class CaptureSource(Protocol):
    """What a level reads from a capture; ``contents`` tells which ``read_*`` methods have data."""

    meta: dict

    def __len__(self) -> int: ...

    @property
    def n_layers(self) -> int: ...

    @property
    def contents(self) -> frozenset[str]: ...

    @property
    def n_vision_states(self) -> int: ...

    @property
    def state_dtype(self) -> type:
        """numpy dtype residual features are held in (float16 where the states are float16: exact)."""

    def read_hidden(self, layer: int) -> torch.Tensor:
        """``(N, D)`` float32 raw residual at the read position, ``layer`` 0..n_layers."""

    def read_logits(self) -> torch.Tensor | None:
        """``(N, V)`` float32 final logits, ``None`` when the capture has none (black box)."""

    def read_api_topk(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(N, K)`` float32 log-probabilities and int64 ids an API returned (``nan`` / ``-1`` missing)."""

    def read_extra(self, name: str) -> np.ndarray:
        """``(N, ·)`` float32 vision-to-language state: ``vision.j``, ``projector`` or ``image.l``."""

    def read_response_hidden(self, layer: int) -> torch.Tensor:
        """``(N, G, D)`` float32 residual at every generated position."""

    def read_response_topk(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, G, K)`` float32 log-probabilities (``nan`` missing) and int64 ids (``-1`` missing)."""

    def read_response_mask(self) -> torch.Tensor:
        """``(N, G)`` bool: generated positions before the response ended."""

    def read_response_tokens(self) -> torch.Tensor:
        """``(N, G)`` int64 generated token ids."""


NO_HIDDEN = ("This capture holds no hidden states (a black-box capture); residual and lens levels need a local "
             "model.")
NO_RESPONSE = ("This capture holds only the first token; capture it again with generate=N (--generate N) for the "
               "response levels.")


def check_layer(layer, n_layers: int, fix: str = "pick one in that range") -> int:
    """``layer`` as an int, or one sentence saying which layers exist (and ``fix``): the one layer-range rule."""
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer <= n_layers:
        raise LogitleakError(f"Layer {layer!r} does not exist: the hidden states are 0..{n_layers}; {fix}.")
    return int(layer)


class MemoryReads:
    """:class:`CaptureSource` over the tensor fields of :class:`~logitleak.capture.source.Capture`."""

    @property
    def contents(self) -> frozenset[str]:
        held = {HIDDEN: self.hidden, LOGITS: self.logits, API: self.topk_logprobs, VISION: self.vision,
                PROJECTOR: self.projector, IMAGE_HIDDEN: self.image_hidden, RESPONSE: self.gen_topk_logprobs,
                RESPONSE_HIDDEN: self.gen_hidden}
        out = {name for name, t in held.items() if t is not None}
        if self.topk_logprobs is not None and self.topk_ids is not None and bool((self.topk_ids >= 0).any()):
            out.add(API_IDS)
        return frozenset(out)

    @property
    def n_vision_states(self) -> int:
        return 0 if self.vision is None else int(self.vision.shape[1])

    @property
    def state_dtype(self) -> type:
        return np.float16 if self.hidden is not None and self.hidden.dtype == torch.float16 else np.float32

    def read_hidden(self, layer: int) -> torch.Tensor:
        if self.hidden is None:
            raise LogitleakError(NO_HIDDEN)
        return self.hidden[:, check_layer(layer, self.n_layers)].to(torch.float32)

    def read_logits(self) -> torch.Tensor | None:
        return None if self.logits is None else self.logits.to(torch.float32)

    def read_api_topk(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.topk_logprobs is None:
            return None
        lp = self.topk_logprobs.float()
        ids = self.topk_ids.long() if self.topk_ids is not None else torch.full(lp.shape, -1, dtype=torch.long)
        return lp, ids

    def read_extra(self, name: str) -> np.ndarray:
        kind, _, idx = name.partition(".")
        src = {"vision": self.vision, "projector": self.projector, "image": self.image_hidden}.get(kind)
        if src is None:
            raise LogitleakError(f"This capture holds no {name!r} states; vision levels need a vision-language model "
                                 "whose family declares its vision tower.")
        x = src[:, int(idx)] if idx else src
        return np.ascontiguousarray(x.float().numpy(), dtype=np.float32)

    def read_response_hidden(self, layer: int) -> torch.Tensor:
        if self.gen_hidden is None:
            raise LogitleakError("This capture holds no hidden states for the response (a black-box capture); "
                                 "response_residual needs a local model.")
        return self.gen_hidden[:, :, int(layer)].float()

    def read_response_topk(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.gen_topk_logprobs is None:
            raise LogitleakError(NO_RESPONSE)
        return self.gen_topk_logprobs.float(), self.gen_topk_ids.long()

    def read_response_mask(self) -> torch.Tensor:
        if self.gen_mask is None:
            raise LogitleakError(NO_RESPONSE)
        return torch.as_tensor(self.gen_mask).bool()

    def read_response_tokens(self) -> torch.Tensor:
        if self.gen_tokens is None:
            raise LogitleakError(NO_RESPONSE)
        return torch.as_tensor(self.gen_tokens).long()


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
