"""The classifier sweep: each class attribute's plan fitted by the batched probes -> result rows.

For every attribute it builds one *plan* (:mod:`logitleak.probing.plans`): the real labels, a
control relabelling and, only when asked for, ``n_permutations`` permuted relabellings
("variants"), each with its own stratified (optionally grouped) cross-validation split and,
inside every training fold, an inner split used to choose the linear probe's ``C`` and to
early-stop the MLP; plus the forward-chained fits of the default significance test
(:mod:`logitleak.probing.heldout`), which needs no refit per permutation. Every (variant, fold) is
one classification problem; the problems of all attributes (with similar class counts) are
fitted together by the batched probes (:mod:`logitleak.probing.families`). Metrics come from
out-of-fold predictions (:mod:`logitleak.probing.metrics`, :mod:`logitleak.probing.rows`).

Chunks of problems are sized by a fixed budget, and a feature set's results do not depend on
which other feature sets were in the same call (see :func:`_schedule`), so a resumed audit
reproduces an uninterrupted one exactly.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.exceptions import ConvergenceWarning

from logitleak.errors import LogitleakError
from logitleak.probing.attack_cost import cost_rows
from logitleak.probing.attack_view import attack_columns
from logitleak.probing.batching import Problems, chunk_size, k_buckets, pair_bytes
from logitleak.probing.batching import memory_budget as default_budget
from logitleak.probing.families import check_families, check_probe_params, control_reuses_c, fit_family
from logitleak.probing.heldout_exact import heldout_test_pvalues, row_seed
from logitleak.probing.intervals import optimism
from logitleak.probing.plans import AttributePlan, plan_attribute
from logitleak.probing.rows import result_rows
from logitleak.probing.settings import Sweep
from logitleak.probing.splits import check_features, describe_key, is_missing
from logitleak.probing.tensors import prepare_features, prepare_like, resolve_device
from logitleak.progress import make_progress
from logitleak.results import to_frame


def _fit_order(b: Problems, fam: str, params: Mapping, p_chunk: int) -> list[tuple[np.ndarray, bool]]:
    """Chunks of problem indices, each flagged when its linear C is taken from the real labels
    (:func:`control_reuses_c`); the control problems' chunks come after the others."""
    reuse = control_reuses_c(fam, params)
    groups = [np.flatnonzero(b.variant != 1), np.flatnonzero(b.variant == 1)] if reuse else [np.arange(len(b))]
    out = []
    for g, flag in zip(groups, (False, True)):
        out += [(g[i: i + p_chunk], flag) for i in range(0, len(g), p_chunk)]
    return out


