"""Cross-validated probing sweeps: feature sets x attributes x probe families -> result rows.

:func:`evaluate_sweep` is the entry point every command calls. It routes each part of its input
to the sweep that reads it, under one :class:`~logitleak.probing.settings.Sweep`:

1. feature sets whose levels get different probe families (the MLP only on ``mlp_levels``) are
   probed per family set, and their rows put back in the order of the feature sets;
2. fold-projected feature sets (``pca``) go to :mod:`logitleak.probing.pca`, whose projection is
   fitted inside each training fold;
3. numeric attributes go to the regression probes (:mod:`logitleak.probing.regression`), class
   attributes to the classifier sweep (:mod:`logitleak.probing.classify`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from logitleak.errors import LogitleakError
from logitleak.probing.classify import classify
from logitleak.probing.families import families_for
from logitleak.probing.pca import evaluate_fold_levels, split_fold_levels
from logitleak.probing.regression import evaluate_regression, split_numeric
from logitleak.probing.settings import Sweep
from logitleak.results import to_frame

FeatureKey = tuple[str, "int | None", "int | None"]
EXTRA_COLUMNS: tuple[str, ...] = (
    "p_test", "p_value_heldout", "p_value_permutation", "label_entropy_bits", "v_info_p_value",
    "control_v_info_bits", "n_permutations", "n_folds", "n_groups", "C", "permutation_stats", "permutation_key",
    "converged",
)
"""Columns :func:`evaluate_sweep` adds after ``RESULT_COLUMNS``: which test gave ``p_value``
(``heldout`` or ``permutation``) and both tests' p-values (the permutation one NaN without
permutations), the plug-in ``H(Y)``, the permutation p-value of the V-information, the control
task's V-information, the design (permutations, folds -- 1 for a held-out split --, groups) and
the linear probe's median chosen C, the permutation statistic (accuracy) on the real labels then
under each of the run's shared permutations with the key naming them (None without
permutations; the Westfall–Young adjustment reads them), and the fraction of the row's fits that
converged (L-BFGS met its tolerance; the MLP stopped early rather than at its epoch cap)."""


def evaluate_sweep(
    features: Mapping[tuple[str, int | None, int | None], np.ndarray],
    labels: Mapping[str, np.ndarray],
    *,
    groups: np.ndarray | None = None,
    task_attribute: str | None = None,
    probes: Sequence[str] = ("linear", "mlp"),
    n_folds: int = 5,
    n_permutations: int = 0,
    n_bootstrap: int = 1000,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
    test_size: float | None = None,
    val_fraction: float = 0.2,
    probe_params: Mapping[str, Mapping] | None = None,
    dtype: torch.dtype = torch.float32,
    memory_budget: int | None = None,
    mlp_levels: Collection[str] | None = None,
    attack_levels: Collection[str] | None = None,
    attack_sizes: Sequence[int] = (),
    attack_k: int | None = None,
    eval_features: Mapping | None = None,
    shadow: str | None = None,
) -> pd.DataFrame:
    """Probe every feature set for every attribute with every probe family.

    ``features``: ``{(level, layer, k): (n, d) array}``; ``labels``: ``{attribute: (n,) labels}``
    (strings or integers); ``groups``: optional ``(n,)`` group ids (samples of one group never
    straddle a split; permutations, control labels and bootstrap resampling act on groups).
    ``n_folds``-fold stratified cross-validation, or one held-out split of fraction ``test_size``.
    Returns one row per (level, layer, k, attribute, probe) with every ``RESULT_COLUMNS`` column
    plus :data:`EXTRA_COLUMNS`; see :mod:`logitleak.probing.metrics` for the definitions.

    ``probe_params``: per-family options, e.g. ``{"linear": {"C": 1.0}}`` (fixed C instead of the
    inner-split choice from ``Cs``), ``{"mlp": {"hidden": 32}}``. Deterministic given ``seed``
    (and device/dtype), and each feature set's rows do not depend on the other feature sets.
    ``p_value`` comes from the held-out gain test (:mod:`logitleak.probing.heldout`) unless
    ``n_permutations > 0``: then from that many label permutations with refits (the exact but
    costly check); ``p_test`` says which. ``n_bootstrap=0`` leaves intervals NaN.
    ``mlp_levels``: the MLP probes only feature sets of these levels (None: all).
    ``attack_levels``: the class rows of these levels get the attacker's view (ROC, low-FPR,
    exposure: :mod:`logitleak.probing.attack_view`) and, for each of ``attack_sizes``, a
    cost-curve row (``attacker_samples`` set: :mod:`logitleak.probing.attack_cost`), for the feature
    sets of k ``attack_k`` (and those without a k) only, unless it is None. ``eval_features`` (same
    keys and shapes as ``features``): a transfer (shadow) attack, class attributes only: the probes are
    fitted on ``features`` (a shadow model's outputs) and every held-out score is of these rows (the
    victim's outputs for the same inputs); the rows' ``shadow`` column is ``shadow``.
    """
    sweep = Sweep(groups=groups, task_attribute=task_attribute, probes=probes, n_folds=n_folds,
                  n_permutations=n_permutations, n_bootstrap=n_bootstrap, seed=seed, device=device,
                  progress=progress, test_size=test_size, val_fraction=val_fraction, probe_params=probe_params,
                  dtype=dtype, memory_budget=memory_budget,
                  attack_levels=attack_levels, attack_sizes=tuple(attack_sizes), attack_k=attack_k,
                  eval_features=eval_features, shadow=shadow)
    if eval_features is not None:
        _check_shadow(features, labels)
    by_families: dict[tuple, list] = {}
    for key in features:
        by_families.setdefault(families_for(key[0], probes, mlp_levels), []).append(key)
    if not by_families or list(by_families) == [tuple(probes)]:
        return _by_projection(features, labels, sweep)
    parts = [_by_projection({k: features[k] for k in keys}, labels, replace(sweep, probes=fams))
             for fams, keys in by_families.items() if fams]
    if not parts:
        return to_frame([])
    return _in_feature_order(pd.concat(parts, ignore_index=True), features)


def _check_shadow(features: Mapping, labels: Mapping[str, np.ndarray]) -> None:
    """A shadow attack scores class attributes of plain feature sets only (one sentence otherwise)."""
    numeric, _ = split_numeric(labels)
    fold, _ = split_fold_levels(features)
    if numeric or fold:
        what = f"numeric attribute {next(iter(numeric))!r}" if numeric else f"fold-projected level {next(iter(fold))[0]!r}"
        raise LogitleakError(f"A shadow attack (eval_features) scores class attributes of plain feature sets, not the "
                             f"{what}; leave it out of this sweep.")


def _in_feature_order(rows: pd.DataFrame, features: Mapping) -> pd.DataFrame:
    """``rows`` sorted (stably) by the order of their feature set in ``features``."""
    order = {tuple(k): i for i, k in enumerate(features)}
    rank = [order[(lv, None if pd.isna(la) else int(la), None if pd.isna(k) else int(k))]
            for lv, la, k in zip(rows["level"], rows["layer"], rows["k"])]
    return to_frame(rows.iloc[np.argsort(rank, kind="stable")].reset_index(drop=True))


def _by_projection(features: Mapping, labels: Mapping[str, np.ndarray], sweep: Sweep) -> pd.DataFrame:
    """Fold-projected feature sets to their own sweep, the others by attribute kind; fold rows last."""
    fold_feats, rest = split_fold_levels(features)
    if not (fold_feats and labels):
        return _by_target(features, labels, sweep)
    fold_rows = evaluate_fold_levels(fold_feats, labels, **sweep.design())
    if not rest:
        return fold_rows
    return to_frame(pd.concat([_by_target(rest, labels, sweep), fold_rows], ignore_index=True))


def _by_target(features: Mapping, labels: Mapping[str, np.ndarray], sweep: Sweep) -> pd.DataFrame:
    """Class attributes to the classifier sweep, numeric ones to the regression probes; numeric rows last."""
    numeric, classes = split_numeric(labels)
    if not numeric:
        return classify(features, classes, sweep)
    if not classes:
        return evaluate_regression(features, numeric, **sweep.design())
    task = sweep.task_attribute if sweep.task_attribute in classes else None
    cat = classify(features, classes, replace(sweep, task_attribute=task))
    return to_frame(pd.concat([cat, evaluate_regression(features, numeric, **sweep.design())], ignore_index=True))
