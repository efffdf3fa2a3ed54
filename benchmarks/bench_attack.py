"""The attacker's view on the organism (issue 23): the acceptance figures, printed.

1. The demo's scope (`logitleak demo`'s audit, or an existing demo output with --from DIR): per
   categorical attribute, its strongest API reading's AUC and TPR at 1% and 0.1% FPR (95% CI), the
   share of records read with posterior >= 0.9 beside the prior's, and its attack-cost curve
   (accuracy at each attacker size) with the check that the largest subset's point lies inside the
   audit row's interval.
2. --shadow SEED: a shadow organism (trained with another seed; cached after the first run) trains
   the probes, which then read the victim's (the seed-0 organism's) top-20 with ids for the same
   inputs; printed beside the victim-trained reading.

3. --multi-query: the five question types about each image (the organism's colour, shape, size,
   position and background questions), each captured once; `shape` read from each question's top-20
   with ids alone, and from the first 1, 2, ... 5 questions' top-20 with ids side by side (one row
   per image, so one input never straddles a split). Measured here only: the audit has no
   `--queries` flag or `multi_query_` levels yet.

Prints CPU seconds and the load beside wall time. Usage:
    python benchmarks/bench_attack.py [--from DEMO_OUT] [--shadow 1] [--multi-query]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def demo_scope(out: Path | None) -> Path:
    """A finished demo-scope audit: ``out`` when given, else one run now into a temporary folder."""
    if out is not None:
        return out
    from logitleak.audit import run_audit
    from logitleak.cli.audit import demo_config

    target = Path(tempfile.mkdtemp(prefix="bench-attack-")) / "demo"
    t0, c0 = time.perf_counter(), time.process_time()
    run_audit(demo_config(out=str(target)), progress=False)
    print(f"demo audit: wall {time.perf_counter() - t0:.1f} s, cpu (this process) {time.process_time() - c0:.1f} s, "
          f"load {os.getloadavg()[0]:.2f}")
    return target


def print_acceptance(out: Path) -> None:
    from logitleak.decisions import decide, decide_attack
    from logitleak.probing.attack_files import read_attack
    from logitleak.results import read_results

    dec, tables = decide(read_results(out)), read_attack(out)
    attack = decide_attack(tables.curve)
    print(f"\n{'attribute':11s} {'call':9s} {'reading':22s} {'AUC [95% CI]':20s} {'TPR@1% [CI]':20s} "
          f"{'TPR@0.1%':8s} {'post>=0.9 [CI]':20s} prior>=0.9")
    for attr, d in dec.attributes.items():
        r = d.strongest
        if r is None or not np.isfinite(float(r.get("auc", np.nan))):
            continue
        reading = f"{r['level']} k={r['k']} {r['probe']}"
        print(f"{attr:11s} {d.call:9s} {reading:22s} {r.auc:.3f} [{r.auc_ci_low:.3f}, {r.auc_ci_high:.3f}]   "
              f"{r.tpr_at_1pct_fpr:.3f} [{r.tpr_at_1pct_fpr_ci_low:.3f}, {r.tpr_at_1pct_fpr_ci_high:.3f}]   "
              f"{r.tpr_at_0_1pct_fpr:.3f}    {r.exposed_posterior_0_9:.3f} [{r.exposed_posterior_0_9_ci_low:.3f}, "
              f"{r.exposed_posterior_0_9_ci_high:.3f}]   {r.exposed_prior_0_9:.3f}")
    print("\nattack-cost curves (topk_ids, largest k, linear probe): accuracy by attacker size; full = the audit row")
    ann = attack.curve[attack.curve["level"] == "topk_ids"]
    for attr, rows in ann.groupby("attribute", sort=False):
        rows = rows.sort_values("samples")
        pts = "  ".join(f"{int(s)}:{a:.3f}{'' if ok else '(n.r.)'}" for s, a, ok in
                        zip(rows["samples"], rows["accuracy"], rows["readable"]))
        full, sub = rows[rows["full_size"]].iloc[0], rows[~rows["full_size"]].iloc[-1]
        inside = full.ci_low <= sub.accuracy <= full.ci_high
        rises = rows["accuracy"].iloc[-1] > rows["accuracy"].iloc[0]
        print(f"  {attr:11s} {pts}   rises: {rises}; largest subset ({int(sub.samples)}) inside the audit row's "
              f"interval [{full.ci_low:.3f}, {full.ci_high:.3f}]: {inside}")
    for cost in attack.cheapest.values():
        print("  " + cost.sentence())


def api_features(model_dir: Path, store: Path, question: str = "color") -> tuple[dict, object]:
    """The top-20 with ids of ``model_dir`` on the demo's probe set asked about ``question``, and the probe set."""
    from logitleak.audit import answer_token_ids
    from logitleak.capture.store import ActivationStore
    from logitleak.cli.audit import demo_config
    from logitleak.data.loading import load_probe_set
    from logitleak.levels.features import build_features
    from logitleak.models.loading import load_model

    probeset = load_probe_set(demo_config(task=question))
    adapter = load_model(model_dir, device="cpu")
    cap = ActivationStore(store).extract(adapter, probeset, progress=False)
    feats = build_features(cap, adapter.readout(), levels=["topk_ids"], layers=[], ks=[20],
                           answer_token_ids=answer_token_ids(adapter, probeset))
    return feats, probeset


