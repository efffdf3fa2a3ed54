"""The one table of representational levels: every module reads its lists of levels from here.

One :class:`Level` per row of the results table's ``level`` column, in the order the report shows
them (rich -> compressed). What a level needs from a capture (``needs``: alternatives, any one
suffices) drives :func:`logitleak.levels.features.available_levels`; ``axis`` says what its ``layer``
column indexes; ``k`` whether its rows carry a top-k ``k``; ``api`` whether it is what an API's
``top_logprobs`` hands an attacker; ``endpoint`` whether a black-box endpoint capture yields it.
The named tuples below (``API_LEVELS``, ``TRANSITION_LEVELS``, ...) are views of the table, so a
new level is added in one row and every command, table and report sees it.
"""

from __future__ import annotations

from dataclasses import dataclass

# What a capture (or the audit around it) can hold; a level needs one of its alternatives.
HIDDEN, LOGITS, API, API_IDS = "hidden", "logits", "api_topk", "api_ids"
VISION, PROJECTOR, IMAGE_HIDDEN = "vision", "projector", "image_hidden"
RESPONSE, RESPONSE_HIDDEN = "response", "response_hidden"
LENS, ANSWERS = "lens", "answers"


@dataclass(frozen=True)
class Level:
    """One representational level: its name, where it sits, and what computing it needs."""

    name: str
    stage: str                                  # "transition", "decoder", "lens", "output" or "response"
    needs: tuple[frozenset[str], ...]           # alternatives: any one set of contents suffices
    doc: str
    axis: str | None = None                     # "decoder" / "vision": what `layer` indexes; None: no layer
    k: bool = False                             # rows carry a top-k k
    api: bool = False                           # what an API's top_logprobs hands an attacker
    endpoint: bool = False                      # a black-box endpoint capture yields it
    fold: bool = False                          # its projection is fitted inside each training fold
    colour: str = "#555555"                     # its colour in the report's figures


def _n(*alternatives: set[str]) -> tuple[frozenset[str], ...]:
    return tuple(frozenset(a) for a in alternatives)


TABLE: tuple[Level, ...] = (
    Level("vision", "transition", _n({VISION}), "vision tower state at vision layer l, pooled over the image tokens",
          axis="vision", colour="#f9a825"),
    Level("projector", "transition", _n({PROJECTOR}), "the projector's output (what the decoder receives), pooled",
          colour="#ef6c00"),
    Level("image_residual", "transition", _n({IMAGE_HIDDEN}),
          "decoder hidden state at layer l, averaged over the image-token positions", axis="decoder", colour="#00838f"),
    Level("residual", "decoder", _n({HIDDEN}), "hidden state at layer l", axis="decoder", colour="#1f4e79"),
    Level("pca", "decoder", _n({HIDDEN}),
          "hidden state at layer l through its top-k principal components (fitted per training fold)",
          axis="decoder", fold=True, colour="#5c6bc0"),
    Level("logit_lens_topk", "lens", _n({HIDDEN}), "top-k values of the logit-lens logits at layer l",
          axis="decoder", k=True, colour="#e08214"),
    Level("logit_lens_answers", "lens", _n({HIDDEN, ANSWERS}),
          "logit-lens logits restricted to the answer-word tokens at layer l", axis="decoder", colour="#b35806"),
    Level("tuned_lens_topk", "lens", _n({HIDDEN, LENS}), "top-k values of the tuned-lens logits at layer l",
          axis="decoder", k=True, colour="#2e8b57"),
    Level("tuned_lens_answers", "lens", _n({HIDDEN, LENS, ANSWERS}),
          "tuned-lens logits restricted to the answer-word tokens at layer l", axis="decoder", colour="#1b5e20"),
    Level("logits", "output", _n({LOGITS}), "full final logits", colour="#6a3d9a"),
    Level("topk_ids", "output", _n({LOGITS}, {API_IDS}),
          "top-k log-probabilities with token identities (what top_logprobs returns)",
          k=True, api=True, endpoint=True, colour="#c62828"),
    Level("topk_logprobs", "output", _n({LOGITS}, {API}), "sorted top-k log-probabilities, no ids",
          k=True, api=True, endpoint=True, colour="#ad1457"),
    Level("topk_logits", "output", _n({LOGITS}), "sorted top-k logit values, no ids", k=True, api=True,
          colour="#8e24aa"),
    Level("top1_prob", "output", _n({LOGITS}, {API}), "probability of the top token", api=True, endpoint=True,
          colour="#5d4037"),
    Level("response_residual", "response", _n({RESPONSE, RESPONSE_HIDDEN}),
          "residual at layer l averaged over the generated positions", axis="decoder"),
    Level("response_topk_ids", "response", _n({RESPONSE}), "top-k with ids of every returned token, combined",
          k=True, api=True, endpoint=True),
    Level("response_topk_logprobs", "response", _n({RESPONSE}),
          "sorted top-k values of every returned token, side by side", k=True, api=True, endpoint=True),
)
BY_NAME: dict[str, Level] = {lv.name: lv for lv in TABLE}


