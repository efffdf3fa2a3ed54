"""The trained bottleneck's figures (issue 26): fresh-audit readings of the protected attributes per lambda.

Part ``output`` / ``layer``: the organism asked for the colour, 1,500 samples train the bottleneck
and a disjoint 800 are audited (``logitleak defend`` with ``--fit-samples 1500``), the bottleneck on
``shape,size,position,background`` at the output or from ``--layer`` on, beside LEACE and output-side
defences. Prints, per defence and protected attribute, the fresh audit's strongest top-20-with-ids
reading (accuracy, interval, baseline, and whether the interval reaches the baseline), the colour
accuracy, from which layer the information is gone, and the recommendation.

Part ``smollm2``: SmolLM2-135M-Instruct with LoRA on ``personas`` (task ``capital``; trained on personas
of seed 100, audited on those of seed 0), the bottleneck over the whole response protecting ``country``: the audit's whole-response top-20 reading of
``country`` (``response_topk_ids`` k=20) and the answer rate, with and without the bottleneck.

Beside every figure: CPU time of this process and its children, wall time, and the load average.

    .venv/bin/python benchmarks/bench_bottleneck.py [--parts output,layer,smollm2] [--lambdas 1,3]
        [--steps 600] [--layer 3] [--work DIR] [--grid-extra 'leace:all;topk:1;round:0;gauss:2']
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

PROTECT = ("shape", "size", "position", "background")


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def organism_part(at: str, lambdas: str, steps: int, extra: str, work: Path, samples: int, fit: int) -> None:
    from logitleak.config import make_config
    from logitleak.decisions import decide_defences
    from logitleak.defend import run_defend
    from logitleak.defenses import parse_defenses
    from logitleak.defenses.bottleneck import BottleneckSettings

    t0, c0 = time.perf_counter(), cpu_seconds()
    cfg = make_config({"model": "organism", "task": "color", "samples": samples, "seed": 0, "k": [20],
                       "attributes": list(PROTECT), "out": str(work / f"defend-{at.replace(':', '')}"), "force": True})
    grid = parse_defenses(f"none;bottleneck:{lambdas};{extra}" if extra else f"none;bottleneck:{lambdas}")
    result = run_defend(cfg, grid, bottleneck=BottleneckSettings(at=at, steps=steps), fit_samples=fit,
                        progress=True)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    t = result.tradeoff
    run = json.loads((result.out_dir / "run.json").read_text())
    print(f"\n== organism, bottleneck at {at}: {run['n_fit_samples']} training samples, {run['n_samples']} audited")
    defences = decide_defences(t)
    for label, d in defences.items():
        print(f"-- {label}: colour (answer) accuracy {d.utility_accuracy:.3f}")
        rows = t[(t.defense_label == label) & (t.level == "topk_ids") & (t.k == 20) & t.attribute.isin(PROTECT)]
        for a in PROTECT:
            r = rows[rows.attribute == a].sort_values("accuracy").iloc[-1]
            within = "within" if r.ci_low <= r.baseline_accuracy else "ABOVE"
            print(f"   {a:<10} top-20 ids ({r.probe}): {r.accuracy:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}] vs baseline "
                  f"{r.baseline_accuracy:.3f}: {within} its interval; {r.v_info_bits:.3f} bits")
        info = run["bottlenecks"].get(label)
        if info:
            print(f"   information gone from layer (residual stream, fresh probes): {info['gone_from_layer']}")
            mlp = t[(t.defense_label == label) & (t.probe == "mlp") & t.attribute.isin(PROTECT)]
            print(f"   fresh MLP rows in its audit: {len(mlp)} (levels {sorted(set(mlp.level))})")
    print(f"recommendation: {result.recommendation}")
    print(f"[{at}] wall {wall:.0f} s, CPU {cpu:.0f} s, load {load()}")


def smollm2_part(lambdas: str, steps: int, work: Path, samples: int, fit: int, generate: int) -> None:
    import torch

    from logitleak.audit import run_audit
    from logitleak.capture.forward import capture
    from logitleak.config import make_config
    from logitleak.data.loading import load_probe_set
    from logitleak.defenses.bottleneck import BottleneckSettings
    from logitleak.defenses.bottleneck_features import response_targets
    from logitleak.defenses.bottleneck_train import train_bottleneck
    from logitleak.models.loading import load_model
    from logitleak.models.resolve import resolve_model

    t0, c0 = time.perf_counter(), cpu_seconds()
    base_dir = resolve_model("smollm2")
    base = load_model(base_dir, device="cpu")
    # the bottleneck trains on personas drawn from another seed: the audited samples (seed 0) are never seen
    fit_set = load_probe_set(make_config({"model": "smollm2", "data": "personas", "task": "capital", "samples": fit,
                                          "seed": 100, "attributes": ["country"]}))
    with torch.inference_mode():
        cap = capture(base, fit_set, batch_size=16, generate=generate, gen_k=20, progress=True)
    response = response_targets(cap, base)
    print(f"\n== SmolLM2 + LoRA on personas (task capital), protecting country over a {generate}-token response; "
          f"{len(fit_set)} training samples; base response generated in {time.perf_counter() - t0:.0f} s")

    def audit(model: str, name: str) -> dict:
        out = work / f"audit-{name}"
        a_cfg = make_config({"model": model, "data": "personas", "task": "capital", "samples": samples, "seed": 0,
                             "generate": generate, "k": [20], "levels": ["response_topk_ids", "topk_ids"],
                             "attributes": ["country"], "out": str(out), "force": True})
        res = run_audit(a_cfg, progress=True).results
        row = res[(res.level == "response_topk_ids") & (res.attribute == "country")].sort_values("accuracy").iloc[-1]
        util = json.loads((out / "run.json").read_text())["utility"]
        print(f"-- {name}: whole-response top-20 reading of country ({row.probe}) {row.accuracy:.3f} "
              f"[{row.ci_low:.3f}, {row.ci_high:.3f}] vs baseline {row.baseline_accuracy:.3f}, "
              f"{row.v_info_bits:.3f} bits; answer rate {util.get('response_accuracy')}")
        return util

    audit("smollm2", "base")
    for lam in (float(x) for x in lambdas.split(",")):
        settings = BottleneckSettings(protect=("country",), steps=steps, tune="lora", generate=generate,
                                      batch_size=16, task_loss="answer")
        path = train_bottleneck(base, fit_set, lam=lam, settings=settings, task="capital", root=work / "smollm2-runs",
                                seed=0, progress=True, threads=os.cpu_count(), response=response)
        audit(str(path), f"bottleneck:{lam:g}")
    print(f"[smollm2] wall {time.perf_counter() - t0:.0f} s, CPU {cpu_seconds() - c0:.0f} s, load {load()} "
          f"(trained on {fit} personas of seed 100, audited on {samples} of seed 0)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="output,layer,smollm2")
    ap.add_argument("--lambdas", default="1,3")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--samples", type=int, default=2300)
    ap.add_argument("--fit", type=int, default=1500)
    ap.add_argument("--grid-extra", default="leace:all;topk:1;round:0;gauss:2")
    ap.add_argument("--smollm2-samples", type=int, default=400)
    ap.add_argument("--smollm2-fit", type=int, default=400)
    ap.add_argument("--smollm2-steps", type=int, default=150)
    ap.add_argument("--generate", type=int, default=8)
    ap.add_argument("--work", default=None)
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="bench-bottleneck-"))
    print(f"work dir {work}; load {load()}")
    parts = a.parts.split(",")
    if "output" in parts:
        organism_part("output", a.lambdas, a.steps, a.grid_extra, work, a.samples, a.fit)
    if "layer" in parts:
        organism_part(f"layer:{a.layer}", a.lambdas, a.steps, a.grid_extra, work, a.samples, a.fit)
    if "smollm2" in parts:
        smollm2_part(a.lambdas, a.smollm2_steps, work, a.smollm2_samples, a.smollm2_fit, a.generate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
