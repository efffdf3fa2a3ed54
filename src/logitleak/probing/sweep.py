"""Cross-validated probing sweeps: feature sets x attributes x probe families -> result rows.

:func:`evaluate_sweep` is the entry point. For every attribute it builds one *plan*
(:mod:`logitleak.probing.plans`): the real labels, a control relabelling and, only when asked for,
``n_permutations`` permuted relabellings ("variants"), each with its own stratified (optionally
grouped) cross-validation split and, inside every training fold, an inner split used to choose
the linear probe's ``C`` and to early-stop the MLP; plus the forward-chained fits of the default
significance test (:mod:`logitleak.probing.heldout`), which needs no refit per permutation. Every
(variant, fold) is one classification problem; the problems of all attributes (with similar
class counts) are fitted together by the batched probes in :mod:`logitleak.probing.estimators`. Metrics come
from out-of-fold predictions (:mod:`logitleak.probing.metrics`, :mod:`logitleak.probing.rows`).

Chunks of problems are sized by a fixed budget, and a feature set's results do not depend on
which other feature sets were in the same call (see :func:`_schedule`), so a resumed audit
reproduces an uninterrupted one exactly.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from logitleak.errors import LogitleakError
from logitleak.probing.batching import Problems, chunk_size, k_buckets, pair_bytes
from logitleak.probing.batching import memory_budget as _default_budget
from logitleak.probing.estimators import (
    prepare_features,
    resolve_device,
)
from logitleak.probing.families import check_families, check_probe_params, control_reuses_c, families_for, fit_family
from logitleak.probing.heldout import block_weights, centred_gains
from logitleak.probing.plans import plan_attribute
from logitleak.probing.rows import result_rows
from logitleak.probing.splits import check_features, describe_key, is_missing
from logitleak.progress import make_progress
from logitleak.results import to_frame

FeatureKey = tuple[str, "int | None", "int | None"]
EXTRA_COLUMNS: tuple[str, ...] = (
    "p_test", "p_value_heldout", "p_value_permutation", "label_entropy_bits", "v_info_p_value",
    "control_v_info_bits", "n_permutations", "n_folds", "n_groups", "C", "converged",
)
"""Columns :func:`evaluate_sweep` adds after ``RESULT_COLUMNS``: which test gave ``p_value``
(``heldout`` or ``permutation``) and both tests' p-values (the permutation one NaN without
permutations), the plug-in ``H(Y)``, the permutation p-value of the V-information, the control
task's V-information, the design (permutations, folds -- 1 for a held-out split --, groups) and
the linear probe's median chosen C, and the fraction of the row's fits that converged (L-BFGS met
its tolerance; the MLP stopped early rather than at its epoch cap)."""

def _fit_order(b: Problems, fam: str, params: Mapping, p_chunk: int) -> list[tuple[np.ndarray, bool]]:
    """Chunks of problem indices, each flagged when its linear C is taken from the real labels
    (:func:`control_reuses_c`); the control problems' chunks come after the others."""
    reuse = control_reuses_c(fam, params)
    groups = [np.flatnonzero(b.variant != 1), np.flatnonzero(b.variant == 1)] if reuse else [np.arange(len(b))]
    out = []
    for g, flag in zip(groups, (False, True)):
        out += [(g[i: i + p_chunk], flag) for i in range(0, len(g), p_chunk)]
    return out


