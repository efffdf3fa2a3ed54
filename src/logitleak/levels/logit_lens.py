"""The lens interface (tuned-lens's ``Lens``) and its untrained case, the logit lens."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from logitleak.errors import LogitleakError
from logitleak.models.readout import Readout


class Lens(ABC):
    """A map of raw residuals at a decoder layer into the final layer's space, read out through
    the model's own final norm and unembedding (``readout``)."""

    readout: Readout | None

    @abstractmethod
    def transform_hidden(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """Raw residuals ``(..., D)`` at ``layer`` in the final layer's space."""

    def __call__(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """The lens's logits ``(..., V)`` of raw residuals at ``layer``."""
        if self.readout is None:
            raise LogitleakError(f"This {type(self).__name__} has no readout; give it one with readout=adapter.readout().")
        return self.readout(self.transform_hidden(h, layer))


class LogitLens(Lens):
    """The logit lens: every layer's residual read out as it is (the identity translator)."""

    def __init__(self, readout: Readout | None = None) -> None:
        self.readout = readout

    def transform_hidden(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """``h`` unchanged: the logit lens translates nothing."""
        return h

    def __repr__(self) -> str:
        return "LogitLens()"
