"""Per-attribute decisions of one results table: readable? leak? strongest reading, smallest k.

:func:`decide` applies the row rules of :mod:`logitleak.decisions.rules` to a whole table and
returns one :class:`AttributeDecision` per attribute inside a :class:`Decisions`. The verdict,
the HTML report, the terminal summaries and ``defend``'s recommendation all read these objects,
so none of them re-derives a rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from logitleak.decisions.multiplicity import HOLM, WESTFALL_YOUNG, permutations_needed, smallest_reachable
from logitleak.decisions.rules import (TUNED_LEVELS, annotate, best_row, finite, level_rank, num, relevance,
                                       smallest_k_key, smallest_k_row, strongest, strongest_reading)
from logitleak.levels.table import API_LEVELS

STATUSES: tuple[str, ...] = ("empty", "no_api", "leak", "clean", "untestable", "nothing_to_claim")
"""What a whole table says: nothing measured; no API level measured; a task-irrelevant attribute
leaks; no task-irrelevant attribute measured at the API level leaks; none leaks but the design
cannot reach significance (too few permutations for the family: "no leak" cannot be told from
"not tested"); no task-irrelevant attribute measured at the API level at all."""

CALLS: tuple[str, ...] = ("leak", "no_leak", "readable", "not_readable", "not_measured")
"""One attribute's call: a task-irrelevant attribute readable at an API level (leak) or not; the
task-relevant attribute readable there (as expected) or not; no API-level row at all."""


@dataclass(frozen=True)
class AttributeDecision:
    """The decisions about one attribute (rows are those of ``Decisions.best``: strongest family).

    ``strongest`` is the readable API row with the most V-information when ``readable``, else the
    API row with the most V-information (None when no API level was measured). ``first`` is the
    smallest-k readable API row and ``first_per_level`` the same per API level. ``inside`` is the
    strongest readable internal row; ``residual`` / ``tuned`` the best residual-stream and
    tuned-lens rows (readable or not); ``by_level`` the strongest reading at every level measured.
    """

    attribute: str
    task_relevant: bool
    measured: bool
    readable: bool
    leak: bool
    strongest: pd.Series | None = field(default=None, repr=False, compare=False)
    first: pd.Series | None = field(default=None, repr=False, compare=False)
    first_per_level: dict = field(default_factory=dict, repr=False, compare=False)
    inside: pd.Series | None = field(default=None, repr=False, compare=False)
    residual: pd.Series | None = field(default=None, repr=False, compare=False)
    tuned: pd.Series | None = field(default=None, repr=False, compare=False)
    by_level: dict = field(default_factory=dict, repr=False, compare=False)
    """level -> the strongest reading of this attribute at that level (best layer, k and family)."""

    @property
    def call(self) -> str:
        """The decision in one word, one of :data:`CALLS`."""
        if not self.measured:
            return "not_measured"
        if self.readable:
            return "readable" if self.task_relevant else "leak"
        return "not_readable" if self.task_relevant else "no_leak"

    @property
    def smallest_k(self) -> int | None:
        """The smallest k with a readable API row (None when not readable or read from ``top1_prob``)."""
        if self.first is None or not finite(self.first.get("k")):
            return None
        return int(num(self.first["k"]))

    @property
    def p_value(self) -> float:
        """The strongest row's raw p-value (NaN when there is none)."""
        return num(self.strongest.get("p_value")) if self.strongest is not None else float("nan")

    @property
    def p_holm(self) -> float:
        """The strongest row's family-adjusted p-value, the one the decision used (NaN when none)."""
        return num(self.strongest.get("p_holm")) if self.strongest is not None else float("nan")