def _fit_bucket(X: torch.Tensor, b: Problems, fam: str, params: Mapping, p_chunk: int, seed: int, prog, task,
                X_eval: torch.Tensor | None = None):
    """Out-of-fold predictions of ``F`` feature sets for one bucket: per plan, ``lp``/``pred``
    ``(F, V, n)``, the forward-chained log-probabilities ``(F, n, K)``, the chosen C ``(F, S)``,
    the fraction of the plan's fits that converged ``(F,)``, the real labels' out-of-fold
    log-probabilities of every class ``(F, n, K)`` and the probe's optimism ``(F,)``
    (:func:`logitleak.probing.intervals.optimism`: the real labels' cross-validation fits scored on
    the rows they fitted, against the same rows held out; for a shadow attack, the rows scored in
    place of those, so scoring the training outputs themselves is the plain sweep). ``X_eval``:
    score these rows instead of ``X``'s (a shadow attack)."""
    F, n = X.shape[0], X.shape[1]
    dev = X.device
    lp = [np.zeros((F, p.n_variants, n), np.float32) for p in b.plans]
    pr = [np.zeros((F, p.n_variants, n), np.int64) for p in b.plans]
    lk = [np.zeros((F, n, p.n_classes), np.float64) for p in b.plans]
    Cc = [np.full((F, p.n_splits), np.nan) for p in b.plans]
    conv = [np.zeros((F, 2)) for _ in b.plans]                # converged fits, all fits
    oof = [np.zeros((F, n, p.n_classes), np.float32) for p in b.plans]
    seen = [np.zeros((F, n)) for _ in b.plans]                # in-sample log-probabilities of the real labels
    n_seen = [np.zeros(n) for _ in b.plans]
    for idx, from_real in _fit_order(b, fam, params, p_chunk):
        y, tr, te, fi, va, cm = b.arrays(idx)
        C_fixed = None
        if from_real:
            C_fixed = torch.as_tensor(np.stack([Cc[b.attr[j]][:, b.split[j]] for j in idx], 1), device=dev)
        logp, C, ok = fit_family(fam, X, y, tr, fi, va, b.K, params, seed=b.seeds(idx, seed), C_fixed=C_fixed,
                                 X_eval=X_eval)
        yt = torch.as_tensor(y, device=dev).clamp(0, b.K - 1).T.unsqueeze(0).unsqueeze(-1)
        lpy = torch.gather(logp, -1, yt.expand(F, -1, -1, -1)).squeeze(-1).float().cpu().numpy()
        pred = logp.argmax(-1).cpu().numpy()
        for j in np.flatnonzero(b.variant[idx] == 0):        # the real labels' test rows, every class
            plan_i = b.attr[idx[j]]
            rows = np.flatnonzero(te[j])
            oof[plan_i][:, rows] = logp[:, rows, j, : b.plans[plan_i].n_classes].float().cpu().numpy()
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
        for j in np.flatnonzero(b.variant[idx] == 0):
            ai = b.attr[idx[j]]
            rows = np.flatnonzero(tr[j] if fam == "linear" else fi[j])    # the rows the kept model fitted
            seen[ai][:, rows] += lpy[:, rows, j]
            n_seen[ai][rows] += 1
            if C_np is not None:
                Cc[ai][:, b.split[idx[j]]] = C_np[:, j]
        prog.advance(task, F * len(idx))
    opt = [optimism(lp[ai][:, 0], seen[ai], n_seen[ai], p.tested[0]) for ai, p in enumerate(b.plans)]
    return lp, pr, lk, Cc, [c[:, 0] / c[:, 1] for c in conv], oof, opt


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


def _checked(features: Mapping, labels: Mapping[str, np.ndarray], s: Sweep) -> tuple[dict, int, int | None]:
    """``(feature sets keyed by triples, samples, groups)`` once every input is checked (one sentence each)."""
    if not features:
        raise LogitleakError("No feature sets were given; pass at least one (level, layer, k) -> array.")
    if not labels:
        raise LogitleakError("No label attributes were given; pass at least one attribute -> labels.")
    if s.test_size is None and (int(s.n_folds) != s.n_folds or s.n_folds < 2):
        raise LogitleakError(f"n_folds must be an integer of at least 2, got {s.n_folds}; or pass test_size for one held-out split.")
    if s.test_size is not None and not 0 < s.test_size < 1:
        raise LogitleakError(f"test_size must be between 0 and 1, got {s.test_size}.")
    if s.n_permutations < 0 or s.n_bootstrap < 0:
        raise LogitleakError("n_permutations and n_bootstrap must be zero or positive.")
    if s.task_attribute is not None and s.task_attribute not in labels:
        raise LogitleakError(
            f"Task attribute '{s.task_attribute}' is not among the label attributes ({', '.join(map(str, labels))}); "
            f"pass one of those or none.")
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
    n_groups = None
    if s.groups is not None:
        groups = np.asarray(s.groups)
        if groups.shape != (n,):
            raise LogitleakError(f"groups has shape {groups.shape} but there are {n} samples; pass one group id per sample.")
        if is_missing(groups).any():
            raise LogitleakError("groups contains missing values; give every sample a group id.")
        n_groups = int(len(np.unique(groups)))
        if s.test_size is None and n_groups < s.n_folds:
            raise LogitleakError(f"There are only {n_groups} groups for {s.n_folds} folds; use fewer folds or more groups.")
    return feats, n, n_groups


