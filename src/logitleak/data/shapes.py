"""The procedural shapes probe set: one object per image, every attribute known.

Attributes and their one-word values:

- ``color``: red, green, blue, yellow, magenta, cyan, orange, purple
- ``shape``: circle, square, triangle, cross
- ``size``: small, medium, large
- ``position``: top, bottom, left, right (the region the object's centre lies in)
- ``background``: black, gray, white

Numeric attributes (:data:`NUMERIC_ATTRIBUTES`), recorded exactly from the drawing, in pixels of
the rendered image: the object's bounding box ``box_x0, box_y0, box_x1, box_y1`` (the extent of
its drawn pixels, ``x1``/``y1`` exclusive), ``center_x, center_y`` (the point the shape is drawn
around, jitter included) and ``area`` (the number of object pixels).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from logitleak.data.probeset import ProbeSet
from logitleak.errors import LogitleakError

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 60, 235),
    "yellow": (235, 225, 30),
    "magenta": (225, 40, 220),
    "cyan": (30, 220, 225),
    "orange": (245, 140, 20),
    "purple": (130, 40, 190),
}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = ("small", "medium", "large")
POSITIONS = ("top", "bottom", "left", "right")
BACKGROUNDS: dict[str, int] = {"black": 10, "gray": 110, "white": 235}

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS),
    "shape": SHAPES,
    "size": SIZES,
    "position": POSITIONS,
    "background": tuple(BACKGROUNDS),
}

NUMERIC_ATTRIBUTES: tuple[str, ...] = ("box_x0", "box_y0", "box_x1", "box_y1", "center_x", "center_y", "area")

# One template family per attribute, a few paraphrases each; every answer is one word.
QUESTIONS: dict[str, tuple[str, ...]] = {
    "color": ("what color is the object ?", "which color does the object have ?", "name the color of the object ."),
    "shape": ("what shape is the object ?", "which shape is shown ?", "name the shape of the object ."),
    "size": ("what size is the object ?", "how big is the object ?", "is the object small , medium or large ?"),
    "position": ("where is the object ?", "in which part of the image is the object ?", "name the position of the object ."),
    "background": ("what color is the background ?", "which color does the background have ?", "name the color of the background ."),
}

# Object radius as a fraction of the image side, per size.
_RADIUS_FRAC = {"small": 0.14, "medium": 0.21, "large": 0.28}
# Centre of each position region as (x, y) fractions of the image side.
_CENTER_FRAC = {"top": (0.5, 0.25), "bottom": (0.5, 0.75), "left": (0.25, 0.5), "right": (0.75, 0.5)}


def _shape_mask(shape: str, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        # Half-side r: the circle's extent. (An equal-area square, half-side 0.85 r, differed from
        # a small circle by only ~4 pixels at 32 px, so shape was barely learnable there.)
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if shape == "triangle":  # upward-pointing, base at cy + r*0.8, apex at cy - r
        top, bottom = cy - r, cy + 0.8 * r
        t = np.clip((yy - top) / (bottom - top), 0.0, 1.0)
        return (yy >= top) & (yy <= bottom) & (np.abs(dx) <= t * r)
    if shape == "cross":
        w = np.maximum(r * 0.33, 0.75)
        return ((np.abs(dx) <= w) & (np.abs(dy) <= r)) | ((np.abs(dy) <= w) & (np.abs(dx) <= r))
    raise LogitleakError(f"Unknown shape {shape!r}; choose one of: {', '.join(SHAPES)}.")


def geometry(masks: np.ndarray, centres: np.ndarray) -> pd.DataFrame:
    """The numeric attributes of drawn objects: bounding box of each ``(S, S)`` mask, the drawing
    centre ``centres`` ``(N, 2)`` (x, y) and the pixel area. An empty mask gets a NaN box."""
    masks = np.asarray(masks, dtype=bool)
    cols, rows = masks.any(axis=1), masks.any(axis=2)          # (N, S): x extent, y extent
    def span(a):
        has = a.any(axis=1)
        first = np.where(has, a.argmax(axis=1), np.nan)
        last = np.where(has, a.shape[1] - a[:, ::-1].argmax(axis=1), np.nan)
        return first.astype(np.float64), last.astype(np.float64)
    x0, x1 = span(cols)
    y0, y1 = span(rows)
    return pd.DataFrame({"box_x0": x0, "box_y0": y0, "box_x1": x1, "box_y1": y1,
                         "center_x": np.asarray(centres, dtype=np.float64)[:, 0],
                         "center_y": np.asarray(centres, dtype=np.float64)[:, 1],
                         "area": masks.sum(axis=(1, 2)).astype(np.float64)})


def render_shapes(attributes: pd.DataFrame, image_size: int = 32, seed: int = 0,
                  noise: float = 4.0, jitter: float = 0.06, return_centres: bool = False):
    """Render one image per row of ``attributes``.

    Returns ``(images, masks)``: uint8 ``(N, S, S, 3)`` pixels and bool ``(N, S, S)`` object masks
    (and the ``(N, 2)`` drawing centres in pixels, x then y, with ``return_centres``).
    ``jitter`` moves the centre by up to that fraction of the side; ``noise`` is the std of
    additive pixel noise (0 gives flat colours).
    """
    for name, values in ATTRIBUTES.items():
        if name not in attributes.columns:
            raise LogitleakError(f"Attribute column {name!r} is missing; give one column per attribute: {', '.join(ATTRIBUTES)}.")
        bad = set(attributes[name]) - set(values)
        if bad:
            raise LogitleakError(f"Unknown {name} value(s) {sorted(map(str, bad))}; choose from: {', '.join(values)}.")
    rng = np.random.default_rng(seed)
    n, s = len(attributes), image_size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    shifts = rng.uniform(-jitter, jitter, size=(n, 2)) * s
    centre = np.array([_CENTER_FRAC[p] for p in attributes["position"]], dtype=np.float64).reshape(n, 2) * s
    cx, cy = centre[:, 0] + shifts[:, 0], centre[:, 1] + shifts[:, 1]
    radius = np.array([_RADIUS_FRAC[z] for z in attributes["size"]], dtype=np.float64) * s
    shape_col = attributes["shape"].to_numpy()
    masks = np.zeros((n, s, s), dtype=bool)
    for shape in SHAPES:  # vectorised per shape, in chunks that keep memory small
        rows = np.flatnonzero(shape_col == shape)
        for k in range(0, len(rows), 2048):
            i = rows[k:k + 2048]
            masks[i] = _shape_mask(shape, xx, yy, cx[i, None, None], cy[i, None, None], radius[i, None, None])
    background = np.array([BACKGROUNDS[b] for b in attributes["background"]], dtype=np.uint8)
    colour = np.array([COLORS[c] for c in attributes["color"]], dtype=np.uint8).reshape(n, 3)
    images = np.empty((n, s, s, 3), dtype=np.uint8)
    images[:] = background[:, None, None, None]
    images[masks] = np.repeat(colour, masks.sum(axis=(1, 2)), axis=0)
    if noise > 0:
        noisy = images.astype(np.float32) + rng.normal(0.0, noise, size=images.shape).astype(np.float32)
        images = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    if return_centres:
        return images, masks, np.stack([cx, cy], axis=1)
    return images, masks


def sample_attributes(n: int, seed: int = 0) -> pd.DataFrame:
    """Draw ``n`` attribute combinations uniformly and independently."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({name: np.asarray(values)[rng.integers(0, len(values), size=n)]
                         for name, values in ATTRIBUTES.items()})