def _fit_bucket(X: torch.Tensor, b: Problems, fam: str, params: Mapping, p_chunk: int, seed: int, prog, task):
    """Out-of-fold predictions of ``F`` feature sets for one bucket: per plan, ``lp``/``pred``
    ``(F, V, n)``, the forward-chained log-probabilities ``(F, n, K)``, the chosen C ``(F, S)`` and
    the fraction of the plan's fits that converged ``(F,)``."""
    F, n = X.shape[0], X.shape[1]
    dev = X.device
    lp = [np.zeros((F, p.n_variants, n), np.float32) for p in b.plans]
    pr = [np.zeros((F, p.n_variants, n), np.int64) for p in b.plans]
    lk = [np.zeros((F, n, p.n_classes), np.float64) for p in b.plans]
    Cc = [np.full((F, p.n_splits), np.nan) for p in b.plans]
    conv = [np.zeros((F, 2)) for _ in b.plans]                # converged fits, all fits
    for idx, from_real in _fit_order(b, fam, params, p_chunk):
        y, tr, te, fi, va, cm = b.arrays(idx)
        C_fixed = None
        if from_real:
            C_fixed = torch.as_tensor(np.stack([Cc[b.attr[j]][:, b.split[j]] for j in idx], 1), device=dev)
        logp, C, ok = fit_family(fam, X, y, tr, fi, va, b.K, params, seed=b.seeds(idx, seed), C_fixed=C_fixed)
        yt = torch.as_tensor(y, device=dev).clamp(0, b.K - 1).T.unsqueeze(0).unsqueeze(-1)
        lpy = torch.gather(logp, -1, yt.expand(F, -1, -1, -1)).squeeze(-1).float().cpu().numpy()
        pred = logp.argmax(-1).cpu().numpy()
        for j in np.flatnonzero(b.block[idx] >= 0):          # the held-out test's blocks
            plan_i = b.attr[idx[j]]
            rows = np.flatnonzero(b.plans[plan_i].block == b.block[idx[j]])
            lk[plan_i][:, rows] = logp[:, rows, j, : b.plans[plan_i].n_classes].double().cpu().numpy()
        C_np = C.double().cpu().numpy() if C is not None else None
        ok = ok.cpu().numpy()
        del logp
        for j, pj in enumerate(idx):
            conv[b.attr[pj]] += np.stack([ok[:, j], np.ones(F)], 1)
        cv = b.variant[idx] >= 0
        pp, rr = np.nonzero(te & cv[:, None])
        gidx = idx[pp]
        for ai in np.unique(b.attr[gidx]):
            sel = b.attr[gidx] == ai
            vv = b.variant[gidx[sel]]
            lp[ai][:, vv, rr[sel]] = lpy[:, rr[sel], pp[sel]]
            pr[ai][:, vv, rr[sel]] = pred[:, rr[sel], pp[sel]]
        if C_np is not None:
            for j in np.flatnonzero(b.variant[idx] == 0):
                Cc[b.attr[idx[j]]][:, b.split[idx[j]]] = C_np[:, j]
        prog.advance(task, F * len(idx))
    return lp, pr, lk, Cc, [c[:, 0] / c[:, 1] for c in conv]


