"""How well each level reads the object's box centre on the organism (the README's figures).

The demo's probe set (1,000 shapes samples, seed 0, asked for the colour), one capture pass, then
ridge regression probes (5 grouped folds, strength chosen on each training fold) for ``center_x``
and ``center_y`` at every residual layer, the vision tower's last layer, the projector, and the
top-20 output with and without token ids. Prints held-out R² with its interval and the mean
absolute error in pixels beside the training-mean baseline (target: residual R² >= 0.9 at the
best layer).

    .venv/bin/python benchmarks/bench_box_centre.py [--samples 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import time

import pandas as pd

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from logitleak.capture.forward import capture
from logitleak.data import make_shapes
from logitleak.levels.features import build_features
from logitleak.models.loading import load_model
from logitleak.models.organism_train import ensure_organism
from logitleak.probing.sweep import evaluate_sweep


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    ad = load_model(ensure_organism(seed=0, progress=False), device="cpu")
    ps = make_shapes(args.samples, questions="color", seed=args.seed)
    cap = capture(ad, ps, batch_size=64, progress=False)
    feats = build_features(cap, ad.readout(), levels=["vision", "projector", "residual", "topk_ids", "topk_logprobs"],
                           layers=range(ad.n_layers + 1), ks=[20], vision_layers=[ad.n_vision_layers])
    df = evaluate_sweep(feats, {a: ps.labels(a) for a in ("center_x", "center_y")}, groups=ps.groups,
                        probes=("linear",), n_bootstrap=300, progress=False)
    print(f"{args.samples} samples, {time.perf_counter() - t0:.0f} s (load average {os.getloadavg()[0]:.1f})")
    for attr in ("center_x", "center_y"):
        rows = df[df.attribute == attr]
        res = rows[rows.level == "residual"]
        best = res.loc[res.r2.idxmax()]
        print(f"{attr}: residual best layer {int(best.layer)} R² {best.r2:.3f} [{best.r2_ci_low:.3f}, {best.r2_ci_high:.3f}]"
              f" MAE {best.mae:.2f} px vs {best.baseline_mae:.2f} (target R² >= 0.9)")
        for _, r in rows[rows.level != "residual"].iterrows():
            where = r.level + ("" if pd.isna(r.k) else f" k={int(r.k)}") + ("" if pd.isna(r.layer) else f" layer {int(r.layer)}")
            print(f"  {where:24s} R² {r.r2:6.3f} [{r.r2_ci_low:.3f}, {r.r2_ci_high:.3f}]  MAE {r.mae:.2f} px "
                  f"vs {r.baseline_mae:.2f}  p {r.p_value:.1e} ({r.p_test})")


if __name__ == "__main__":
    main()
