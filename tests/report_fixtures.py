"""A synthetic results-table builder for the report tests: every number is chosen, so the
verdict the report must reach is known."""

from __future__ import annotations

import math

import pandas as pd

from logitleak.results import to_frame

KS: tuple[int, ...] = (1, 2, 5, 10, 20)
LAYERS: tuple[int, ...] = tuple(range(7))
LAYER_LEVELS: tuple[str, ...] = ("residual", "logit_lens_topk", "tuned_lens_topk")
# attribute -> (task_relevant, n_classes, baseline accuracy)
ATTRIBUTES: dict[str, tuple[bool, int, float]] = {
    "color": (True, 4, 0.25),
    "shape": (False, 3, 0.35),
    "size": (False, 2, 0.50),
}
LEAK_BITS_K5 = 0.71  # the strongest family's (mlp) bits for shape at topk_ids, k=5
N = 600


def make_row(level: str, attribute: str, *, layer=None, k=None, probe: str = "linear",
             accuracy: float, baseline: float, p: float, bits: float, n_classes: int,
             task_relevant: bool, half_width: float = 0.03, n: int = N) -> dict:
    """One results row with its interval, entropy and V-information fields filled consistently."""
    entropy = math.log2(n_classes) if n_classes > 1 else 0.0
    bw = 0.08
    return {
        "level": level, "layer": layer, "k": k, "attribute": attribute, "probe": probe,
        "task_relevant": task_relevant, "n": n, "n_classes": n_classes, "n_features": k or 64,
        "accuracy": accuracy, "balanced_accuracy": accuracy, "macro_f1": accuracy,
        "baseline_accuracy": baseline, "ci_low": accuracy - half_width, "ci_high": accuracy + half_width,
        "p_value": p, "ce_bits": entropy - bits, "entropy_bits": entropy, "v_info_bits": bits,
        "v_info_frac": bits / entropy if entropy else float("nan"),
        "v_info_ci_low": bits - bw, "v_info_ci_high": bits + bw,
        "control_accuracy": baseline + 0.02, "selectivity": accuracy - baseline - 0.02,
    }


def _null(level, attr, relevant, n_classes, base, probe, **key) -> dict:
    """A row at the baseline: nothing readable."""
    return make_row(level, attr, probe=probe, accuracy=base + 0.01, baseline=base, p=0.4, bits=0.01,
                    n_classes=n_classes, task_relevant=relevant, **key)


def _readable(level, attr, relevant, n_classes, base, probe, strength: float, **key) -> dict:
    """A clearly readable row; ``strength`` in (0, 1] scales accuracy and bits."""
    entropy = math.log2(n_classes)
    bonus = 0.05 if probe == "mlp" else 0.0  # mlp is the stronger family here
    acc = min(0.99, base + (1 - base) * strength * 0.75 + bonus)
    bits = round(entropy * strength * 0.55 + bonus, 3)
    return make_row(level, attr, probe=probe, accuracy=round(acc, 3), baseline=base, p=1e-5, bits=bits,
                    n_classes=n_classes, task_relevant=relevant, **key)


