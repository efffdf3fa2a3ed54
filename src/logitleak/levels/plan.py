"""Which levels a run computes: the one rule every command (and build_features) reads.

A level runs when what the capture holds, with a tuned lens and the answer words when the run has
them, meets one of its needs in the level table (:func:`logitleak.levels.table.computable`). A
level the user named that cannot run is one sentence saying what it needs; a level of the default
list that this model or capture lacks is left out. Two rules hold for both: without a generated
response the response levels are left out (and asking only for them is an error), and an
endpoint audit keeps the levels an endpoint returns.
"""

from __future__ import annotations

from collections.abc import Iterable

from logitleak.errors import LogitleakError
from logitleak.levels.table import (
    ANSWER_LEVELS,
    ANSWERS,
    ENDPOINT_LEVELS,
    LENS,
    LEVELS,
    RESPONSE,
    RESPONSE_LEVELS,
    TRANSITION_LEVELS,
    TUNED_LENS_LEVELS,
    computable,
    unknown_level,
)


def runnable_levels(contents: Iterable[str]) -> list[str]:
    """Every level (in table order) a capture holding ``contents`` (plus lens / answers) can give."""
    have = set(contents)
    return [lv for lv in LEVELS if computable(lv, have)]


def _why_not(level: str, contents: set[str]) -> str:
    """The sentence saying what ``level`` needs that ``contents`` lacks."""
    if level in TUNED_LENS_LEVELS and LENS not in contents:
        return f"Level {level!r} needs a tuned lens; fit one with fit_tuned_lens or drop the level."
    if level in ANSWER_LEVELS and ANSWERS not in contents:
        return f"Level {level!r} needs answer_token_ids (the ids of the answer words)."
    if level in RESPONSE_LEVELS and RESPONSE not in contents:
        return (f"Level {level!r} needs a generated response; capture with --generate N (e.g. 8) or drop the "
                "response levels.")
    if level in TRANSITION_LEVELS:
        return (f"Level {level!r} needs a vision-language model whose family declares its vision tower and projector, "
                "captured on a probe set with images; drop the level for this model.")
    return (f"Level {level!r} cannot be computed from this capture (a black-box capture has no hidden states or full "
            "logits); drop it or capture with a local model.")


def plan_levels(levels: Iterable[str], contents: Iterable[str], *, explicit: bool = True,
                generate: bool | None = None, endpoint: bool = False) -> list[str]:
    """The levels to compute, in the order asked (duplicates once).

    ``contents``: what the capture holds (``cap.contents``), plus ``LENS`` when a tuned lens is (or
    will be) fitted and ``ANSWERS`` when the answer words' ids are known. ``explicit``: the user
    named ``levels`` (one that cannot run is an error saying what it needs) rather than taking the
    default list (one that cannot run is left out). ``generate``: whether the run generates a
    response (``None``: the capture says). ``endpoint``: a black-box endpoint audit.
    """
    levels = list(dict.fromkeys(levels))
    if problem := unknown_level(levels):
        raise LogitleakError(problem[0].upper() + problem[1:] + ".")
    have = set(contents)
    if generate is False:
        levels = [lv for lv in levels if lv not in RESPONSE_LEVELS]
        if not levels:
            raise LogitleakError("The response levels need a generated response; pass --generate N (e.g. 8) or choose "
                                 "first-token levels with --levels.")
    if endpoint:
        levels = [lv for lv in levels if lv in ENDPOINT_LEVELS]
    if not explicit:
        return [lv for lv in levels if computable(lv, have)]
    for lv in levels:
        if not computable(lv, have):
            raise LogitleakError(_why_not(lv, have))
    return levels
