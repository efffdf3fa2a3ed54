"""The defence grid syntax.

A grid is ``;``-separated defences; a defence is ``+``-joined transforms applied in order; a
transform is ``name`` or ``name:v1,v2,...`` where several values sweep that strength::

    topk:1,2,5;round:2,1,0;gauss:0.1,0.5,1;laplace:0.5;temperature:0.5,2;values_only;ranks_only
    leace:all;leace:2,3;round:1+gauss:0.1
    bottleneck:0.1,1,10             (a trained privacy bottleneck per weight lambda; see docs/BOTTLENECK.md)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from logitleak.errors import LogitleakError

OUTPUT_TRANSFORMS = ("topk", "round", "gauss", "laplace", "temperature", "values_only", "ranks_only")
MODEL_TRANSFORMS = ("leace", "bottleneck")
NO_VALUE = ("values_only", "ranks_only")

DEFAULT_GRID = ("none;topk:1,2,5;round:2,1,0;gauss:0.1,0.5,1,2;laplace:0.5,1;temperature:2,4;"
                "values_only;ranks_only;leace:all")


@dataclass(frozen=True)
class Transform:
    """One transform with one strength (``None`` for transforms without a strength).

    For ``leace`` the value is a layer index, or ``-1`` meaning every layer; for ``bottleneck`` the
    weight lambda of the adversaries' reading in the fine-tuning objective.
    """

    name: str
    value: float | int | None = None

    def label(self) -> str:
        if self.value is None:
            return self.name
        if self.name == "leace" and self.value == -1:
            return "leace:all"
        return f"{self.name}:{self.value:g}" if isinstance(self.value, float) else f"{self.name}:{self.value}"


@dataclass(frozen=True)
class Defense:
    """A composition of transforms; the empty composition is no defence."""

    transforms: tuple[Transform, ...] = ()

    @property
    def name(self) -> str:
        return "+".join(t.name for t in self.transforms) or "none"

    @property
    def strength(self) -> str:
        vals = [t.label().split(":", 1)[1] for t in self.transforms if ":" in t.label()]
        return ",".join(vals)

    def label(self) -> str:
        return "+".join(t.label() for t in self.transforms) or "none"

    def without_redaction(self) -> Defense:
        """This defence without ``values_only`` / ``ranks_only``: what decides the token the model answers
        with (a redaction changes what the API reports, not which token is generated)."""
        return Defense(tuple(t for t in self.transforms if t.name not in NO_VALUE))

    @property
    def output_side(self) -> tuple[Transform, ...]:
        return tuple(t for t in self.transforms if t.name in OUTPUT_TRANSFORMS)

    @property
    def erasure_layers(self) -> tuple[int, ...]:
        """Layers (hidden-state indices) to erase at; ``(-1,)`` means all."""
        return tuple(int(t.value) for t in self.transforms if t.name == "leace")

    @property
    def bottleneck(self) -> float | None:
        """The lambda of a trained bottleneck (``bottleneck:L``), or ``None`` when there is none."""
        return next((float(t.value) for t in self.transforms if t.name == "bottleneck"), None)

    @property
    def model_side(self) -> bool:
        """Whether the defence acts inside the model (erasure or a trained bottleneck)."""
        return any(t.name in MODEL_TRANSFORMS for t in self.transforms)


def _parse_value(name: str, text: str):
    try:
        value = float(text)
    except ValueError:
        if name == "leace" and text == "all":
            return -1
        raise LogitleakError(f"Defence value {text!r} for {name!r} is not a number; write e.g. {name}:1.") from None
    if name in ("topk", "round", "leace"):
        if value != int(value):
            raise LogitleakError(f"Defence value {text!r} for {name!r} must be a whole number.")
        value = int(value)
    if name == "topk" and value < 1:
        raise LogitleakError(f"Defence topk:{text} is invalid; k must be at least 1.")
    if name == "round" and value < 0:
        raise LogitleakError(f"Defence round:{text} is invalid; the number of decimals must be 0 or more.")
    if name in ("gauss", "laplace") and value < 0:
        raise LogitleakError(f"Defence {name}:{text} is invalid; the noise scale must be 0 or more.")
    if name == "temperature" and value <= 0:
        raise LogitleakError(f"Defence temperature:{text} is invalid; the temperature must be above 0.")
    if name == "bottleneck" and not 0 <= value < float("inf"):
        raise LogitleakError(f"Defence bottleneck:{text} is invalid; the weight lambda must be a number of 0 or more.")
    if name == "leace" and value < 1:
        raise LogitleakError(f"Defence leace:{text} is invalid; erase at a layer >= 1 (a block output) or 'all'.")
    return value


def _parse_transform(text: str) -> list[Transform]:
    name, _, values = text.strip().partition(":")
    name = name.strip()
    if name not in OUTPUT_TRANSFORMS + MODEL_TRANSFORMS:
        raise LogitleakError(f"Unknown defence {name!r}; choose from {', '.join(OUTPUT_TRANSFORMS + MODEL_TRANSFORMS)}.")
    if name in NO_VALUE:
        if values:
            raise LogitleakError(f"Defence {name!r} takes no value; write just {name}.")
        return [Transform(name)]
    if not values:
        raise LogitleakError(f"Defence {name!r} needs a value, e.g. {name}:1.")
    return [Transform(name, _parse_value(name, v.strip())) for v in values.split(",") if v.strip()]


def parse_defenses(spec: str | None) -> list[Defense]:
    """Parse a grid spec into defences (a value list expands into one defence per value)."""
    spec = DEFAULT_GRID if spec is None or not spec.strip() else spec
    grid: list[Defense] = []
    for item in spec.split(";"):
        item = item.strip()
        if not item:
            continue
        if item == "none":
            grid.append(Defense())
            continue
        options = [_parse_transform(part) for part in item.split("+")]
        for combo in itertools.product(*options):
            names = [t.name for t in combo]
            if "bottleneck" in names and (names.count("bottleneck") > 1 or "leace" in names):
                raise LogitleakError(f"Defence {item!r} combines a trained bottleneck with another model-side defence; "
                                     "give each its own entry (separated by ';').")
            grid.append(Defense(tuple(combo)))
    if not grid:
        raise LogitleakError(f"Defence spec {spec!r} names no defence; write e.g. 'topk:1,2;round:1'.")
    return list(dict.fromkeys(grid))


def parse_single_defense(spec: str | None) -> Defense:
    """One output-side defence (for a server): exactly one entry, no sweeps, no model-side transforms."""
    if not spec:
        return Defense()
    grid = parse_defenses(spec)
    if len(grid) != 1:
        raise LogitleakError(f"Defence {spec!r} expands to {len(grid)} settings; give one value per transform.")
    if grid[0].model_side:
        name = next(t.name for t in grid[0].transforms if t.name in MODEL_TRANSFORMS)
        raise LogitleakError(f"Defence {spec!r} includes {name}, which acts inside the model; a server takes output-side "
                             "defences only (serve a bottlenecked model by its saved directory instead).")
    return grid[0]
