"""Batched torch linear probe vs a scikit-learn LogisticRegression loop, at the size of a real audit.

33 layers x 2,000 samples x 1,024 dims, 5 attributes, 5-fold stratified CV, random Gaussian
class-conditional features. Both sides fit the same problems: the same folds, the same C, the
same standardisation (fitted on each training fold). Prints wall times, the speed-up (target
>= 10x) and the largest absolute difference in held-out accuracy (target <= 0.01).

The scikit-learn side is timed on a subset of layers and extrapolated linearly (it says so).

    .venv/bin/python benchmarks/bench_probes.py [--sklearn-layers 4] [--C 1.0] [--layers 33]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

# OpenMP threads that spin while waiting are catastrophic on a shared, oversubscribed machine
# (measured here: 6x slower at load 8 on 2 cores); passive waiting keeps torch's default thread
# count without that. Must be set before torch loads; pass --spin to measure without it.
if "--spin" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from logitleak.probing.estimators import fit_linear_batched, prepare_features
from logitleak.probing.splits import cv_splits
from logitleak.probing.sweep import evaluate_sweep

N, D, FOLDS = 2000, 1024, 5
CLASSES = (2, 2, 3, 3, 4)          # five attributes


def make_data(n_layers: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = {f"attr{a}": rng.integers(0, K, N) for a, K in enumerate(CLASSES)}
    feats = {}
    for layer in range(n_layers):
        X = rng.standard_normal((N, D), dtype=np.float32)
        X *= rng.uniform(0.2, 5.0, D).astype(np.float32)           # unequal scales
        for a, (name, y) in enumerate(labels.items()):
            # each attribute has its own class means; how strongly a layer encodes it varies
            strength = 0.008 * (1 + np.sin(layer / 5 + a)) + 0.002 * a
            means = rng.normal(0, strength, (CLASSES[a], D)).astype(np.float32)
            X += means[y] * 3
        feats[("residual", layer, None)] = X
    return feats, labels


def folds_for(labels):
    return {a: cv_splits(y, None, FOLDS, seed=0) for a, y in labels.items()}


def batched_sweep(feats, labels, folds, C):
    """Every (layer, attribute, fold) problem in one batched fit; returns accuracy[(layer, attr)]."""
    keys = list(feats)
    attrs = list(labels)
    K = max(CLASSES)
    y_rows, masks, cmask, owner = [], [], [], []
    for ai, a in enumerate(attrs):
        for s, (tr, _) in enumerate(folds[a]):
            y_rows.append(labels[a])
            m = np.zeros(N, bool)
            m[tr] = True
            masks.append(m)
            row = np.zeros(K, bool)
            row[: CLASSES[ai]] = True
            cmask.append(row)
            owner.append((a, s))
    X, _, _ = prepare_features([feats[k] for k in keys])
    fit = fit_linear_batched(X, np.stack(y_rows), np.stack(masks), C=C, n_classes=K, class_mask=np.stack(cmask))
    pred = fit.log_proba(X).argmax(-1).numpy()                     # (F, n, P)
    acc = {}
    for fi, key in enumerate(keys):
        for a in attrs:
            correct = 0
            for p, (a2, s) in enumerate(owner):
                if a2 == a:
                    te = folds[a][s][1]
                    correct += int((pred[fi, te, p] == labels[a][te]).sum())
            acc[(key[1], a)] = correct / N
    return acc, fit


def sklearn_loop(feats, labels, folds, C, layers):
    acc = {}
    for key in [k for k in feats if k[1] in layers]:
        X = feats[key]
        for a, y in labels.items():
            correct = 0
            for tr, te in folds[a]:
                sc = StandardScaler().fit(X[tr])
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    m = LogisticRegression(C=C, max_iter=1000).fit(sc.transform(X[tr]), y[tr])
                correct += int((m.predict(sc.transform(X[te])) == y[te]).sum())
            acc[(key[1], a)] = correct / N
    return acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=33)
    ap.add_argument("--sklearn-layers", type=int, default=4, help="layers timed on the scikit-learn side")
    ap.add_argument("--C", type=float, default=1.0)
    ap.add_argument("--sweep", action="store_true", help="also time evaluate_sweep (control task, metrics)")
    ap.add_argument("--spin", action="store_true", help="leave OMP_WAIT_POLICY unset (OpenMP default)")
    args = ap.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads (torch default), "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"data: {args.layers} layers x {N} samples x {D} dims, {len(CLASSES)} attributes "
          f"(classes {CLASSES}), {FOLDS}-fold CV, C = {args.C}")
    t = time.perf_counter()
    feats, labels = make_data(args.layers)
    folds = folds_for(labels)
    print(f"generated in {time.perf_counter() - t:.1f}s")

    t = time.perf_counter()
    acc_b, fit = batched_sweep(feats, labels, folds, args.C)
    t_batched = time.perf_counter() - t
    n_fits = args.layers * len(CLASSES) * FOLDS
    print(f"batched torch linear probe: {n_fits} fits in {t_batched:.1f}s "
          f"(L-BFGS iterations mean {fit.n_iter.float().mean():.0f}, max {int(fit.n_iter.max())}, "
          f"converged {fit.converged.float().mean():.0%})")

    n_sk = min(args.sklearn_layers, args.layers)
    layers = sorted(set(np.linspace(0, args.layers - 1, n_sk).round().astype(int).tolist()))
    t = time.perf_counter()
    acc_s = sklearn_loop(feats, labels, folds, args.C, layers)
    t_sk = time.perf_counter() - t
    t_sk_full = t_sk * args.layers / len(layers)
    print(f"scikit-learn LogisticRegression loop: {len(layers) * len(CLASSES) * FOLDS} fits on layers {layers} "
          f"in {t_sk:.1f}s; extrapolated linearly to {args.layers} layers: {t_sk_full:.1f}s")

    print(f"load average now {os.getloadavg()[0]:.1f}")
    diffs = [abs(acc_b[k] - acc_s[k]) for k in acc_s]
    accs = [acc_s[k] for k in acc_s]
    ratio = t_sk_full / t_batched
    print(f"held-out accuracies compared: {len(diffs)} (range {min(accs):.3f}-{max(accs):.3f})")
    print(f"speed-up: {ratio:.1f}x (target >= 10x) {'OK' if ratio >= 10 else 'BELOW TARGET'}")
    print(f"largest |accuracy difference|: {max(diffs):.4f} (target <= 0.01) {'OK' if max(diffs) <= 0.01 else 'ABOVE TARGET'}")

    if args.sweep:
        t = time.perf_counter()
        evaluate_sweep(feats, labels, probes=("linear",), n_permutations=0, n_bootstrap=1000, progress=False,
                       probe_params={"linear": {"C": args.C}})
        print(f"evaluate_sweep (same fits + control task + bootstrap + metrics): {time.perf_counter() - t:.1f}s")


if __name__ == "__main__":
    main()
