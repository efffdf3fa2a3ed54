"""The held-out gain test's exact conditional null: its own statistic with each block's labels dealt again.

Under "labels independent of features" each forward-chained block's labels are exchangeable among
its samples -- with groups whose labels are constant, among its groups, whatever their sizes
(the grouped folds deal each class's groups blind to size, :mod:`logitleak.probing.splits`) --
given everything that scored them. Dealing them out again within every block, the predictions
fixed, and recomputing the centred, weighted, studentised statistic of
:func:`logitleak.probing.heldout.heldout_gain_pvalue` therefore draws from its exact null; no
refit is needed, only the same predictions scored against other labels.

Student's t approximates that null well for samples and equal-sized groups (checked in the far
tail by ``tests/test_calibration.py``), but not for groups of unequal sizes, where a few large
groups dominate: :func:`heldout_test_pvalues` (what the sweeps call) then uses the exact null by
sequential Monte Carlo (Besag & Clifford 1991: stop at the ``EXACT_HITS``-th draw at least as
extreme, else after ``EXACT_DRAWS``), so an unremarkable row costs a thousand draws and a strong
one is resolved down to ``1 / (EXACT_DRAWS + 1)``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np

from logitleak.probing.heldout import LN2, block_weights, centred_gains, heldout_pvalues, studentised

EXACT_DRAWS = 20_000
"""Most draws of the exact null per row: its smallest p-value is ``1 / (EXACT_DRAWS + 1)`` (5e-5,
which Holm passes at 0.05 over fewer than 1,000 API-level tests)."""
EXACT_HITS = 20
"""Draws at least as extreme as the real labels' statistic after which the sequential test stops."""
BATCH = 1000


def _parts(logp: np.ndarray, codes: np.ndarray, block: np.ndarray, groups: np.ndarray | None):
    """Per scored block: ``(B (U, K), sizes (U,), labels (U,))``, ``B[u, k]`` the weighted, scaled
    score of unit ``u`` (sample or group) with label ``k`` before the block's label-frequency
    centring, so a unit's gain under labels ``L`` is ``B[u, L_u] - sum_k pi_k(L) B[u, k]``."""
    logp, codes, block = np.asarray(logp, np.float64), np.asarray(codes), np.asarray(block)
    unit = np.arange(len(codes)) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
    w = block_weights(block)
    parts = []
    for b in np.unique(block[block >= 0]):
        rows = np.flatnonzero(block == b)
        _, u = np.unique(unit[rows], return_inverse=True)
        labels = np.zeros(u.max() + 1, dtype=np.int64)
        labels[u] = codes[rows]
        if not np.array_equal(labels[u], codes[rows]):
            raise ValueError("the exact held-out null needs labels that are constant within every group")
        a = logp[rows]
        B = np.zeros((len(labels), a.shape[1]))
        np.add.at(B, u, a - a.mean(0))
        size = np.bincount(u).astype(np.float64)
        parts.append((B * w[rows][0] / LN2 / np.sqrt(size)[:, None], size, labels))
    return parts


def _statistic(parts, assign: Sequence[np.ndarray]) -> np.ndarray:
    """``(R,)`` studentised statistics; ``assign[j]`` ``(R, U_j)``: labels of block ``j``'s units."""
    units = []
    for (B, size, _), lab in zip(parts, assign):
        pi = np.stack([(lab == k) @ size for k in range(B.shape[1])], 1) / size.sum()     # (R, K)
        units.append(B[np.arange(B.shape[0])[None], lab] - pi @ B.T)
    return studentised(np.concatenate(units, axis=1))


def _draws(parts, R: int, rng: np.random.Generator) -> np.ndarray:
    return _statistic(parts, [lab[np.argsort(rng.random((R, len(lab))), axis=1)] for _, _, lab in parts])


