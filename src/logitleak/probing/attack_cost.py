"""Attack-cost curves: what an attacker with N labelled queries reads, for N along a curve.

The audit's row answers "what does a probe trained on a whole training fold read?"; an attacker
holds far fewer labelled victims. For each attacker size ``N`` (the sweep's ``attack_sizes``; those
above the smallest training fold are left out, the audit's own row is the curve's last point) the
linear probe (its C chosen on an inner split of the ``N`` samples) is refitted on *nested subsets*
of every training fold: one fixed random order of the samples (of whole groups, when there are
groups) is drawn once, and a fold's subset of size ``N`` is its first ``N`` samples in that order,
so a larger attacker holds every sample a smaller one does. The test folds are the audit's own,
so every point is scored on the same held-out samples as the audit's row, with the same baseline,
bootstrap intervals (widened by the fitting variance of a probe trained on ``N`` samples,
:mod:`logitleak.probing.intervals`) and result columns (``attacker_samples`` = ``N``).

Each point's p-value is the held-out gain test of :mod:`logitleak.probing.heldout` (the exact
null of :mod:`logitleak.probing.heldout_exact` for groups of unequal sizes) on the
forward-chained blocks, block ``b`` scored by a probe trained on the first ``N`` samples of the
blocks before it; a block with fewer than ``N`` samples before it is not scored at that size (an
attacker of size ``N`` is never simulated with fewer). All sizes, folds, blocks and attributes of
similar class counts are fitted together in one batched call per chunk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import torch

from logitleak.probing.attack_view import ROC_RESAMPLES
from logitleak.probing.batching import chunk_size, k_buckets, pair_bytes
from logitleak.probing.batching import memory_budget as default_budget
from logitleak.probing.families import fit_family
from logitleak.probing.heldout_exact import heldout_test_pvalues, row_seed
from logitleak.probing.intervals import optimism
from logitleak.probing.plans import AttributePlan
from logitleak.probing.rows import result_rows
from logitleak.probing.settings import Sweep
from logitleak.probing.splits import seeded_rng, stratified_holdout
from logitleak.probing.tensors import prepare_features, resolve_device

CONTROL_COLUMNS = ("control_accuracy", "selectivity", "control_v_info_bits")
"""Left empty on cost-curve rows: the control task is the audit row's (no refit per size)."""


def attacker_order(n: int, seed: int, groups: np.ndarray | None) -> np.ndarray:
    """``(n,)`` each sample's place in the attacker's fixed order (samples of one group share it)."""
    rng = seeded_rng(seed, "attacker-order")
    if groups is None:
        return rng.permutation(n)
    _, inv = np.unique(np.asarray(groups), return_inverse=True)
    return rng.permutation(int(inv.max()) + 1)[inv]


def first_n(rows: np.ndarray, order: np.ndarray, size: int) -> np.ndarray:
    """``(n,)`` bool: the first ``size`` of the samples ``rows`` (a mask) in ``order`` (ties by index)."""
    idx = np.flatnonzero(rows)
    keep = idx[np.lexsort((idx, order[idx]))[:size]]
    out = np.zeros(len(rows), bool)
    out[keep] = True
    return out


def usable_sizes(sizes: Sequence[int], plan: AttributePlan) -> list[int]:
    """The sizes a curve has for ``plan``: those up to its smallest training fold, ascending."""
    smallest = int(plan.train[0].sum(1).min())
    return sorted({int(s) for s in sizes if 0 < int(s) <= smallest})


def _problems(plan: AttributePlan, sizes: list[int], order: np.ndarray, s: Sweep) -> list[dict]:
    """Every fit of one attribute's curve: per size, one per cross-validation split and one per
    forward-chained block that is not the last split."""
    S = plan.n_splits
    fold = np.argmax(plan.test[0], axis=0)
    out = []
    for size in sizes:
        rng = seeded_rng(s.seed, plan.name, "attacker-inner", size)
        fits = [("cv", j, plan.train[0, j], plan.test[0, j]) for j in range(S)]
        fits += [("block", b, fold < b, fold == b) for b in range(1, S - 1) if (fold < b).sum() >= size]
        for kind, j, pool, test in fits:
            train = first_n(pool, order, size)
            fi, va = stratified_holdout(plan.codes, s.val_fraction, rng, s.group_array, rows=np.flatnonzero(train))
            if len(va) == 0:
                fi = va = np.flatnonzero(train)
            inner_fit, inner_val = np.zeros(len(train), bool), np.zeros(len(train), bool)
            inner_fit[fi], inner_val[va] = True, True
            out.append({"size": size, "kind": kind, "index": j, "train": train, "test": test, "fit": inner_fit,
                        "val": inner_val})
    return out


def _blocks(plan: AttributePlan, size: int) -> np.ndarray:
    """The held-out test's blocks scored at ``size`` (the others -1)."""
    S = plan.n_splits
    if S == 1:
        return plan.block.copy()
    fold = np.argmax(plan.test[0], axis=0)
    block = plan.block.copy()
    for b in range(1, S):
        if (fold < b).sum() < size:
            block[block == b] = -1
    return block


