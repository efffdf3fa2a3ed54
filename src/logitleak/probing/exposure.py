"""Per-record exposure: the share of records an attacker reads with a high posterior on their true value.

An average accuracy hides the individuals read with near certainty. For every tested record the
attacker's out-of-fold posterior on its true value ``q_i(y_i)`` says how sure the attacker is of
the right answer; the share of records with ``q_i(y_i) >= t`` (for ``t`` in :data:`THRESHOLDS`)
is set beside the share the class prior alone gives (the training fold's frequency of the record's
value, what an attacker without the output knows), each with a bootstrap interval over the same
resamples as the accuracy interval.
"""

from __future__ import annotations

import numpy as np

from logitleak.probing.metrics import bootstrap_interval

THRESHOLDS: tuple[float, ...] = (0.9, 0.5)
"""Posterior thresholds whose exposed share every attacker-view row reports."""


def threshold_name(t: float) -> str:
    """``0.9`` -> ``0_9``: the suffix of the exposure columns of threshold ``t``."""
    return f"{t:g}".replace(".", "_")


def exposure_columns(posterior: np.ndarray, prior: np.ndarray, weights: np.ndarray,
                     thresholds: tuple[float, ...] = THRESHOLDS) -> dict[str, float]:
    """``exposed_posterior_<t>`` (with ``_ci_low`` / ``_ci_high``) and ``exposed_prior_<t>`` for
    each threshold: shares of the tested records whose posterior (``posterior`` ``(n,)``) or prior
    (``prior`` ``(n,)``) on their true value is at least ``t``; ``weights`` ``(B, n)`` the
    bootstrap resamples of those records (``B = 0``: intervals NaN)."""
    posterior = np.asarray(posterior, dtype=np.float64)
    prior = np.asarray(prior, dtype=np.float64)
    out: dict[str, float] = {}
    for t in thresholds:
        name = threshold_name(t)
        hit = (posterior >= t).astype(np.float64)
        lo, hi = bootstrap_interval(weights, hit)
        out[f"exposed_posterior_{name}"] = float(hit.mean()) if len(hit) else float("nan")
        out[f"exposed_posterior_{name}_ci_low"] = float(lo)
        out[f"exposed_posterior_{name}_ci_high"] = float(hi)
        out[f"exposed_prior_{name}"] = float((prior >= t).mean()) if len(prior) else float("nan")
    return out


def most_exposed(posterior: np.ndarray, n_top: int = 10) -> np.ndarray:
    """Indices of the ``n_top`` records with the highest posterior on their true value (NaN last;
    ties in index order)."""
    p = np.nan_to_num(np.asarray(posterior, dtype=np.float64), nan=-np.inf)
    return np.argsort(-p, kind="stable")[:n_top]
