"""Family-wise error control over the API-level tests: Holm, and Westfall–Young over shared permutations.

* **Holm** (Holm 1979) adjusts any p-values; a permutation p-value is never below ``1/(N+1)``, so
  after Holm over ``m`` tests nothing passes unless ``(N+1) > m / alpha``.
* **Westfall–Young step-down max-T** (Westfall & Young 1993, algorithm 4.1; Ge, Dudoit & Speed
  2003) adjusts the permutation p-values of a family whose rows were all computed from the *same*
  relabellings of the samples (:mod:`logitleak.probing.permutations`): each row stores its
  statistic on the real labels and under every shared permutation (``permutation_stats``); the
  adjusted p-value of the ``j``-th strongest test is the fraction of the ``N+1`` configurations
  (the real labels count as one) in which some test not yet stepped past is at least as extreme
  (standardised statistics). It controls the family-wise error exactly under the complete null,
  uses the dependence between the tests instead of a union bound, and can reach ``1/(N+1)``
  whatever the family's size. (Step-down min-P would need ``N`` far above ``m / alpha``: with
  few permutations, the discrete p-values of the null tests alone fill its lower tail.)

:func:`family_adjust` picks one for the API rows of a table; :func:`smallest_reachable` says how
small an adjusted p-value the design could possibly give, so a design that cannot reach ``alpha``
is reported as untestable rather than as "no leak".
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

HOLM = "holm"
WESTFALL_YOUNG = "westfall-young"
PERMUTATION_TEST = "permutation"
"""The value of ``p_test`` for permutation p-values."""
TIE_TOLERANCE = 1e-9
"""Statistics within this (relative to max(1, |value|)) of the observed one count as ties (conservative)."""


def _floats(values) -> np.ndarray:
    """Any cells -> float array, NaN for null / non-numbers."""
    return pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").to_numpy(dtype=float)


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and does not count as a test)."""
    p = _floats(pvalues)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adj
    return out


def configuration_pvalues(stats: np.ndarray) -> np.ndarray:
    """``(C, m)`` permutation p-values of every configuration: ``stats`` ``(C, m)`` holds each of
    ``m`` tests' statistic (larger = stronger) under ``C`` configurations, row 0 the real labels;
    entry ``(c, r)`` is the fraction of configurations whose statistic for test ``r`` is at least
    configuration ``c``'s (ties within :data:`TIE_TOLERANCE` count). Row 0 is each test's
    Phipson–Smyth p-value ``(1 + #{null >= observed}) / (1 + N)``."""
    stats = np.asarray(stats, dtype=np.float64)
    C = stats.shape[0]
    srt = np.sort(stats, axis=0)
    tol = TIE_TOLERANCE * np.maximum(1.0, np.abs(stats))
    out = np.empty_like(stats)
    for r in range(stats.shape[1]):
        out[:, r] = C - np.searchsorted(srt[:, r], stats[:, r] - tol[:, r], side="left")
    return out / C


def permutation_pvalue(observed: float, null: np.ndarray) -> float:
    """``(1 + #{null >= observed}) / (1 + len(null))`` (Phipson & Smyth 2010); NaN without a null."""
    null = np.asarray(null, dtype=float).ravel()
    if null.size == 0 or not np.isfinite(observed):
        return float("nan")
    return float(configuration_pvalues(np.concatenate([[observed], null])[:, None])[0, 0])