def _fit(X: torch.Tensor, plans: list[AttributePlan], probs: list[list[dict]], params: Mapping, s: Sweep) -> dict:
    """Out-of-fold log-probabilities of the true label ``(F, n)``, predictions, forward-chained
    log-probabilities ``(F, n, K)``, chosen C and convergence, per (attribute, size)."""
    F, n, d = X.shape
    K = max(p.n_classes for p in plans)
    flat = [(a, pr) for a, ps in enumerate(probs) for pr in ps]
    out: dict = {}
    for a, pr in flat:
        key = (a, pr["size"])
        if key not in out:
            kp = plans[a].n_classes
            out[key] = {"width": d, "lp": np.zeros((F, n), np.float32), "pred": np.zeros((F, n), np.int64),
                        "lk": np.zeros((F, n, kp)), "C": [], "ok": [], "seen": np.zeros((F, n)), "n_seen": np.zeros(n)}
    budget = s.memory_budget or default_budget(X.device)
    per_pair = pair_bytes("linear", n, d, K, torch.finfo(X.dtype).bits // 8, params)
    p_chunk = chunk_size(len(flat), per_pair, budget, n * d * 16)
    # every size's fits train on nested prefixes of one order: fit on the rows some fit trains on, score all rows
    rows_used = np.flatnonzero(np.any([pr["train"] for _, pr in flat], axis=0))
    X_fit = X[:, torch.as_tensor(rows_used, device=X.device)]
    for c0 in range(0, len(flat), p_chunk):
        part = flat[c0: c0 + p_chunk]
        y = np.stack([plans[a].codes[rows_used] for a, _ in part])
        masks = [np.stack([pr[m][rows_used] for _, pr in part]) for m in ("train", "fit", "val")]
        logp, C, ok = fit_family("linear", X_fit, y, *masks, K, params, seed=s.seed, X_eval=X)
        _store(out, plans, part, logp.double().cpu().numpy(), C, ok)
    return out


def _store(out: dict, plans: list[AttributePlan], part: list, logp: np.ndarray, C, ok) -> None:
    """Each fit's test-row predictions into its (attribute, size) slot: ``logp`` ``(F, n, P, K)``."""
    for j, (a, pr) in enumerate(part):
        plan, slot = plans[a], out[(a, pr["size"])]
        rows = np.flatnonzero(pr["test"])
        lj = logp[:, :, j, : plan.n_classes]
        if pr["kind"] == "cv":
            slot["lp"][:, rows] = lj[:, rows, plan.codes[rows]] if len(rows) else 0.0
            fitted = np.flatnonzero(pr["train"])          # scored in-sample too: the probe's optimism
            slot["seen"][:, fitted] += lj[:, fitted, plan.codes[fitted]]
            slot["n_seen"][fitted] += 1
            slot["pred"][:, rows] = lj[:, rows].argmax(-1)
            slot["C"].append(C[:, j].double().cpu().numpy())
        if pr["kind"] == "block" or pr["index"] == plan.n_splits - 1:
            slot["lk"][:, rows] = lj[:, rows]
        slot["ok"].append(ok[:, j].cpu().numpy())


def cost_rows(features: Mapping, plans: Sequence[AttributePlan], s: Sweep, params: Mapping,
              n_groups: int | None) -> list[dict]:
    """The cost-curve rows of every feature set in ``features`` (the attacked ones) for every class
    attribute's ``plan``: one row per (feature set, attribute, usable size), ``probe = linear``."""
    keys = list(features)
    if not keys or not s.attack_sizes:
        return []
    n = len(next(iter(features.values())))
    order = attacker_order(n, s.seed, s.group_array)
    dev = resolve_device(s.device)
    rows: dict[tuple, dict] = {}
    by_width: dict[int, list] = {}
    for key in keys:
        by_width.setdefault(np.shape(features[key])[1], []).append(key)
    for bucket in k_buckets(list(plans)):
        sizes = [usable_sizes(s.attack_sizes, p) for p in bucket]
        if not any(sizes):
            continue
        probs = [_problems(p, sz, order, s) for p, sz in zip(bucket, sizes)]
        for width_keys in by_width.values():
            X, _, _ = prepare_features([features[k] for k in width_keys], dev, s.dtype)
            fitted = _fit(X, bucket, probs, params, s)
            del X
            for a, plan in enumerate(bucket):
                for size in sizes[a]:
                    rows.update(_rows(plan, width_keys, fitted[(a, size)], size, s, n_groups))
    return [rows[(key, p.name, size)] for key in keys for p in plans
            for size in usable_sizes(s.attack_sizes, p) if (key, p.name, size) in rows]


def _rows(plan: AttributePlan, keys: list, slot: dict, size: int, s: Sweep, n_groups) -> dict:
    """The rows of one (attribute, size) for the feature sets ``keys``, built as the audit's rows are."""
    plan = replace(plan, boot=plan.boot[:ROC_RESAMPLES])   # the attacker's view's resamples (see attack_view)
    V = plan.n_variants
    lp = np.repeat(slot["lp"][:, None], V, 1)          # the audit's row builder reads every variant;
    pred = np.repeat(slot["pred"][:, None], V, 1)      # only the real labels' entries are kept below
    block = _blocks(plan, size)
    p_held = heldout_test_pvalues(slot["lk"], plan.codes, block, s.group_array,
                                  [row_seed(s.seed, plan.name, size, *key) for key in keys])
    opt = optimism(slot["lp"], slot["seen"], slot["n_seen"], plan.tested[0])
    C = np.stack(slot["C"], 1)
    ok = np.stack(slot["ok"], 1).mean(1)
    built = result_rows(plan, keys, [slot["width"]] * len(keys), lp, pred, p_held, opt, C, "linear",
                        task_attribute=s.task_attribute, n_groups=n_groups, n_folds_eff=s.n_folds_eff,
                        n_permutations=0)
    out = {}
    for i, (key, row) in enumerate(zip(keys, built)):
        row.update({c: float("nan") for c in CONTROL_COLUMNS})
        row.update(attacker_samples=size, converged=float(ok[i]))
        out[(key, plan.name, size)] = row
    return out