def _schedule(feats: Mapping, probes: Sequence[str]) -> list[tuple[str, list]]:
    """``[(family, keys), ...]``: the MLP fits one feature set at a time (its batched early
    stopping shrinks the batch as problems stop, so a batch's shapes depend on its members); the
    linear probe fits every feature set of one width together (each problem's L-BFGS runs on its
    own feature set's rows and stops on its own, so its result does not depend on the others)."""
    by_dim: dict[int, list] = {}
    for key, X in feats.items():
        by_dim.setdefault(X.shape[1], []).append(key)
    out = []
    for fam in probes:
        for keys in by_dim.values():
            out += [(fam, keys)] if fam == "linear" else [(fam, [k]) for k in keys]
    return out


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
    """
    from logitleak.probing.pca import evaluate_fold_levels, split_fold_levels
    from logitleak.probing.regression import evaluate_regression, split_numeric

    by_families: dict[tuple, list] = {}
    for key in features:
        by_families.setdefault(families_for(key[0], probes, mlp_levels), []).append(key)
    if by_families and list(by_families) != [tuple(probes)]:   # some levels get fewer families: a sweep per set
        kw = dict(groups=groups, task_attribute=task_attribute, n_folds=n_folds, n_permutations=n_permutations,
                  n_bootstrap=n_bootstrap, seed=seed, device=device, progress=progress, test_size=test_size,
                  val_fraction=val_fraction, probe_params=probe_params, dtype=dtype, memory_budget=memory_budget)
        parts = [evaluate_sweep({k: features[k] for k in keys}, labels, probes=fams, **kw)
                 for fams, keys in by_families.items() if fams]
        if not parts:
            return to_frame([])
        both = pd.concat(parts, ignore_index=True)
        order = {tuple(k): i for i, k in enumerate(features)}
        rank = [order[(lv, None if pd.isna(la) else int(la), None if pd.isna(k) else int(k))]
                for lv, la, k in zip(both["level"], both["layer"], both["k"])]
        return to_frame(both.iloc[np.argsort(rank, kind="stable")].reset_index(drop=True))

    fold_feats, rest = split_fold_levels(features)  # pca: projection fitted inside each training fold
    if fold_feats and labels:
        kw = dict(groups=groups, task_attribute=task_attribute, probes=probes, n_folds=n_folds,
                  n_permutations=n_permutations, n_bootstrap=n_bootstrap, seed=seed, probe_params=probe_params)
        fold_rows = evaluate_fold_levels(fold_feats, labels, **kw)
        if not rest:
            return fold_rows
        others = evaluate_sweep(rest, labels, **kw, device=device, progress=progress, test_size=test_size,
                                val_fraction=val_fraction, dtype=dtype, memory_budget=memory_budget)
        return to_frame(pd.concat([others, fold_rows], ignore_index=True))
    numeric, labels = split_numeric(labels)  # float labels -> regression probes (logitleak.probing.regression)
    if numeric:
        reg_kw = dict(groups=groups, task_attribute=task_attribute, probes=probes, n_folds=n_folds,
                      n_permutations=n_permutations, n_bootstrap=n_bootstrap, seed=seed, probe_params=probe_params)
        if not labels:
            return evaluate_regression(features, numeric, **reg_kw)
        cat = evaluate_sweep(features, labels, **{**reg_kw, "task_attribute": task_attribute if task_attribute in labels
                                                  else None}, device=device, progress=progress, test_size=test_size,
                             val_fraction=val_fraction, dtype=dtype, memory_budget=memory_budget)
        both = pd.concat([cat, evaluate_regression(features, numeric, **reg_kw)], ignore_index=True)
        return to_frame(both)
    probes = check_families(probes)
    if not features:
        raise LogitleakError("No feature sets were given; pass at least one (level, layer, k) -> array.")
    if not labels:
        raise LogitleakError("No label attributes were given; pass at least one attribute -> labels.")
    if test_size is None and (int(n_folds) != n_folds or n_folds < 2):
        raise LogitleakError(f"n_folds must be an integer of at least 2, got {n_folds}; or pass test_size for one held-out split.")
    if test_size is not None and not 0 < test_size < 1:
        raise LogitleakError(f"test_size must be between 0 and 1, got {test_size}.")
    if n_permutations < 0 or n_bootstrap < 0:
        raise LogitleakError("n_permutations and n_bootstrap must be zero or positive.")
    if task_attribute is not None and task_attribute not in labels:
        raise LogitleakError(
            f"Task attribute '{task_attribute}' is not among the label attributes ({', '.join(map(str, labels))}); "
            f"pass one of those or none.")
    probe_params = check_probe_params(probe_params, probes)

    label_n = {a: len(np.asarray(v)) for a, v in labels.items()}
    n = next(iter(label_n.values()))
    for a, m in label_n.items():
        if m != n:
            first = next(iter(label_n))
            raise LogitleakError(
                f"Attribute '{a}' has {m} labels but attribute '{first}' has {n}; pass one label per sample for "
                f"every attribute.")
    feats = {}
    for key, X in features.items():
        key = tuple(key) if not isinstance(key, tuple) else key
        if len(key) != 3:
            raise LogitleakError(f"Feature key {key!r} is not a (level, layer, k) triple; use (name, None, None) when unsure.")
        if len(np.asarray(X)) != n:
            attr = next(iter(labels))
            raise LogitleakError(
                f"Feature set {describe_key(key)} has {len(np.asarray(X))} rows but attribute '{attr}' has {n} labels; "
                f"pass features and labels for the same samples in the same order.")
        feats[key] = check_features(key, X, n)
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (n,):
            raise LogitleakError(f"groups has shape {groups.shape} but there are {n} samples; pass one group id per sample.")
        if is_missing(groups).any():
            raise LogitleakError("groups contains missing values; give every sample a group id.")
        n_groups = int(len(np.unique(groups)))
        if test_size is None and n_groups < n_folds:
            raise LogitleakError(f"There are only {n_groups} groups for {n_folds} folds; use fewer folds or more groups.")
    else:
        n_groups = None

    plans = [plan_attribute(a, v, groups=groups, n_folds=n_folds, test_size=test_size, n_permutations=n_permutations,
                            n_bootstrap=n_bootstrap, val_fraction=val_fraction, seed=seed)
             for a, v in labels.items()]
    buckets = [Problems.build(b) for b in k_buckets(plans)]
    dev = resolve_device(device)
    itemsize = torch.finfo(dtype).bits // 8
    budget = memory_budget or _default_budget(dev)
    n_folds_eff = 1 if test_size is not None else n_folds

    results: dict[tuple, dict] = {}
    schedule = _schedule(feats, probes)
    total = sum(len(keys) for _, keys in schedule) * sum(len(b) for b in buckets)
    with make_progress(progress) as prog:
        task = prog.add_task("probing", total=total)
        for fam, keys in schedule:
            d = feats[keys[0]].shape[1]
            for b in buckets:
                per_pair = pair_bytes(fam, n, d, b.K, itemsize, probe_params[fam])
                p_chunk = chunk_size(len(b), per_pair, budget, n * d * 16)
                f_chunk = int(max(1, min(len(keys), budget // (p_chunk * per_pair + n * d * (itemsize + 16)))))
                for f0 in range(0, len(keys), f_chunk):
                    kc = keys[f0: f0 + f_chunk]
                    prog.update(task, description=f"{fam} {describe_key(kc[0])}" + (f" (+{len(kc) - 1})" if len(kc) > 1 else ""))
                    X, _, _ = prepare_features([feats[k] for k in kc], dev, dtype)
                    lp, pr, lk, Cc, cv = _fit_bucket(X, b, fam, probe_params[fam], p_chunk, seed, prog, task)
                    del X
                    for ai, plan in enumerate(b.plans):
                        gains = centred_gains(lk[ai], plan.codes, plan.block) * block_weights(plan.block)
                        rows = result_rows(plan, kc, [d] * len(kc), lp[ai], pr[ai], gains,
                                           Cc[ai] if fam == "linear" else None, fam, task_attribute=task_attribute,
                                           n_groups=n_groups, n_folds_eff=n_folds_eff,
                                           n_permutations=n_permutations, groups=groups)
                        for key, row, c in zip(kc, rows, cv[ai]):
                            results[(key, plan.name, fam)] = {**row, "converged": float(c)}
    ordered = [results[(key, a, fam)] for key in feats for a in labels for fam in probes]
    warn_unconverged(ordered)
    return to_frame(ordered)


def warn_unconverged(rows: Sequence[Mapping]) -> None:
    """One warning naming the rows whose probe fits did not all converge, and what to do about it."""
    bad = [r for r in rows if np.isfinite(r.get("converged", np.nan)) and r["converged"] < 1.0]
    if bad:
        first = bad[0]
        warnings.warn(
            f"{len(bad)} result row(s) include probe fits that stopped before converging (first: "
            f"{describe_key((first['level'], first['layer'], first['k']))} {first['attribute']} {first['probe']}, "
            f"{first['converged']:.0%} converged); their scores may be understated: raise the probe's max_iter "
            f"(linear) or max_epochs (mlp). The 'converged' column gives the fraction per row.", stacklevel=3)
