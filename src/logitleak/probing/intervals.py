"""Intervals that cover: the bootstrap over held-out predictions, widened by the probe's fitting variance.

The percentile bootstrap over held-out predictions treats the fitted probes as fixed, but each
fold's probe was fitted on the other folds' samples, so a cross-validated score also varies with
which samples it trained on. For a probe near its population optimum that extra variance of the
cross-validated mean log-likelihood is the pairwise (U-statistic) term, about
``2 tr(H^-1 S) / (n n_tr)`` nats² (Takeuchi's effective number of parameters ``tr(H^-1 S)``, over
``n`` scored and ``n_tr`` training samples), and ``tr(H^-1 S) / n_tr`` is the probe's *optimism*:
how much better its fits score the rows they trained on than the same rows held out. Hence

    V_fit = 2 * optimism / units     (nats², over the independent units: samples or groups)

It matters where the signal is weak (the bootstrap variance is then small beside it: intervals
were 11-20% too narrow there, covering 0.80-0.90 instead of 0.95) and fades where it is strong.
Each side of the bootstrap interval of the bits is widened to ``sqrt(side² + z² V_fit)`` (its
asymmetry kept); the accuracy interval is widened by the same factor as the bits' (the same
fitting noise moves both). ``tests/test_calibration.py`` measures the coverage on weak planted
signals, ``benchmarks/bench_calibration.py`` across designs. For a regularised probe the
optimism counts ``tr(H^-1 S)`` where the variance needs ``tr((H^-1 S)^2)``, which is no larger:
the correction errs wide.
"""

from __future__ import annotations

import numpy as np

LN2 = float(np.log(2.0))
Z95 = 1.959963984540054


def optimism(heldout: np.ndarray, seen: np.ndarray, n_seen: np.ndarray, tested: np.ndarray) -> np.ndarray:
    """``(F,)`` mean optimism in nats, at least 0: ``heldout`` ``(F, n)`` held-out
    log-probabilities of the real labels, ``seen`` ``(F, n)`` the sum of the in-sample
    log-probabilities of each row over the ``n_seen`` ``(n,)`` fits that trained on it."""
    rows = np.flatnonzero((np.asarray(n_seen) > 0) & np.asarray(tested))
    if len(rows) == 0:
        return np.zeros(len(heldout))
    gap = seen[:, rows] / n_seen[rows] - np.asarray(heldout, np.float64)[:, rows]
    return np.maximum(gap.mean(1), 0.0)


def fitting_variance_bits(opt: np.ndarray, units: int) -> np.ndarray:
    """``V_fit`` in bits² from the optimism (nats) and the number of independent scored units."""
    return 2.0 * np.asarray(opt, np.float64) / max(int(units), 1) / LN2 ** 2


def widen(estimate: np.ndarray, low: np.ndarray, high: np.ndarray, v_fit: np.ndarray,
          z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Each side of ``[low, high]`` (about ``estimate``) widened to ``sqrt(side² + z² v_fit)``."""
    below = np.maximum(estimate - low, 0.0)
    above = np.maximum(high - estimate, 0.0)
    extra = z * z * np.maximum(v_fit, 0.0)
    return estimate - np.sqrt(below ** 2 + extra), estimate + np.sqrt(above ** 2 + extra)


def widen_like(estimate: np.ndarray, low: np.ndarray, high: np.ndarray, before: tuple, after: tuple
               ) -> tuple[np.ndarray, np.ndarray]:
    """``[low, high]`` widened about ``estimate`` by the factor that took interval ``before`` to
    ``after`` (each ``(low, high)``), side by side; unchanged where ``before`` has no width."""
    width0 = before[1] - before[0]
    factor = np.where(width0 > 0, (after[1] - after[0]) / np.where(width0 > 0, width0, 1.0), 1.0)
    return estimate - factor * (estimate - low), estimate + factor * (high - estimate)
