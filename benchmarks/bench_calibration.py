"""Calibration benchmark: null rejection rates with binomial intervals, tails against the exact null, coverage.

Prints, per scenario, the fraction of null p-values below 0.05 / 0.01 / 1e-3 with 95% Clopper-Pearson
intervals, for the default held-out test (linear probe and MLP) and the permutation path (each row's
permutation p-value and the family-wise rate after Westfall-Young); the exact conditional null's
tail beside Student's t at the 1e-2 / 1e-3 / 1e-4 quantiles; the coverage of the bits and accuracy
intervals on weak planted signals; and power at n = 100 and on Zipf-sized groups against the
permutation test. Every
figure is seeded, so the next change to the statistics is measured the same way.

    .venv/bin/python benchmarks/bench_calibration.py            # about 3 minutes of CPU (185 s measured)
    .venv/bin/python benchmarks/bench_calibration.py --quick    # a fifth of the sets, about 1 minute
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from calibration_designs import (  # noqa: E402
    balanced_labels,
    class_means,
    forward_chain_logp,
    gaussian_classes,
    linear_probe_truth,
    zipf_groups,
)

from logitleak.decisions import westfall_young  # noqa: E402
from logitleak.probing.heldout import block_weights, centred_gains, gain_units  # noqa: E402
from logitleak.probing.heldout_exact import exact_heldout_null  # noqa: E402
from logitleak.probing.sweep import evaluate_sweep  # noqa: E402

ALPHAS = (0.05, 0.01, 1e-3)


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rate(p: np.ndarray, alpha: float) -> str:
    k, n = int((p < alpha).sum()), len(p)
    ci = stats.binomtest(k, n).proportion_ci(0.95)
    return f"{k / n:.4f} [{ci.low:.4f}, {ci.high:.4f}]"


def report(name: str, p: np.ndarray, seconds: float) -> None:
    p = np.asarray(p, float)
    p = p[np.isfinite(p)]
    cells = "  ".join(f"<{a:g}: {rate(p, a)}" for a in ALPHAS)
    print(f"  {name:44s} n={len(p):5d}  {cells}  ({seconds:.0f} s CPU)", flush=True)


def numeric_zipf(rng):
    """Zipf groups with numeric, group-constant attributes (the regression probes' held-out test)."""
    feats, labels, groups = zipf_groups(rng)
    return feats, {a: rng.normal(size=groups.max() + 1)[groups] for a in labels}, groups


def null_scenarios():
    """``(name, generator, probe)``: null designs across sizes, balances and groupings."""
    def groups_of(size):
        def make(rng):
            feats, labels, _ = gaussian_classes(rng, n=240, d=8, n_feats=4, n_attrs=10)
            g = np.repeat(np.arange(240 // size), size)
            shared = rng.normal(size=(240 // size, 8))[g]
            return ({k: v + shared for k, v in feats.items()},
                    {a: rng.integers(0, 2, 240 // size)[g] for a in labels}, g)
        return make

    return [
        ("iid n=200 d=8 K=2 (linear)", lambda r: gaussian_classes(r, n=200, d=8, n_feats=4, n_attrs=10), "linear"),
        ("iid n=100 d=32 K=2 (linear)", lambda r: gaussian_classes(r, n=100, d=32, n_feats=4, n_attrs=10), "linear"),
        ("iid n=300 prior 90/10 (linear)",
         lambda r: gaussian_classes(r, n=300, d=4, n_feats=4, n_attrs=10, prior=(9, 1)), "linear"),
        ("iid n=500 K=10 (linear)", lambda r: gaussian_classes(r, n=500, d=16, n_classes=10, n_feats=2, n_attrs=10),
         "linear"),
        ("groups of 3, n=240 (linear)", groups_of(3), "linear"),
        ("Zipf groups, 65 of them, n=400 (linear)", lambda r: zipf_groups(r), "linear"),
        ("Zipf groups, numeric attributes (ridge)", numeric_zipf, "linear"),
        ("iid n=200 d=8 K=2 (mlp)", lambda r: gaussian_classes(r, n=200, d=8, n_feats=2, n_attrs=10), "mlp"),
        ("Zipf groups, 65 of them, n=400 (mlp)", lambda r: zipf_groups(r, n_feats=2), "mlp"),
    ]


def run_nulls(reps: int) -> None:
    print("Default test (held-out gain test): null rejection rates [95% CI]")
    for i, (name, make, probe) in enumerate(null_scenarios()):
        rng = np.random.default_rng(100 + i)
        t0, p = cpu(), []
        for _ in range(reps):
            feats, labels, groups = make(rng)
            df = evaluate_sweep(feats, labels, groups=groups, probes=(probe,), n_bootstrap=0, progress=False,
                                probe_params={"mlp": {"hidden": 16}} if probe == "mlp" else None)
            p.append(df.p_value.to_numpy())
        report(name, np.concatenate(p), cpu() - t0)


def run_permutations(reps: int, n_perm: int = 99) -> None:
    print(f"Permutation path ({n_perm} shared permutations, refits): each row's p, and the family after "
          "Westfall-Young (any rejection in a 40-row family)")
    rng = np.random.default_rng(7)
    t0, rows, family = cpu(), [], []
    for _ in range(max(1, reps // 2)):
        feats, labels, _ = gaussian_classes(rng, n=150, d=4, n_feats=20, n_attrs=2)
        feats = {("topk_ids", None, f + 1): X for f, (_, X) in enumerate(feats.items())}
        df = evaluate_sweep(feats, labels, probes=("linear",), n_permutations=n_perm, n_bootstrap=0, progress=False,
                            probe_params={"linear": {"C": 1.0}})
        rows.append(df.p_value.to_numpy())
        family.append(westfall_young(np.stack([np.asarray(v) for v in df.permutation_stats], 1)).min())
    report("per row (n=150, 2 classes, 40-row family)", np.concatenate(rows), cpu() - t0)
    report("family-wise after Westfall-Young", np.array(family), 0.0)


def run_tails() -> None:
    print("Far tail: the exact conditional null's rate beyond Student's t quantile (ratio to nominal)")
    rng = np.random.default_rng(11)
    cases = [("iid n=300 K=3 overconfident", 300, 3, 100.0, None), ("iid n=100 K=2 overconfident", 100, 2, 100.0, None),
             ("iid n=1000 K=5", 1000, 5, 1.0, None), ("Zipf groups K=3 (exact null used)", 400, 3, 1.0, "zipf")]
    for name, n, K, C, kind in cases:
        t0 = cpu()
        if kind == "zipf":
            feats, labels, groups = zipf_groups(rng, n_classes=K, n_feats=1, n_attrs=1)
            X, y = feats[("noise", 0, None)], labels["a0"]
        else:
            groups, y = None, rng.integers(0, K, n)
            X = rng.normal(size=(n, 4))
        logp, block = forward_chain_logp(X, y, groups, C=C)
        _, draws = exact_heldout_null(logp, y, block, groups, n_draws=200_000, seed=1)
        m = len(gain_units(centred_gains(logp, y, block) * block_weights(block), groups))
        cells = "  ".join(f"t at {a:g}: {np.mean(draws >= stats.t.isf(a, m - 1)) / a:.2f}x" for a in (1e-2, 1e-3, 1e-4))
        print(f"  {name:44s} {cells}  ({cpu() - t0:.0f} s CPU)", flush=True)


def run_coverage(sets: int) -> None:
    print("Coverage of the 95% intervals on weak planted signals (truth: the probe's expected held-out score)")
    for i, (n, d, K, delta) in enumerate(((200, 8, 2, 0.9), (200, 32, 2, 1.2), (400, 16, 4, 0.8))):
        rng = np.random.default_rng(30 + i)
        t0 = cpu()
        means = class_means(rng, d, K, delta)
        acc_t, bits_t = linear_probe_truth(rng, means, n * 4 // 5)
        hit_a = hit_b = total = 0
        for _ in range(max(1, sets // 10)):
            y = balanced_labels(rng, n, K)
            feats = {("gauss", f, None): rng.normal(size=(n, d)) + means[y] for f in range(10)}
            df = evaluate_sweep(feats, {"y": y}, probes=("linear",), n_bootstrap=1000, progress=False)
            hit_a += int(((df.ci_low <= acc_t) & (acc_t <= df.ci_high)).sum())
            hit_b += int(((df.v_info_ci_low <= bits_t) & (bits_t <= df.v_info_ci_high)).sum())
            total += len(df)
        print(f"  n={n} d={d} K={K}: truth {bits_t:.3f} bits, accuracy {acc_t:.3f}; coverage bits "
              f"{hit_b / total:.3f}, accuracy {hit_a / total:.3f} over {total} sets  ({cpu() - t0:.0f} s CPU)", flush=True)


def run_power(reps: int) -> None:
    print("Power on planted signals (attribute a0 only), held-out test vs 100 permutations")
    cases = [("n=100, 3 classes", 5, lambda r: gaussian_classes(r, n=100, d=8, n_classes=3, n_feats=10, delta=0.7)),
             ("Zipf groups, 65 of them, n=400", 6, lambda r: zipf_groups(r, n_feats=4, n_attrs=1, signal=0.5))]
    for name, seed, make in cases:
        rng = np.random.default_rng(seed)
        t0, held, perm = cpu(), [], []
        for _ in range(max(1, reps // 2)):
            feats, labels, groups = make(rng)
            df = evaluate_sweep(feats, {"a0": labels["a0"]}, groups=groups, probes=("linear",), n_permutations=100,
                                n_bootstrap=0, progress=False, probe_params={"linear": {"C": 1.0}})
            held.append(df.p_value_heldout.to_numpy())
            perm.append(df.p_value_permutation.to_numpy())
        held, perm = np.concatenate(held), np.concatenate(perm)
        cells = ", ".join(f"alpha {a:g}: held-out {np.mean(held < a):.2f} vs permutations {np.mean(perm < a):.2f}"
                          for a in (0.05, 0.01))
        print(f"  {name:32s} {cells} over {len(held)} sets  ({cpu() - t0:.0f} s CPU)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a fifth of the data sets")
    args = ap.parse_args()
    torch.set_num_threads(1)
    reps = 6 if args.quick else 30
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; CPU seconds per section")
    start = time.time()
    run_nulls(reps)
    run_permutations(reps)
    run_tails()
    run_coverage(60 if args.quick else 300)
    run_power(reps)
    print(f"done in {time.time() - start:.0f} s wall, {cpu():.0f} s CPU")


if __name__ == "__main__":
    main()
