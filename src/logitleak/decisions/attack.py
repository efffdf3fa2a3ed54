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
    full_samples: int | None = None
    """The same reading's full-size row: its training-fold size and accuracy (None: none on the curve)."""
    full_accuracy: float = math.nan

    def sentence(self) -> str:
        """"With N labelled queries an attacker reads X at Y (baseline Z)", and what the whole fold reads."""
        where = self.level + (f" layer {self.layer}" if self.layer is not None else "") + (
            f" (k={self.k})" if self.k is not None else "")
        size = f"every training sample ({self.samples})" if self.full_size else f"{self.samples}"
        more = (f"; with {self.full_samples}, at {self.full_accuracy:.0%}" if not self.full_size and self.full_samples
                and math.isfinite(self.full_accuracy) else "")
        return (f"With {size} labelled queries an attacker reads {self.attribute} from {where} at "
                f"{self.accuracy:.0%} accuracy (95% CI {self.ci_low:.0%}-{self.ci_high:.0%}; baseline "
                f"{self.baseline:.0%}){more}.")


@dataclass(frozen=True)
class AttackDecisions:
    """The annotated curve table (``readable`` per point, ``samples``: the attacker size, the training
    fold's for a full-size row) and the cheapest attack per attribute (absent: no readable point),
    with the ROC and exposure tables the report draws from."""

    curve: pd.DataFrame
    cheapest: dict[str, AttackCost]
    alpha: float = 0.05
    roc: pd.DataFrame | None = None
    """Each attacked row's ROC curve (``roc.parquet``), handed on for the report."""
    exposure: pd.DataFrame | None = None
    """Each attacked row's per-record posteriors (``exposure.parquet``), handed on for the report."""


def _int(v) -> int | None:
    x = num(v)
    return None if math.isnan(x) else int(x)


def _same(col: pd.Series, value) -> pd.Series:
    return col.isna() if pd.isna(value) else (col == value).fillna(False).astype(bool)


def training_size(row) -> int:
    """The training-fold size of a full-size row: ``n`` tested samples over ``n_folds`` folds."""
    folds = _int(row.get("n_folds")) or 1
    n = _int(row.get("n")) or 0
    return n * (folds - 1) // folds if folds > 1 else n


def decide_attack(curve: pd.DataFrame, alpha: float = 0.05, roc: pd.DataFrame | None = None,
                  exposure: pd.DataFrame | None = None) -> AttackDecisions:
    """Decide every point of ``curve`` (see the module docstring); ``roc`` / ``exposure`` ride along."""
    if curve is None or curve.empty:
        return AttackDecisions(pd.DataFrame(), {}, alpha, roc, exposure)
    ann = annotate(curve, alpha)
    sizes = [_int(v) for v in ann["attacker_samples"]]
    ann["full_size"] = [s is None for s in sizes]
    ann["samples"] = [s if s is not None else training_size(r) for s, (_, r) in zip(sizes, ann.iterrows())]
    cheapest: dict[str, AttackCost] = {}
    for attr, rows in ann[ann["readable"]].groupby("attribute", sort=False):
        best = rows.sort_values(["samples", "v_info_bits"], ascending=[True, False], kind="stable").iloc[0]
        full = ann[ann["full_size"] & (ann["attribute"] == attr) & (ann["level"] == best["level"])
                   & _same(ann["layer"], best["layer"]) & _same(ann["k"], best["k"])]
        cheapest[str(attr)] = AttackCost(
            attribute=str(attr), task_relevant=bool(best["task_relevant_attr"]), level=str(best["level"]),
            layer=_int(best["layer"]), k=_int(best["k"]), samples=int(best["samples"]),
            full_size=bool(best["full_size"]), accuracy=num(best["accuracy"]), ci_low=num(best["ci_low"]),
            ci_high=num(best["ci_high"]), baseline=num(best["baseline_accuracy"]),
            full_samples=int(full["samples"].iloc[0]) if len(full) else None,
            full_accuracy=num(full["accuracy"].iloc[0]) if len(full) else math.nan)
    return AttackDecisions(ann, cheapest, alpha, roc, exposure)
