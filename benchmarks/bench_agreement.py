"""New defaults vs old defaults on the organism: accuracies must agree within their intervals.

The old defaults: 100 permutations and the MLP's patience 50 / 2,000 epochs; the new: no
permutation refits (the held-out test) and patience 20 / 1,000 epochs. Permutation refits never
touch the real labels' fits, and the linear probe's splits and inner C choice are unchanged, so
the accuracies can only move through the MLP's early stopping: that is what is compared.
Prints, per API-level feature set and attribute, both accuracies and whether each lies in the
other's 95% interval. Usage: python benchmarks/bench_agreement.py [n_samples]
"""

from __future__ import annotations

import sys
import time


def main() -> None:
    from logitleak.capture.forward import capture
    from logitleak.data import make_shapes
    from logitleak.levels.features import build_features
    from logitleak.models.loading import load_model
    from logitleak.models.organism_train import ensure_organism
    from logitleak.probing.sweep import evaluate_sweep

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 600
    adapter = load_model(ensure_organism(seed=0, progress=False))
    ps = make_shapes(n, questions="color", seed=0)
    cap = capture(adapter, ps, progress=False)
    feats = build_features(cap, None, levels=["topk_ids", "topk_logprobs"], layers=[], ks=[5, 20])
    labels = {a: ps.labels(a) for a in ps.attributes.columns}
    kw = dict(groups=ps.groups, task_attribute="color", progress=False)
    t0 = time.perf_counter()
    new = evaluate_sweep(feats, labels, **kw)
    t_new = time.perf_counter() - t0
    t0 = time.perf_counter()
    # permutation refits do not touch the real labels' fits, so the old accuracies need only the old MLP
    old = evaluate_sweep(feats, labels, probe_params={"mlp": {"patience": 50, "max_epochs": 2000}}, **kw)
    t_old = time.perf_counter() - t0
    both_in = 0
    categorical = new["accuracy"].notna().to_numpy()     # numeric attributes have R², not accuracy
    new, old = new[categorical], old[categorical]
    for (_, a), (_, b) in zip(new.iterrows(), old.iterrows()):
        ok = a.ci_low <= b.accuracy <= a.ci_high and b.ci_low <= a.accuracy <= b.ci_high
        both_in += ok
        print(f"{a.level:<14} k={a.k:<3} {a.attribute:<11} {a.probe:<6} new {a.accuracy:.3f} [{a.ci_low:.3f}, "
              f"{a.ci_high:.3f}]  old {b.accuracy:.3f} [{b.ci_low:.3f}, {b.ci_high:.3f}]  {'agree' if ok else 'DIFFER'}")
    print(f"{both_in}/{len(new)} rows agree within each other's intervals; probing {t_new:.1f} s new vs "
          f"{t_old:.1f} s old (ratio {t_old / t_new:.1f})")


if __name__ == "__main__":
    main()
