"""Decisions on the attack-cost curves: which points are readable, and the cheapest attack on each attribute.

The curve table (:mod:`logitleak.probing.attack_files`) holds, for each attacked API reading, the
linear probe refitted on ``attacker_samples`` labelled samples (and its full-size row, with
``attacker_samples`` empty). Its points are decided by the audit's own row rules
(:func:`~logitleak.decisions.rules.annotate`): every point is one test of one Holm family (the
curve table's API rows, apart from the audit's family, so adding curves never weakens the audit's
own claims), and a point is readable when its adjusted p-value is below ``alpha`` and its accuracy
interval lies above the majority baseline. The *cheapest attack* on an attribute is its readable
point with the fewest attacker samples (the most V-information breaks ties), over every reading
on the curves; a full-size row counts as the training fold's size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from logitleak.decisions.rules import annotate, num


@dataclass(frozen=True)
class AttackCost:
    """The cheapest readable attack on one attribute: the reading, its attacker size and its figures."""

    attribute: str
    task_relevant: bool
    level: str
    layer: int | None
    k: int | None
    samples: int
    full_size: bool
    accuracy: float
    ci_low: float
    ci_high: float
    baseline: float

    def sentence(self) -> str:
        """"With N labelled queries an attacker reads X at Y (baseline Z)"."""
        where = self.level + (f" layer {self.layer}" if self.layer is not None else "") + (
            f" (k={self.k})" if self.k is not None else "")
        size = f"every training sample ({self.samples})" if self.full_size else f"{self.samples}"
        return (f"With {size} labelled queries an attacker reads {self.attribute} from {where} at "
                f"{self.accuracy:.0%} accuracy (95% CI {self.ci_low:.0%}-{self.ci_high:.0%}; baseline "
                f"{self.baseline:.0%}).")


@dataclass(frozen=True)
class AttackDecisions:
    """The annotated curve table (``readable`` per point, ``samples``: the attacker size, the training
    fold's for a full-size row) and the cheapest attack per attribute (absent: no readable point)."""

    curve: pd.DataFrame
    cheapest: dict[str, AttackCost]
    alpha: float = 0.05


def _int(v) -> int | None:
    x = num(v)
    return None if math.isnan(x) else int(x)


def training_size(row) -> int:
    """The training-fold size of a full-size row: ``n`` tested samples over ``n_folds`` folds."""
    folds = _int(row.get("n_folds")) or 1
    n = _int(row.get("n")) or 0
    return n * (folds - 1) // folds if folds > 1 else n


def decide_attack(curve: pd.DataFrame, alpha: float = 0.05) -> AttackDecisions:
    """Decide every point of ``curve`` (see the module docstring)."""
    if curve is None or curve.empty:
        return AttackDecisions(pd.DataFrame(), {}, alpha)
    ann = annotate(curve, alpha)
    sizes = [_int(v) for v in ann["attacker_samples"]]
    ann["full_size"] = [s is None for s in sizes]
    ann["samples"] = [s if s is not None else training_size(r) for s, (_, r) in zip(sizes, ann.iterrows())]
    cheapest: dict[str, AttackCost] = {}
    for attr, rows in ann[ann["readable"]].groupby("attribute", sort=False):
        best = rows.sort_values(["samples", "v_info_bits"], ascending=[True, False], kind="stable").iloc[0]
        cheapest[str(attr)] = AttackCost(
            attribute=str(attr), task_relevant=bool(best["task_relevant_attr"]), level=str(best["level"]),
            layer=_int(best["layer"]), k=_int(best["k"]), samples=int(best["samples"]),
            full_size=bool(best["full_size"]), accuracy=num(best["accuracy"]), ci_low=num(best["ci_low"]),
            ci_high=num(best["ci_high"]), baseline=num(best["baseline_accuracy"]))
    return AttackDecisions(ann, cheapest, alpha)