def _rows(plan: AttributePlan, keys: list, d: int, fam: str, fitted, s: Sweep, n_groups: int | None) -> list[dict]:
    """One plan's result rows for the feature sets ``keys`` of one chunk, from its out-of-fold fits."""
    lp, pr, lk, Cc, cv, oof, opt = fitted
    p_held = heldout_test_pvalues(lk, plan.codes, plan.block, s.group_array,
                                  [row_seed(s.seed, plan.name, *key) for key in keys])
    rows = result_rows(plan, keys, [d] * len(keys), lp, pr, p_held, opt, Cc if fam == "linear" else None, fam,
                       task_attribute=s.task_attribute, n_groups=n_groups, n_folds_eff=s.n_folds_eff,
                       n_permutations=s.n_permutations)
    rows = [{**row, "converged": float(c)} for row, c in zip(rows, cv)]
    for i, (key, row) in enumerate(zip(keys, rows)):
        if s.attacked(key[0]):
            row.update(attack_columns(np.exp(oof[i]), plan.codes, plan.classes, plan.tested[0],
                                      np.exp2(-plan.prior_loss[0]), plan.boot))
        if s.shadow is not None:
            row["shadow"] = s.shadow
    return rows


def classify(features: Mapping, labels: Mapping[str, np.ndarray], s: Sweep) -> pd.DataFrame:
    """Rows of every (feature set, class attribute, probe family) of ``s.probes`` (see
    :func:`logitleak.probing.sweep.evaluate_sweep`, which routes class attributes here)."""
    probes = check_families(s.probes)
    feats, n, n_groups = _checked(features, labels, s)
    evals = _checked_eval(feats, s)
    probe_params = check_probe_params(s.probe_params, probes)
    plans = [plan_attribute(a, v, groups=s.group_array, n_folds=s.n_folds, test_size=s.test_size,
                            n_permutations=s.n_permutations, n_bootstrap=s.n_bootstrap, val_fraction=s.val_fraction,
                            seed=s.seed)
             for a, v in labels.items()]
    buckets = [Problems.build(b) for b in k_buckets(plans)]
    dev = resolve_device(s.device)
    itemsize = torch.finfo(s.dtype).bits // 8
    budget = s.memory_budget or default_budget(dev)

    results: dict[tuple, dict] = {}
    schedule = _schedule(feats, probes)
    total = sum(len(keys) for _, keys in schedule) * sum(len(b) for b in buckets)
    with make_progress(s.progress) as prog:
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
                    X, shifts, scales = prepare_features([feats[k] for k in kc], dev, s.dtype)
                    X_eval = None if evals is None else prepare_like([evals[k] for k in kc], shifts, scales, dev,
                                                                     s.dtype)
                    fitted = _fit_bucket(X, b, fam, probe_params[fam], p_chunk, s.seed, prog, task, X_eval)
                    del X, X_eval
                    for ai, plan in enumerate(b.plans):
                        rows = _rows(plan, kc, d, fam, [part[ai] for part in fitted], s, n_groups)
                        results.update({(key, plan.name, fam): row for key, row in zip(kc, rows)})
    ordered = [results[(key, a, fam)] for key in feats for a in labels for fam in probes]
    warn_unconverged(ordered)
    costed = [key for key in feats if s.costed(key)] if "linear" in probes else []
    if costed and evals is None:
        ordered += cost_rows({k: feats[k] for k in costed}, plans, s, probe_params["linear"], n_groups)
    return to_frame(ordered)


def _checked_eval(feats: Mapping, s: Sweep) -> dict | None:
    """A shadow attack's scored features, checked against the training features (same keys, shapes)."""
    if s.eval_features is None:
        return None
    evals = {}
    for key, X in feats.items():
        if key not in s.eval_features:
            raise LogitleakError(f"Feature set {describe_key(key)} has no scored counterpart; pass eval_features for "
                                 "every feature set.")
        evals[key] = check_features(key, s.eval_features[key], len(X))
        if evals[key].shape != X.shape:
            raise LogitleakError(f"Feature set {describe_key(key)} has shape {X.shape} to train on but "
                                 f"{evals[key].shape} to score; give both the same columns.")
    return evals


def warn_unconverged(rows: Sequence[Mapping]) -> None:
    """One warning naming the rows whose probe fits did not all converge, and what to do about it."""
    bad = [r for r in rows if np.isfinite(r.get("converged", np.nan)) and r["converged"] < 1.0]
    if bad:
        first = bad[0]
        warnings.warn(
            f"{len(bad)} result row(s) include probe fits that stopped before converging (first: "
            f"{describe_key((first['level'], first['layer'], first['k']))} {first['attribute']} {first['probe']}, "
            f"{first['converged']:.0%} converged); their scores may be understated: raise the probe's max_iter "
            f"(linear) or max_epochs (mlp). The 'converged' column gives the fraction per row.", ConvergenceWarning,
            stacklevel=3)