def make_table(scenario: str = "leak", levels=None, probes=("linear", "mlp")) -> pd.DataFrame:
    """A full synthetic audit table.

    ``scenario="leak"``: ``shape`` (task-irrelevant) leaks at every top-k level from k=5 on
    (p=1e-5, accuracy well above baseline; mlp strongest with ``LEAK_BITS_K5`` bits at topk_ids
    k=5), ``size`` (task-irrelevant) sits at the baseline at every API level (p=0.4) but is
    readable in the residual stream, ``color`` (task-relevant) is readable everywhere.
    ``scenario="null"``: every row of every level at the baseline.
    ``levels`` keeps only those levels (to test a partial audit).
    """
    rows: list[dict] = []
    for attr, (relevant, n_classes, base) in ATTRIBUTES.items():
        for probe in probes:
            c = dict(attr=attr, relevant=relevant, n_classes=n_classes, base=base, probe=probe)

            def add(level, strength, **key):
                if scenario == "null" or strength <= 0:
                    rows.append(_null(level, c["attr"], relevant, n_classes, base, probe, **key))
                else:
                    rows.append(_readable(level, c["attr"], relevant, n_classes, base, probe, strength, **key))

            for level in LAYER_LEVELS:
                scale = {"residual": 1.0, "logit_lens_topk": 0.5, "tuned_lens_topk": 0.85}[level]
                for layer in LAYERS:
                    s = scale * (0.3 + 0.7 * min(layer, 4) / 4)
                    if attr == "size":
                        s *= 0.6 if level == "residual" else 0.0
                    key = {"layer": layer, "k": 10 if level.endswith("_topk") else None}
                    add(level, s, **key)
            for level in ("topk_ids", "topk_logprobs", "topk_logits"):
                for k in KS:
                    if attr == "color":
                        s = 0.9
                    elif attr == "shape":
                        s = (0.75 if level == "topk_ids" else 0.6) * (1.0 if k >= 5 else 0.0) * (1 + 0.05 * (k > 5))
                    else:
                        s = 0.0
                    add(level, s, k=k)
            add("top1_prob", 0.5 if attr == "color" else 0.0)
    df = to_frame(rows)
    if scenario == "leak":
        # pin the headline number: shape at topk_ids k=5, mlp
        m = (df["level"] == "topk_ids") & (df["attribute"] == "shape") & (df["k"] == 5) & (df["probe"] == "mlp")
        df.loc[m, ["v_info_bits", "v_info_ci_low", "v_info_ci_high", "accuracy", "ci_low", "ci_high"]] = [
            LEAK_BITS_K5, LEAK_BITS_K5 - 0.08, LEAK_BITS_K5 + 0.08, 0.83, 0.80, 0.86]
    if levels is not None:
        df = df[df["level"].isin(levels)].reset_index(drop=True)
    return df


def run_info(**extra) -> dict:
    """A run_info dict like the audit's."""
    info = {
        "model": "organism:tiny-llava", "data": "shapes (procedural)", "task_attribute": "color",
        "seed": 0, "n_samples": N,
        "timings": {"capture_s": 1.25, "probes_s": 12.5, "total_s": 14.0},
        "versions": {"logitleak": "0.1.0", "torch": "2.x", "transformers": "5.x"},
        "fingerprints": {"model": "sha256:abc123", "data": "sha256:def456"},
    }
    info.update(extra)
    return info


def make_tradeoff(attributes=("shape", "size")) -> pd.DataFrame:
    """A defence trade-off table: stronger defences cut leakage and some utility."""
    rows = []
    for defense, strengths in (("topk", (20, 5, 2, 1)), ("noise", (0.0, 0.5, 1.0, 2.0))):
        for i, strength in enumerate(strengths):
            for attr in attributes:
                bits = max(0.0, 0.7 - 0.22 * i) if attr == "shape" else 0.01
                rows.append({"defense": defense, "strength": strength, "layer": None, "attribute": attr,
                             "level": "topk_ids", "k": 5, "accuracy": 0.35 + bits / 2, "baseline_accuracy": 0.35,
                             "p_value": 1e-4 if bits > 0.1 else 0.5, "v_info_bits": bits,
                             "utility_accuracy": 0.95 - (0.03 if defense == "topk" else 0.08) * i})
    return pd.DataFrame(rows)


def make_wide_table() -> pd.DataFrame:
    """A table as wide as the demo's: seven attributes at every first-token level (the extra
    attributes and levels copy the leak table's rows under other names)."""
    base = make_table()
    extra_levels = {"vision": "residual", "projector": "residual", "image_residual": "residual", "pca": "residual",
                    "logit_lens_answers": "logit_lens_topk", "tuned_lens_answers": "tuned_lens_topk",
                    "logits": "topk_logits"}
    parts = [base]
    for level, like in extra_levels.items():
        rows = base[base["level"] == like].copy()
        rows["level"] = level
        if level in ("projector", "logits"):
            rows = rows[rows["layer"].isna() | (rows["layer"] == rows["layer"].max())].assign(layer=None)
        if level == "pca":
            rows = rows.assign(k=16)           # the bottleneck's width
        parts.append(rows)
    wide = pd.concat(parts, ignore_index=True)
    copies = [wide]
    for new, like in (("position", "shape"), ("background", "shape"), ("center_x", "size"), ("center_y", "size")):
        copies.append(wide[wide["attribute"] == like].assign(attribute=new))
    return to_frame(pd.concat(copies, ignore_index=True))