@dataclass(frozen=True)
class Decisions:
    """Every decision about one results table at one ``alpha``."""

    alpha: float
    table: pd.DataFrame = field(repr=False)
    best: pd.DataFrame = field(repr=False)
    attributes: dict[str, AttributeDecision]
    n_tests: int
    adjustment: str = HOLM
    smallest_p: float = 0.0
    """The smallest family-adjusted p-value the design could give (0: not bounded by a count)."""

    @property
    def reachable(self) -> bool:
        """Whether the design can give an API-level p-value below ``alpha`` at all."""
        return self.smallest_p < self.alpha

    @property
    def permutations_needed(self) -> int:
        """The smallest permutation count with which this family could reach ``alpha``."""
        return permutations_needed(self.n_tests, self.alpha, self.adjustment)

    def unreachable_text(self, where: str = "") -> str | None:
        """The clause saying the design cannot reach ``alpha`` (None when it can): the permutation
        count, the smallest adjusted p-value it allows and the count that would reach ``alpha``."""
        if self.reachable:
            return None
        counts = pd.to_numeric(self.table.loc[self.table["is_api"], "n_permutations"], errors="coerce").dropna()
        method = "Westfall–Young" if self.adjustment == WESTFALL_YOUNG else f"Holm over {self.n_tests} API-level tests"
        return (f"with {int(counts.max()) if len(counts) else 0} permutations no p-value can fall below "
                f"{self.alpha:g}{where} ({method}: the smallest it can give is {self.smallest_p:.3g}), so 'at baseline' "
                f"cannot be told from 'not tested'; rerun with at least {self.permutations_needed} permutations, or "
                f"without --permutations (the held-out test)")

    @property
    def irrelevant(self) -> list[AttributeDecision]:
        return [d for d in self.attributes.values() if not d.task_relevant]

    @property
    def relevant(self) -> list[AttributeDecision]:
        return [d for d in self.attributes.values() if d.task_relevant]

    @property
    def leaks(self) -> list[AttributeDecision]:
        """The task-irrelevant attributes readable from the API output, in table order."""
        return [d for d in self.irrelevant if d.leak]

    @property
    def unmeasured(self) -> list[str]:
        """Task-irrelevant attributes with no API-level row."""
        return [d.attribute for d in self.irrelevant if not d.measured]

    @property
    def status(self) -> str:
        """One of :data:`STATUSES` (what the headline says and how it is coloured)."""
        if self.table.empty:
            return "empty"
        if not self.table["is_api"].any():
            return "no_api"
        if self.leaks:
            return "leak"
        if self.irrelevant and len(self.unmeasured) < len(self.irrelevant):
            return "clean" if self.reachable else "untestable"
        return "nothing_to_claim"


def _decide_one(best: pd.DataFrame, attr: str, task_relevant: bool) -> AttributeDecision:
    rows = best[best["attribute"] == attr]
    api = rows[rows["is_api"]]
    readable = api[api["readable"]]
    per_level = {}
    for level in [lv for lv in API_LEVELS if lv in set(readable["level"])]:
        per_level[level] = smallest_k_row(readable[readable["level"] == level])
    first = min(per_level.values(), key=smallest_k_key) if per_level else None
    return AttributeDecision(
        attribute=attr, task_relevant=task_relevant, measured=not api.empty, readable=not readable.empty,
        leak=not readable.empty and not task_relevant,
        strongest=strongest_reading(api),
        first=first, first_per_level=per_level,
        inside=best_row(rows[~rows["is_api"] & rows["readable"]]),
        residual=best_row(rows[rows["level"] == "residual"]),
        tuned=best_row(rows[rows["level"].isin(TUNED_LEVELS)]),
        by_level={level: strongest_reading(rows[rows["level"] == level])
                  for level in sorted(set(rows["level"]), key=level_rank)})


def decide(results: pd.DataFrame, alpha: float = 0.05) -> Decisions:
    """Annotate ``results`` with the row rules and decide every attribute (see the rules module)."""
    ann = annotate(results, alpha)
    best = strongest(ann)
    rel = relevance(ann) if len(ann) else {}
    attrs = {a: _decide_one(best, a, rel.get(a, False)) for a in dict.fromkeys(ann["attribute"])} if len(ann) else {}
    api = ann[ann["is_api"]] if len(ann) else ann
    n_tests = int(np.isfinite(api["p_value"]).sum()) if len(ann) else 0
    method = str(api["p_adjustment"].dropna().iloc[0]) if len(api) and api["p_adjustment"].notna().any() else HOLM
    return Decisions(alpha=alpha, table=ann, best=best, attributes=attrs, n_tests=n_tests, adjustment=method,
                     smallest_p=smallest_reachable(api, method) if len(api) else 0.0)
