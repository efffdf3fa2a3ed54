"""The information-flow figure and the numeric-attribute statements of the report.

:func:`flow_plot` draws, per attribute, the bits (strongest probe family) at every stage the
audit measured, in the order information travels: the vision tower's layers, the projector, the
decoder layers (at the image-token positions and at the answer position, side by side), the lens
levels at the last layer, the full logits and the top-k output. :func:`numeric_findings` says, for
every numeric attribute (box, centre, area), how well the API output and the residual stream read
it in the attribute's own units ("the top-20 logprobs give center_x to within 2.1 px").
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from logitleak.decisions import best_row, finite, num, strongest
from logitleak.levels.table import API_LEVELS, TRANSITION_LEVELS
from logitleak.report.plots import Plot, _attr_title, _attrs, _grid, color, to_data_uri
from logitleak.report.verdict import Finding
from logitleak.report.wording import fmt_interval, fmt_num, where

OUTPUT_STAGES: tuple[str, ...] = ("logit_lens_topk", "tuned_lens_topk", "logits", "topk_ids", "topk_logprobs")


def _best(rows: pd.DataFrame):
    return best_row(rows) if len(rows) else None


def _stages(best: pd.DataFrame, attr: str):
    """``[(label, level, row)]`` in flow order, and the decoder layers for the two parallel lines."""
    rows = best[best["attribute"] == attr]
    out = []
    vis = rows[rows["level"] == "vision"]
    for layer in sorted({int(num(x)) for x in vis["layer"] if finite(x)}):
        out.append((f"vision {layer}", "vision", _best(vis[vis["layer"].astype(float) == layer])))
    proj = rows[rows["level"] == "projector"]
    if len(proj):
        out.append(("projector", "projector", _best(proj)))
    dec = rows[rows["level"].isin(("residual", "image_residual"))]
    layers = sorted({int(num(x)) for x in dec["layer"] if finite(x)})
    start = len(out)
    for layer in layers:
        out.append((f"layer {layer}", "decoder", None))
    last = max(layers) if layers else None
    for level in OUTPUT_STAGES:
        lv = rows[rows["level"] == level]
        if level.endswith("lens_topk") and last is not None:
            lv = lv[lv["layer"].astype(float) == last]
        r = _best(lv)
        if r is not None:
            label = level.replace("_topk", "").replace("_", " ")
            out.append((label + (f" k={int(num(r['k']))}" if finite(r.get("k")) else ""), level, r))
    return out, start, layers


def flow_plot(ann: pd.DataFrame, relevant: bool) -> Plot | None:
    """Bits from the vision encoder through the projector and decoder layers to the lens levels and
    the top-k output, one panel per attribute (``None`` when no stage before the decoder exists)."""
    best = strongest(ann)
    attrs = [a for a in _attrs(ann, relevant)
             if set(best.loc[best["attribute"] == a, "level"]) & set(TRANSITION_LEVELS)]
    if not attrs:
        return None
    from matplotlib.figure import Figure

    nrows, ncols = _grid(len(attrs), 2)
    fig = Figure(figsize=(6.4 * ncols, 3.9 * nrows))
    for i, attr in enumerate(attrs):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        stages, start, layers = _stages(best, attr)
        rows = best[best["attribute"] == attr]
        xs = np.arange(len(stages))
        pre = [(x, s) for x, s in zip(xs, stages) if s[1] in ("vision", "projector")]
        if pre:
            ax.plot([x for x, _ in pre], [num(s[2]["v_info_bits"]) for _, s in pre], "-o", color=color("vision"),
                    ms=4, lw=1.8, label="vision tower → projector")
        for level, label, c in (("image_residual", "decoder at the image tokens", "#00838f"),
                                ("residual", "decoder at the answer position", color("residual"))):
            lv = rows[rows["level"] == level]
            pts = [(start + layers.index(int(num(r["layer"]))), num(r["v_info_bits"]))
                   for _, r in lv.iterrows() if finite(r["layer"]) and int(num(r["layer"])) in layers]
            if pts:
                pts.sort()
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", ms=4, lw=1.8, color=c, label=label)
        post = [(x, s) for x, s in zip(xs, stages) if s[1] in OUTPUT_STAGES]
        for x, (_, level, r) in post:
            y = num(r["v_info_bits"])
            lo, hi = num(r.get("v_info_ci_low")), num(r.get("v_info_ci_high"))
            err = None if not (math.isfinite(lo) and math.isfinite(hi)) else [[max(y - lo, 0)], [max(hi - y, 0)]]
            ax.errorbar([x], [y], yerr=err, fmt="s", color=color(level), ms=6, capsize=3)
        ax.set_xticks(xs)
        ax.set_xticklabels([s[0] for s in stages], rotation=60, ha="right", fontsize=7)
        ax.axhline(0, color="#333333", lw=0.6)
        ax.set_ylabel("bits (held out)")
        ax.set_title(_attr_title(attr, relevant), fontsize=10)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7, frameon=False, loc="best")
    fig.tight_layout()
    return Plot(
        "Information flow: vision encoder → projector → decoder → output",
        "Bits an attacker's probe reads (strongest probe family, held out) at every stage of one forward pass: the "
        "vision tower's layers and the projector (pooled over the image tokens), the decoder's layers at the image "
        "tokens and at the answer position, then the lens readouts at the last layer, the full logits and the "
        "top-k output (squares, with intervals). Numeric attributes use Gaussian bits, ½·log₂(Var/MSE).",
        to_data_uri(fig))


def pca_plot(ann: pd.DataFrame, relevant: bool) -> Plot | None:
    """Bits against the PCA bottleneck width d, one line per layer, the full residual stream of
    that layer as the dotted level it tends to (``None`` without ``pca`` rows)."""
    best = strongest(ann)
    rows_all = best[best["level"] == "pca"]
    attrs = _attrs(ann, relevant, rows_all)
    if not attrs:
        return None
    from matplotlib.figure import Figure

    nrows, ncols = _grid(len(attrs), 3)
    fig = Figure(figsize=(4.8 * ncols, 3.4 * nrows))
    cmap = ["#08306b", "#2171b5", "#4292c6", "#6baed6", "#9ecae1", "#c6dbef"]
    for i, attr in enumerate(attrs):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        rows = rows_all[rows_all["attribute"] == attr]
        layers = sorted({int(num(x)) for x in rows["layer"] if finite(x)})
        res = best[(best["level"] == "residual") & (best["attribute"] == attr)]
        for j, layer in enumerate(layers):
            lv = rows[rows["layer"].astype(float) == layer].sort_values("k")
            c = cmap[min(j, len(cmap) - 1)] if len(layers) <= len(cmap) else cmap[j % len(cmap)]
            ax.plot(lv["k"].astype(float), lv["v_info_bits"].astype(float), "-o", ms=3, lw=1.4, color=c,
                    label=f"layer {layer}")
            full = res[res["layer"].astype(float) == layer]
            if len(full):
                ax.axhline(num(full["v_info_bits"].iloc[0]), color=c, lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.axhline(0, color="#333333", lw=0.6)
        ax.set_xlabel("d (principal components kept)")
        ax.set_ylabel("bits (held out)")
        ax.set_title(_attr_title(attr, relevant), fontsize=10)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return Plot(
        "How much survives a d-dimensional bottleneck",
        "Bits a probe reads from the top d principal components of the residual stream (components fitted on each "
        "training fold only), one line per layer; dotted: the full residual stream at that layer.",
        to_data_uri(fig))


def numeric_findings(ann: pd.DataFrame, best: pd.DataFrame | None = None) -> list[Finding]:
    """One statement per numeric attribute: how close the best API-level reading gets, in the
    attribute's units, beside the training-mean baseline and the best residual-stream layer."""
    if ann.empty or "r2" not in ann.columns:
        return []
    best = strongest(ann) if best is None else best
    num_rows = best[pd.to_numeric(best["r2"], errors="coerce").notna()]
    out = []
    for attr in dict.fromkeys(num_rows["attribute"]):
        rows = num_rows[num_rows["attribute"] == attr]
        parts = []
        api = rows[rows["level"].isin(API_LEVELS)]
        for level in [lv for lv in ("topk_ids", "topk_logprobs") if lv in set(api["level"])]:
            lv = api[api["level"] == level]
            r = lv.loc[lv["k"].astype("Float64").fillna(0).idxmax()]
            k = f"top-{int(num(r['k']))} " if finite(r.get("k")) else ""
            what = {"topk_ids": "logprobs with ids", "topk_logprobs": "sorted logprobs (no ids)"}[level]
            state = "readable" if bool(r.get("readable")) else "not significant"
            parts.append(f"the {k}{what} give it to within {fmt_num(r['mae'])} on average (R² {fmt_num(r['r2'])}"
                         f"{fmt_interval(r.get('r2_ci_low'), r.get('r2_ci_high'))}, {state})")
        res = rows[rows["level"] == "residual"]
        r = _best(res)
        if r is not None:
            parts.append(f"the residual stream at its best ({where(r)}) to within {fmt_num(r['mae'])} "
                         f"(R² {fmt_num(r['r2'])}{fmt_interval(r.get('r2_ci_low'), r.get('r2_ci_high'))})")
        if not parts:
            continue
        base = num(rows["baseline_mae"].iloc[0]) if "baseline_mae" in rows else math.nan
        txt = (f"{attr} (numeric, in its own units): " + "; ".join(parts)
               + (f" — predicting the training mean is off by {base:.2f}." if math.isfinite(base) else "."))
        out.append(Finding("numeric", txt, attr))
    return out
