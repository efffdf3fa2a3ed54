"""The vision-to-language levels and the PCA level, as pure functions of a capture.

Levels (names in :data:`logitleak.results.LEVELS`):

- ``vision`` (layer ``j``): the vision tower's state ``j`` (0 its embedding output, ``j`` block
  ``j``'s output), pooled over each sample's image tokens;
- ``projector``: the projector's output (the image features the decoder receives), pooled;
- ``image_residual`` (layer ``l``): the decoder's residual stream at layer ``l`` averaged over the
  image-token positions (beside ``residual``, which reads the answer position);
- ``pca`` (layer ``l``, ``k = d``): the residual stream at layer ``l`` through its top ``d``
  principal components. The components are fitted on each training fold only, so the feature
  matrix handed to the probes is the raw residual and the projection happens inside the
  cross-validation (:mod:`logitleak.probing.pca`).

All read a capture through :class:`~logitleak.capture.source.CaptureSource` (in memory, or
one layer at a time from disk).
"""

from __future__ import annotations

import numpy as np

from logitleak.errors import LogitleakError
from logitleak.levels.table import IMAGE_HIDDEN, PROJECTOR, VISION


def has_vision(cap) -> bool:
    return VISION in cap.contents


def has_projector(cap) -> bool:
    return PROJECTOR in cap.contents


def has_image_hidden(cap) -> bool:
    return IMAGE_HIDDEN in cap.contents


def n_vision_states(cap) -> int:
    """Number of vision-tower states (blocks + 1), 0 without them."""
    return int(cap.n_vision_states) if has_vision(cap) else 0


def available(cap) -> list[str]:
    """The transition levels this capture holds."""
    out = []
    if has_vision(cap):
        out.append("vision")
    if has_projector(cap):
        out.append("projector")
    if has_image_hidden(cap):
        out.append("image_residual")
    return out


def vision_state(cap, layer: int) -> np.ndarray:
    """``(N, Dv)`` float32 pooled vision-tower state ``layer``."""
    n = n_vision_states(cap)
    if n == 0:
        raise LogitleakError("This capture holds no vision-tower states; the vision levels need a vision-language model "
                             "whose family declares its vision tower, and a probe set with images.")
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < n:
        raise LogitleakError(f"Vision layer {layer!r} does not exist: this capture has vision states 0..{n - 1}.")
    return cap.read_extra(f"vision.{int(layer)}")


def projector_state(cap) -> np.ndarray:
    """``(N, Dp)`` float32 pooled projector output."""
    if not has_projector(cap):
        raise LogitleakError("This capture holds no projector output; the projector level needs a vision-language model "
                             "whose family declares its projector.")
    return cap.read_extra("projector")


def image_residual(cap, layer: int) -> np.ndarray:
    """``(N, D)`` float32 decoder residual at ``layer`` averaged over the image-token positions."""
    if not has_image_hidden(cap):
        raise LogitleakError("This capture holds no image-position states; the image_residual level needs a "
                             "vision-language model with image tokens in its prompt.")
    return cap.read_extra(f"image.{int(layer)}")


def transition_features(cap, levels, layers, vision_layers=None) -> dict:
    """``{(level, layer | None, None): (N, F)}`` for the transition levels in ``levels``;
    ``vision_layers`` defaults to every vision state."""
    feats = {}
    if "vision" in levels:
        for j in (range(n_vision_states(cap)) if vision_layers is None else vision_layers):
            feats[("vision", int(j), None)] = vision_state(cap, j)
    if "projector" in levels:
        feats[("projector", None, None)] = projector_state(cap)
    if "image_residual" in levels:
        for layer in layers:
            feats[("image_residual", int(layer), None)] = image_residual(cap, layer)
    return feats


def pca_features(residuals: dict, dims) -> dict:
    """``{("pca", layer, d): residual}`` for every layer's residual and every ``d`` (the same
    array, not a copy: the projection is fitted per training fold by the probes). ``d`` above the
    width is dropped, except that the full width itself is always allowed."""
    feats = {}
    for (level, layer, _), x in residuals.items():
        width = x.shape[1]
        for d in dims:
            if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
                raise LogitleakError(f"PCA dimension {d!r} is not valid; pass positive whole numbers such as 1,4,16,64.")
            if d <= width:
                feats[("pca", layer, int(d))] = x
    return feats