def print_shadow(seed: int) -> None:
    from logitleak.models.organism_train import ensure_organism
    from logitleak.probing.sweep import evaluate_sweep

    t0, c0 = time.perf_counter(), time.process_time()
    shadow_dir, victim_dir = ensure_organism(seed=seed, progress=False), ensure_organism(seed=0, progress=False)
    with tempfile.TemporaryDirectory(prefix="bench-attack-") as tmp:
        victim, probeset = api_features(victim_dir, Path(tmp) / "victim")
        shadow, _ = api_features(shadow_dir, Path(tmp) / "shadow")
    labels = {a: probeset.labels(a) for a in probeset.categorical_attributes}
    kw = dict(groups=probeset.groups, task_attribute="color", probes=("linear",), progress=False)
    own = evaluate_sweep(victim, labels, **kw)
    moved = evaluate_sweep(shadow, labels, eval_features=victim, shadow=f"organism:{seed}", **kw)
    print(f"\nshadow organism:{seed} -> victim organism:0, topk_ids k=20, linear probe "
          f"(wall {time.perf_counter() - t0:.1f} s, cpu {time.process_time() - c0:.1f} s, load {os.getloadavg()[0]:.2f})")
    print(f"{'attribute':11s} {'baseline':8s} {'victim-trained [CI]':22s} {'shadow-trained [CI]':22s} shadow p")
    for (_, a), (_, b) in zip(own.iterrows(), moved.iterrows()):
        print(f"{a.attribute:11s} {a.baseline_accuracy:.3f}    {a.accuracy:.3f} [{a.ci_low:.3f}, {a.ci_high:.3f}]  "
              f"   {b.accuracy:.3f} [{b.ci_low:.3f}, {b.ci_high:.3f}]     {b.p_value:.2g}")


def print_multi_query(target: str = "shape") -> None:
    from logitleak.models.organism_train import ensure_organism
    from logitleak.probing.sweep import evaluate_sweep

    t0, c0 = time.perf_counter(), time.process_time()
    questions = ("color", "shape", "size", "position", "background")
    feats, sets = {}, []
    with tempfile.TemporaryDirectory(prefix="bench-attack-") as tmp:
        for q in questions:
            f, ps = api_features(ensure_organism(seed=0, progress=False), Path(tmp) / q, question=q)
            feats[q], sets = f[("topk_ids", None, 20)], [*sets, ps]
    y = sets[0].labels(target)
    assert all((ps.labels(target) == y).all() for ps in sets), "the questions must be about the same images"
    combos = {("topk_ids", i, 20): feats[q] for i, q in enumerate(questions)}          # layer: which question alone
    combos.update({("multi_query_topk_ids", j, 20): np.hstack([feats[q] for q in questions[:j]])
                   for j in range(2, len(questions) + 1)})                              # layer: questions combined
    others = [q for q in questions if q != target]
    combos[("multi_query_topk_ids", 0, 20)] = np.hstack([feats[q] for q in others])      # 0: the other questions
    rows = evaluate_sweep(combos, {target: y}, probes=("linear",), progress=False)
    print(f"\nmulti-query on the organism: {target} from each question's top-20 with ids, and combined "
          f"(linear probe; wall {time.perf_counter() - t0:.1f} s, cpu {time.process_time() - c0:.1f} s, "
          f"load {os.getloadavg()[0]:.2f})")
    for _, r in rows.iterrows():
        what = (f"question {questions[int(r.layer)]!r} alone" if r.level == "topk_ids" else
                f"first {int(r.layer)} questions combined" if r.layer else f"the {len(others)} questions not about it")
        print(f"  {what:34s} accuracy {r.accuracy:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}] (baseline "
              f"{r.baseline_accuracy:.3f}), {r.v_info_bits:.2f} bits [{r.v_info_ci_low:.2f}, {r.v_info_ci_high:.2f}]")
    single = rows[rows.level == "topk_ids"]
    multi = rows[rows.level == "multi_query_topk_ids"].set_index("layer")
    best, combined = single.loc[single.v_info_bits.idxmax()], multi.loc[len(questions)]
    print(f"  all five combined {combined.accuracy:.3f} vs the best single question ({questions[int(best.layer)]}) "
          f"{best.accuracy:.3f}: at least as readable: {combined.ci_high >= best.accuracy}")
    rest = single[single.layer != questions.index(target)]
    best_other, other = rest.loc[rest.v_info_bits.idxmax()], multi.loc[0]
    print(f"  the other four combined {other.accuracy:.3f} vs the best of them alone "
          f"({questions[int(best_other.layer)]}) {best_other.accuracy:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="from_dir", type=Path, help="a finished demo output folder")
    parser.add_argument("--shadow", type=int, help="the shadow organism's seed (e.g. 1)")
    parser.add_argument("--multi-query", action="store_true", help="the five questions about each image combined")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    print_acceptance(demo_scope(args.from_dir))
    if args.shadow is not None:
        print_shadow(args.shadow)
    if args.multi_query:
        print_multi_query()


if __name__ == "__main__":
    main()
