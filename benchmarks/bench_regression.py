"""Batched ridge regression probe vs scikit-learn fitted one problem at a time.

The same problems on both sides: ``layers`` feature sets (n x d Gaussian features, a linear
target plus noise), 5 label-free folds, the real target plus ``variants - 1`` permuted ones (the
relabellings a permutation test needs), the strength chosen per problem from the same grid on the
same inner split of each training fold, features standardised on each training fold. Prints both
wall times, the speed-up (target >= 10x) and the largest absolute difference in held-out R²
(target <= 1e-6), with the load average beside the timings (the machine is shared).

    .venv/bin/python benchmarks/bench_regression.py [--layers 2] [--n 1000] [--d 128] [--variants 6]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if "--spin" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler

from logitleak.probing.regression import ALPHAS, fit_ridge_cv, shared_splits


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--variants", type=int, default=6)
    ap.add_argument("--spin", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.layers, args.n, args.d))
    y = X[0, :, :4] @ np.array([1.0, -2.0, 0.5, 1.5]) + rng.normal(size=args.n)
    Y = np.stack([y] + [y[rng.permutation(args.n)] for _ in range(args.variants - 1)], 1)
    train, test, fit, val = shared_splits(args.n, None, 5, seed=0)

    t0 = time.perf_counter()
    pred, _, alpha = fit_ridge_cv(torch.as_tensor(X), torch.as_tensor(Y), train, test, fit, val)
    t_batched = time.perf_counter() - t0

    t0 = time.perf_counter()
    ref = np.zeros_like(pred)
    for f in range(args.layers):
        for b in range(Y.shape[1]):
            for s in range(5):
                sc = StandardScaler().fit(X[f][train[s]])
                Z = sc.transform(X[f])
                errs = []
                for a in ALPHAS:
                    m = Ridge(alpha=a * fit[s].sum()).fit(Z[fit[s]], Y[fit[s], b])
                    errs.append(((m.predict(Z[val[s]]) - Y[val[s], b]) ** 2).mean())
                best = ALPHAS[int(np.argmin(errs))]
                m = Ridge(alpha=best * train[s].sum()).fit(Z[train[s]], Y[train[s], b])
                ref[f, b, test[s]] = m.predict(Z[test[s]])
    t_sklearn = time.perf_counter() - t0

    def r2(p):
        return 1 - ((p - Y.T[None]) ** 2).sum(-1) / ((Y - Y.mean(0)) ** 2).sum(0)[None]

    diff = float(np.abs(r2(pred) - r2(ref)).max())
    load = os.getloadavg()[0]
    print(f"problems: {args.layers} feature sets x {Y.shape[1]} targets x 5 folds x {len(ALPHAS)} strengths "
          f"(n={args.n}, d={args.d}); load average {load:.1f}")
    print(f"batched ridge: {t_batched:.2f} s   scikit-learn loop: {t_sklearn:.2f} s   "
          f"speed-up {t_sklearn / t_batched:.1f}x (target >= 10x)")
    print(f"max |R² difference|: {diff:.2e} (target <= 1e-6)")


if __name__ == "__main__":
    main()
