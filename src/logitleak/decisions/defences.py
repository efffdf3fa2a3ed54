"""Which defence to recommend: the audit's own decisions, taken once per defence of a trade-off table.

Each defence's rows (``defense_label``) are decided exactly as an audit's results table is
(:func:`logitleak.decisions.decide`: the family adjustment across that defence's API-level tests,
readable = adjusted p < alpha and the interval above the baseline). A defence whose design cannot
reach alpha at all (too few permutations) gives no recommendation, never "no defence needed". A defence *works* when some
task-irrelevant attribute was measured at an API level under it and none of them leaks; the
recommendation is the working defence with the smallest answer-accuracy loss within
``max_loss`` (no defence at all when the undefended model already leaks nothing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from logitleak.decisions.attributes import Decisions, decide

KINDS: tuple[str, ...] = ("nothing_measured", "untestable", "none_needed", "recommended", "none_found")
UNDEFENDED = "none"


@dataclass(frozen=True)
class DefenceDecision:
    """The audit's decisions under one defence, with its answer accuracy and loss."""

    label: str
    decisions: Decisions = field(repr=False)
    utility_accuracy: float
    utility_loss: float

    @property
    def leaks(self) -> list[str]:
        return [d.attribute for d in self.decisions.leaks]

    @property
    def measured(self) -> bool:
        """Whether some task-irrelevant attribute was measured at an API level under this defence."""
        return any(d.measured for d in self.decisions.irrelevant)

    @property
    def works(self) -> bool:
        return self.measured and not self.leaks


@dataclass(frozen=True)
class Recommendation:
    """The recommendation: ``kind`` (one of :data:`KINDS`), the defence's ``label`` when one is
    recommended (``"none"`` when none is needed), the sentence, and every defence's decisions."""

    kind: str
    text: str
    label: str | None
    defences: dict[str, DefenceDecision] = field(repr=False)
    alpha: float = 0.05

    def __str__(self) -> str:
        return self.text


def _labels(tradeoff: pd.DataFrame) -> pd.Series:
    col = "defense_label" if "defense_label" in tradeoff.columns else "defense"
    return tradeoff[col].astype(str)


def decide_defences(tradeoff: pd.DataFrame, alpha: float = 0.05) -> dict[str, DefenceDecision]:
    """label -> the audit's decisions on that defence's rows, in the table's order."""
    out: dict[str, DefenceDecision] = {}
    labels = _labels(tradeoff)
    for label in dict.fromkeys(labels):
        rows = tradeoff[labels == label]
        util = pd.to_numeric(rows.get("utility_accuracy"), errors="coerce") if "utility_accuracy" in rows else None
        loss = pd.to_numeric(rows.get("utility_loss"), errors="coerce") if "utility_loss" in rows else None
        out[label] = DefenceDecision(
            label=label, decisions=decide(rows, alpha),
            utility_accuracy=float(util.iloc[0]) if util is not None else math.nan,
            utility_loss=float(loss.iloc[0]) if loss is not None else math.nan)
    return out


RULE_WORDS = "no Holm-corrected API-level test below alpha={alpha:g} with its interval above the baseline"


def recommend_defence(tradeoff: pd.DataFrame, max_loss: float, alpha: float = 0.05) -> Recommendation:
    """The cheapest defence in ``tradeoff`` under which no task-irrelevant attribute leaks (see module doc)."""
    defences = decide_defences(tradeoff, alpha) if len(tradeoff) else {}
    rule = RULE_WORDS.format(alpha=alpha)

    def rec(kind: str, text: str, label: str | None = None) -> Recommendation:
        return Recommendation(kind, text, label, defences, alpha)

    if not any(d.measured for d in defences.values()):
        return rec("nothing_measured", "No task-irrelevant attribute was measured, so no defence is needed or recommended.")
    blocked = [text for label, d in defences.items()
               if (text := d.decisions.unreachable_text(f" under the defence {label!r}")) is not None]
    if blocked:
        return rec("untestable", f"No recommendation: {blocked[0]}.")
    base = defences.get(UNDEFENDED)
    base_utility = base.utility_accuracy if base is not None else math.nan
    if base is not None and base.works:  # the undefended model leaks nothing: no defence, whatever others cost
        return rec("none_needed", f"No defence is needed: without one, no task-irrelevant attribute is readable at "
                                  f"the API level ({rule}); answer accuracy {base_utility:.3f}.", UNDEFENDED)
    order = list(defences)
    candidates = [(d.utility_loss, order.index(label), label) for label, d in defences.items()
                  if d.works and d.utility_loss <= max_loss]  # a NaN loss is never within max_loss
    if not candidates:
        return rec("none_found",
                   f"No defence in the grid brings every task-irrelevant attribute at the API level to baseline "
                   f"({rule}) within an answer-accuracy loss of {max_loss:.2f}; widen the grid (stronger noise, "
                   f"smaller k, erasure at more layers) or accept a larger loss.")
    loss, _, label = min(candidates)  # the cheapest; the grid's order breaks ties
    util = defences[label].utility_accuracy
    return rec("recommended", f"Recommended: {label}. It is the cheapest defence in the grid that brings every "
                              f"task-irrelevant attribute at the API level to baseline ({rule}), at an answer-accuracy "
                              f"loss of {loss:.3f} ({base_utility:.3f} -> {util:.3f}).", label)


def strongest_rows(decided: Recommendation | dict[str, DefenceDecision]) -> pd.DataFrame:
    """One row per (defence, task-irrelevant attribute measured at an API level): the decision's
    strongest reading, with ``defense_label``, ``leak`` and the ``p_holm`` the decision used."""
    defences = decided.defences if isinstance(decided, Recommendation) else decided
    out = []
    for label, d in defences.items():
        for a in d.decisions.irrelevant:
            if a.strongest is None:
                continue
            row = a.strongest.copy()
            row["defense_label"], row["leak"] = label, a.leak
            row["utility_accuracy"], row["utility_loss"] = d.utility_accuracy, d.utility_loss
            out.append(row)
    return pd.DataFrame(out).reset_index(drop=True)
