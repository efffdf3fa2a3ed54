"""Result rows of one attribute x probe family from out-of-fold predictions (see metrics, heldout)."""

from __future__ import annotations

import numpy as np

from logitleak.decisions.multiplicity import PERMUTATION_TEST
from logitleak.probing import metrics as M
from logitleak.probing.heldout import TEST_NAME
from logitleak.probing.intervals import fitting_variance_bits, widen, widen_like
from logitleak.probing.plans import AttributePlan

def permutation_columns(stat: np.ndarray, key: str | None, n_permutations: int) -> dict:
    """``permutation_stats`` (the row's statistic on the real labels, then under each shared
    permutation: variants 0, 2, 3, ...) and ``permutation_key`` (which permutations), read by the
    Westfall–Young adjustment; both None without permutations."""
    if not n_permutations:
        return {"permutation_stats": None, "permutation_key": None}
    return {"permutation_stats": [float(stat[0])] + [float(x) for x in stat[2:]], "permutation_key": key}


def result_rows(plan: AttributePlan, keys, dims, lp: np.ndarray, pred: np.ndarray, p_held: np.ndarray, opt: np.ndarray,
                C: np.ndarray | None, family: str, *, task_attribute, n_groups, n_folds_eff: int,
                n_permutations: int) -> list[dict]:
    """Rows for feature sets ``keys``. ``lp``/``pred``: ``(F, V, n)`` out-of-fold log-probabilities
    (nats) of each variant's label and the predicted classes; ``p_held``: ``(F,)`` the held-out
    test's p-values (:func:`logitleak.probing.heldout_exact.heldout_test_pvalues`); ``opt``:
    ``(F,)`` the probes' optimism in nats, which widens the bootstrap intervals by the fitting
    variance (:mod:`logitleak.probing.intervals`).

    ``p_value`` is the permutation p-value of the accuracy when permutations were run
    (``p_test = 'permutation'``, the exact check), else the held-out gain test's
    (``p_test = 'heldout'``); both are in their own columns as well."""
    tested = plan.tested                                   # (V, n)
    n_t = tested.sum(1)                                    # (V,)
    correct = (pred == plan.labels[None]) & tested[None]   # (F, V, n)
    acc = correct.sum(-1) / n_t                            # (F, V)
    probe_bits = np.where(tested[None], -lp / M.LN2, 0.0)
    ce = probe_bits.sum(-1) / n_t                          # (F, V)
    H = np.nanmean(np.where(tested, plan.prior_loss, np.nan), axis=1)   # (V,)
    vinfo = H[None] - ce                                   # (F, V)
    t0 = tested[0]
    codes_t = plan.codes[t0]
    corr0 = correct[:, 0][:, t0].astype(np.float64)        # (F, n_t)
    diff0 = plan.prior_loss[0][t0][None] - probe_bits[:, 0][:, t0]
    acc_lo, acc_hi = M.bootstrap_interval(plan.boot, corr0.T)
    vi_lo, vi_hi = M.bootstrap_interval(plan.boot, diff0.T)
    units = int(n_t[0]) if n_groups is None else max(1, round(n_groups * int(n_t[0]) / len(plan.codes)))
    boot_vi = (vi_lo, vi_hi)
    vi_lo, vi_hi = widen(diff0.mean(1), vi_lo, vi_hi, fitting_variance_bits(opt, units))
    acc_lo, acc_hi = widen_like(corr0.mean(1), acc_lo, acc_hi, boot_vi, (vi_lo, vi_hi))
    baseline = float(np.nanmean(plan.majority[t0]))
    H_plugin = M.label_entropy_bits(plan.codes, plan.n_classes)
    K = plan.n_classes
    rows = []
    for i, key in enumerate(keys):
        p0 = pred[i, 0][t0]
        p_held_i = float(p_held[i])
        p_perm = M.permutation_p_value(acc[i, 0], acc[i, 2:]) if n_permutations else float("nan")
        row = {
            "level": key[0], "layer": key[1], "k": key[2], "attribute": plan.name, "probe": family,
            "task_relevant": task_attribute is not None and plan.name == task_attribute,
            "n": int(n_t[0]), "n_classes": K, "n_features": int(dims[i]),
            "accuracy": float(acc[i, 0]),
            "balanced_accuracy": M.balanced_accuracy(codes_t, p0, K),
            "macro_f1": M.macro_f1(codes_t, p0, K),
            "baseline_accuracy": baseline,
            "ci_low": float(acc_lo[i]), "ci_high": float(acc_hi[i]),
            "p_value": p_perm if n_permutations else p_held_i,
            "ce_bits": float(ce[i, 0]),
            "entropy_bits": float(H[0]),
            "v_info_bits": float(vinfo[i, 0]),
            "v_info_frac": float(vinfo[i, 0] / H[0]) if H[0] > 0 else float("nan"),
            "v_info_ci_low": float(vi_lo[i]), "v_info_ci_high": float(vi_hi[i]),
            "control_accuracy": float(acc[i, 1]),
            "selectivity": float(acc[i, 0] - acc[i, 1]),
            "p_test": PERMUTATION_TEST if n_permutations else TEST_NAME,
            "p_value_heldout": p_held_i,
            "p_value_permutation": p_perm,
            "label_entropy_bits": H_plugin,
            "v_info_p_value": M.permutation_p_value(vinfo[i, 0], vinfo[i, 2:]) if n_permutations else float("nan"),
            "control_v_info_bits": float(vinfo[i, 1]),
            "n_permutations": int(n_permutations), "n_folds": int(n_folds_eff), "n_groups": n_groups,
            "C": float(np.median(C[i])) if C is not None and np.isfinite(C[i]).any() else float("nan"),
            **permutation_columns(acc[i], plan.permutation_key, n_permutations),
        }
        rows.append(row)
    return rows