def westfall_young(stats: np.ndarray) -> np.ndarray:
    """Step-down max-T adjusted p-values ``(m,)`` from ``stats`` ``(N+1, m)`` (row 0: the real
    labels; rows 1..N: the same shared permutations for every test; larger = stronger).

    Each test's statistics are standardised by their mean and spread over all ``N+1``
    configurations (a symmetric function of them, so exchangeability is kept and tests on
    different scales, e.g. accuracies of 2 and 10 classes, compete fairly); the ``j``-th strongest
    test's adjusted p-value is the fraction of configurations whose largest standardised
    statistic over the tests from ``j`` on is at least its own, made monotone. Never below
    ``1/(N+1)`` nor below the raw permutation p-value, and never above Holm's."""
    stats = np.asarray(stats, dtype=np.float64)
    C = stats.shape[0]
    sd = stats.std(0)
    z = np.where(sd > 0, (stats - stats.mean(0)) / np.where(sd > 0, sd, 1.0), 0.0)
    tied = stats >= stats[0] - TIE_TOLERANCE * np.maximum(1.0, np.abs(stats[0]))
    z = np.where(tied, np.maximum(z, z[0]), z)     # a tie with the real labels counts against them
    order = np.argsort(-z[0], kind="stable")
    # successive maxima over the tests not yet stepped past: u[:, j] = max_{k >= j} z[:, order[k]]
    u = np.maximum.accumulate(z[:, order][:, ::-1], axis=1)[:, ::-1]
    tol = TIE_TOLERANCE * np.maximum(1.0, np.abs(z[0, order]))      # rounding of the standardisation
    adj = np.maximum.accumulate((u >= z[0, order][None] - tol).sum(0) / C)
    out = np.empty_like(adj)
    out[order] = np.minimum(adj, 1.0)
    return out


def _stats_matrix(rows: pd.DataFrame) -> np.ndarray | None:
    """``(N+1, m)`` statistics of rows that all carry ``permutation_stats`` from one set of shared
    permutations (same ``permutation_key``, same length), else None."""
    if "permutation_stats" not in rows.columns or "permutation_key" not in rows.columns or rows.empty:
        return None
    if "p_test" in rows.columns and not rows["p_test"].astype(str).eq(PERMUTATION_TEST).all():
        return None
    keys = rows["permutation_key"]
    if keys.isna().any() or keys.astype(str).nunique() != 1:
        return None
    vectors = []
    for v in rows["permutation_stats"]:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
        vectors.append(np.asarray(v, dtype=np.float64).ravel())
    if len({len(v) for v in vectors}) != 1 or len(vectors[0]) < 2:
        return None
    return np.stack(vectors, axis=1)


def family_adjust(rows: pd.DataFrame) -> tuple[np.ndarray, str]:
    """``(adjusted p-values, method)`` for one family of tests (rows with a NaN ``p_value`` stay
    NaN): Westfall–Young when every tested row is a permutation test over the same shared
    permutations, else Holm on ``p_value``."""
    p = _floats(rows["p_value"])
    tested = np.flatnonzero(np.isfinite(p))
    stats = _stats_matrix(rows.iloc[tested]) if len(tested) else None
    if stats is None:
        return holm(p), HOLM
    out = np.full(len(p), np.nan)
    out[tested] = westfall_young(stats)
    return out, WESTFALL_YOUNG


def smallest_reachable(rows: pd.DataFrame, method: str) -> float:
    """The smallest adjusted p-value the family's design could give (0 when no count bounds it):
    ``1/(N+1)`` under Westfall–Young; under Holm over ``m`` permutation rows, ``m/(N+1)``. A
    held-out row (its p-value has no floor) or a row without a recorded count bounds nothing."""
    p = _floats(rows["p_value"])
    tested = rows.iloc[np.flatnonzero(np.isfinite(p))]
    if tested.empty or "n_permutations" not in tested.columns:
        return 0.0
    counts = pd.to_numeric(tested["n_permutations"], errors="coerce")
    is_perm = (tested["p_test"].astype(str).eq(PERMUTATION_TEST) if "p_test" in tested.columns
               else counts.fillna(0).gt(0))
    if not is_perm.all() or counts.isna().any():
        return 0.0
    floor = 1.0 / (float(counts.max()) + 1.0)
    return floor if method == WESTFALL_YOUNG else min(1.0, len(tested) * floor)


def permutations_needed(m: int, alpha: float, method: str) -> int:
    """The smallest permutation count whose adjusted p-value can fall below ``alpha``."""
    tests = 1 if method == WESTFALL_YOUNG else max(1, int(m))
    n = max(0, int(math.floor(tests / alpha)) - 1)     # 1/(N+1) * tests < alpha  <=>  N + 1 > tests / alpha
    while tests / (n + 1) >= alpha:                     # exact in floats, whatever tests / alpha rounds to
        n += 1
    return n