def names(**where) -> tuple[str, ...]:
    """Level names (in table order) whose fields equal ``where``, e.g. ``names(stage="lens")``."""
    return tuple(lv.name for lv in TABLE if all(getattr(lv, f) == v for f, v in where.items()))


def _needing(item: str) -> tuple[str, ...]:
    return tuple(lv.name for lv in TABLE if all(item in alt for alt in lv.needs))


def computable(level: str, contents: set[str] | frozenset[str]) -> bool:
    """Whether ``level`` can be computed from a capture holding ``contents`` (plus lens / answers)."""
    return any(alt <= contents for alt in BY_NAME[level].needs)


LEVELS: tuple[str, ...] = tuple(BY_NAME)
API_LEVELS: tuple[str, ...] = names(api=True)
ENDPOINT_LEVELS: tuple[str, ...] = names(endpoint=True)
K_LEVELS: tuple[str, ...] = names(k=True)
TRANSITION_LEVELS: tuple[str, ...] = names(stage="transition")
LENS_STAGE_LEVELS: tuple[str, ...] = names(stage="lens")
RESPONSE_LEVELS: tuple[str, ...] = names(stage="response")
RESPONSE_LAYER_LEVELS: tuple[str, ...] = names(stage="response", axis="decoder")
RESPONSE_API_LEVELS: tuple[str, ...] = names(stage="response", api=True)
DECODER_LAYER_LEVELS: tuple[str, ...] = names(axis="decoder")
"""Levels whose ``layer`` is a decoder layer (the audit's ``layer_type`` column reads them)."""
LAYER_LEVELS: tuple[str, ...] = ("residual",) + LENS_STAGE_LEVELS
"""The answer-position levels with one entry per decoder layer (residual and the lenses)."""
TUNED_LENS_LEVELS: tuple[str, ...] = _needing(LENS)
ANSWER_LEVELS: tuple[str, ...] = _needing(ANSWERS)
FOLD_LEVELS: tuple[str, ...] = names(fold=True)
"""Levels whose projection is fitted inside each training fold (their features are the residual)."""
OUTPUT_TOPK_LEVELS: tuple[str, ...] = names(stage="output", api=True)
"""The final-output levels an API can hand out (top-k values / ids, the top token's probability)."""
OUTPUT_K_LEVELS: tuple[str, ...] = names(stage="output", k=True)
"""The final-output top-k levels (values with or without ids, logits): one feature set per k."""
RETURNED_LEVELS: tuple[str, ...] = names(stage="output", endpoint=True)
"""The final-output levels read from what an API returns (a black-box or defended top-k)."""
DEFAULT_PCA_DIMS: tuple[int, ...] = (1, 4, 16, 64)
"""The ``pca`` level's dimensions when none are asked for."""


def unknown_level(levels) -> str | None:
    """The sentence (without its full stop) naming the first of ``levels`` that is not a level, or ``None``."""
    unknown = [x for x in levels if x not in BY_NAME]
    return f"unknown level {unknown[0]!r}; choose from: {', '.join(LEVELS)}" if unknown else None


LEVEL_COLOURS: dict[str, str] = {lv.name: lv.colour for lv in TABLE if lv.colour != "#555555"}