def _check_questions(questions: str | list[str] | tuple[str, ...]) -> list[str]:
    if isinstance(questions, str):
        questions = list(ATTRIBUTES) if questions == "all" else [q.strip() for q in questions.split(",")]
    for q in questions:
        if q not in ATTRIBUTES:
            raise LogitleakError(f"Unknown attribute {q!r} for the shapes set; choose from: {', '.join(ATTRIBUTES)} (or 'all').")
    if not questions:
        raise LogitleakError("No question attribute given for the shapes set; name at least one of: " + ", ".join(ATTRIBUTES) + ".")
    return list(questions)


def make_shapes(n: int = 1000, questions: str | list[str] | tuple[str, ...] = "color", seed: int = 0,
                image_size: int = 32, per_image: str = "one", noise: float = 4.0, geometry_columns: bool = True) -> ProbeSet:
    """Generate the shapes probe set.

    ``n`` samples; ``questions`` names the attribute(s) asked (``"all"`` for every one).
    ``per_image="one"``: each image gets one question, the attribute cycling through
    ``questions``; ``per_image="all"``: every image is asked every question in ``questions``
    (``n`` is then the number of images and samples of one image share a group).
    ``geometry_columns`` adds the numeric attributes (box, centre, area; declared numeric in
    ``meta['numeric']``). Same arguments, same set.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise LogitleakError(f"Seed {seed!r} is not an integer; pass a whole number such as 0.")
    if n < 1:
        raise LogitleakError(f"Number of samples {n} must be at least 1.")
    if per_image not in ("one", "all"):
        raise LogitleakError(f"per_image={per_image!r} is not valid; use 'one' or 'all'.")
    qs = _check_questions(questions)
    rng = np.random.default_rng(seed)
    attrs = sample_attributes(n, seed=int(rng.integers(2**31)))
    pixels, masks, centres = render_shapes(attrs, image_size=image_size, seed=int(rng.integers(2**31)), noise=noise,
                                           return_centres=True)
    numeric = list(NUMERIC_ATTRIBUTES) if geometry_columns else []
    if geometry_columns:
        attrs = pd.concat([attrs, geometry(masks, centres)], axis=1)
    images = [Image.fromarray(p) for p in pixels]
    if per_image == "one":
        img_idx = np.arange(n)
        asked = [qs[i % len(qs)] for i in range(n)]
    else:
        img_idx = np.repeat(np.arange(n), len(qs))
        asked = [qs[j] for _ in range(n) for j in range(len(qs))]
    paraphrase = rng.integers(0, 1 << 30, size=len(img_idx))
    prompts = [QUESTIONS[a][paraphrase[i] % len(QUESTIONS[a])] for i, a in enumerate(asked)]
    return ProbeSet(
        name="shapes",
        prompts=prompts,
        attributes=attrs.iloc[img_idx].reset_index(drop=True),
        asked=asked,
        groups=img_idx.copy(),
        images=[images[i] for i in img_idx],
        meta={"seed": int(seed), "image_size": image_size, "questions": qs, "noise": noise, "numeric": numeric},
    )