def exact_heldout_null(logp: np.ndarray, codes: np.ndarray, block: np.ndarray, groups: np.ndarray | None = None,
                       n_draws: int = 20000, seed: int = 0) -> tuple[float, np.ndarray]:
    """``(observed, draws)``: the test's statistic on the real labels and ``n_draws`` draws from
    its exact conditional null (NaN: a draw without spread). ``logp`` ``(n, K)``: one feature
    set's forward-chained held-out log-probabilities (nats); ``codes``, ``block``, ``groups`` as
    in :func:`logitleak.probing.heldout.centred_gains` and ``heldout_gain_pvalue``."""
    parts = _parts(logp, codes, block, groups)
    observed = float(_statistic(parts, [lab[None] for _, _, lab in parts])[0])
    rng = np.random.default_rng(seed)
    sizes = [BATCH] * (n_draws // BATCH) + ([n_draws % BATCH] if n_draws % BATCH else [])
    draws = [_draws(parts, R, rng) for R in sizes]
    return observed, np.concatenate(draws) if draws else np.zeros(0)


def _at_least(draws: np.ndarray, observed: float) -> np.ndarray:
    return np.nan_to_num(draws, nan=-np.inf) >= observed - 1e-9 * max(1.0, abs(observed))


def sequential_exact_pvalue(logp: np.ndarray, codes: np.ndarray, block: np.ndarray, groups: np.ndarray | None = None,
                            seed: int = 0, max_draws: int = EXACT_DRAWS, hits: int = EXACT_HITS) -> float:
    """Besag & Clifford's sequential Monte Carlo p-value of the exact null: ``hits / L`` at the
    ``L``-th draw, the ``hits``-th at least as extreme as the real labels, else ``(h + 1) /
    (max_draws + 1)`` with ``h`` such draws in all. Valid at any stopping point; NaN when the
    real labels' statistic is undefined (no spread)."""
    parts = _parts(logp, codes, block, groups)
    observed = float(_statistic(parts, [lab[None] for _, _, lab in parts])[0])
    if not math.isfinite(observed):
        return float("nan")
    rng = np.random.default_rng(seed)
    found = done = 0
    while done < max_draws:
        R = min(BATCH, max_draws - done)
        extreme = np.flatnonzero(_at_least(_draws(parts, R, rng), observed))
        if found + len(extreme) >= hits:
            return hits / (done + int(extreme[hits - found - 1]) + 1)
        found, done = found + len(extreme), done + R
    return (found + 1) / (max_draws + 1)


def unequal_groups(codes: np.ndarray, block: np.ndarray, groups: np.ndarray | None) -> bool:
    """Whether the scored units are groups of unequal sizes with labels constant in each group
    (where Student's t misjudges the tail and the exact null is used)."""
    if groups is None:
        return False
    scored = np.asarray(block) >= 0
    g, c = np.asarray(groups)[scored], np.asarray(codes)[scored]
    _, inv, size = np.unique(g, return_inverse=True, return_counts=True)
    if size.min() == size.max():
        return False
    first = np.zeros(len(size), dtype=c.dtype)
    first[inv] = c
    return bool(np.array_equal(first[inv], c))


def row_seed(seed: int, *words) -> int:
    """A draw seed from the run's seed and the row's identity only (not what it was batched with)."""
    return zlib.crc32("|".join([str(int(seed))] + [str(w) for w in words]).encode())


def heldout_test_pvalues(logp: np.ndarray, codes: np.ndarray, block: np.ndarray, groups: np.ndarray | None,
                         seeds: Sequence[int]) -> np.ndarray:
    """``(F,)`` held-out test p-values of ``F`` feature sets' forward-chained log-probabilities
    ``logp`` ``(F, n, K)``: Student's t on the centred, weighted gains, or the exact null by
    sequential Monte Carlo for groups of unequal sizes (see the module docstring)."""
    if unequal_groups(codes, block, groups):
        return np.array([sequential_exact_pvalue(logp[f], codes, block, groups, seed=int(s))
                         for f, s in enumerate(seeds)])
    return heldout_pvalues(centred_gains(logp, codes, block) * block_weights(block), groups)
