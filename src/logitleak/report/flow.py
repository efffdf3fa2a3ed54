"""The information-flow figures: bits at every stage of one forward pass, and through a PCA bottleneck.

:func:`flow_plot` draws, per attribute, the bits (strongest probe family) at every stage the
audit measured, in the order information travels: the vision tower's layers, the projector, the
decoder layers (at the image-token positions and at the answer position, side by side), the lens
levels at the last layer, the full logits and the top-k output. :func:`flow_overview` is the
report's first-screen version: every attribute in one panel, internal stages and API levels
apart. :func:`pca_plot` draws what survives a d-dimensional bottleneck.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from logitleak.decisions import Decisions, best_row, finite, num
from logitleak.levels.table import API_LEVELS, TRANSITION_LEVELS
from logitleak.report.figure import Plot, attr_title, color, grid, side_attributes, to_data_uri

OUTPUT_STAGES: tuple[str, ...] = ("logit_lens_topk", "tuned_lens_topk", "logits", "topk_ids", "topk_logprobs")


def _stages(best: pd.DataFrame, attr: str):
    """``[(label, level, row)]`` in flow order, and the decoder layers for the two parallel lines."""
    rows = best[best["attribute"] == attr]
    out = []
    vis = rows[rows["level"] == "vision"]
    for layer in sorted({int(num(x)) for x in vis["layer"] if finite(x)}):
        out.append((f"vision {layer}", "vision", best_row(vis[vis["layer"].astype(float) == layer])))
    proj = rows[rows["level"] == "projector"]
    if len(proj):
        out.append(("projector", "projector", best_row(proj)))
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
        r = best_row(lv)
        if r is not None:
            label = level.replace("_topk", "").replace("_", " ")
            out.append((label + (f" k={int(num(r['k']))}" if finite(r.get("k")) else ""), level, r))
    return out, start, layers


def flow_plot(dec: Decisions, relevant: bool) -> Plot | None:
    """Bits from the vision encoder through the projector and decoder layers to the lens levels and
    the top-k output, one panel per attribute (``None`` when no stage before the decoder exists)."""
    ann, best = dec.table, dec.best
    attrs = [a for a in side_attributes(ann, relevant)
             if set(best.loc[best["attribute"] == a, "level"]) & set(TRANSITION_LEVELS)]
    if not attrs:
        return None
    nrows, ncols = grid(len(attrs), 2)
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
        ax.set_title(attr_title(attr, relevant), fontsize=10)
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


def pca_plot(dec: Decisions, relevant: bool) -> Plot | None:
    """Bits against the PCA bottleneck width d, one line per layer, the full residual stream of
    that layer as the dotted level it tends to (``None`` without ``pca`` rows)."""
    ann, best = dec.table, dec.best
    rows_all = best[best["level"] == "pca"]
    attrs = side_attributes(ann, relevant, rows_all)
    if not attrs:
        return None
    nrows, ncols = grid(len(attrs), 3)
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
        ax.set_title(attr_title(attr, relevant), fontsize=10)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return Plot(
        "How much survives a d-dimensional bottleneck",
        "Bits a probe reads from the top d principal components of the residual stream (components fitted on each "
        "training fold only), one line per layer; dotted: the full residual stream at that layer.",
        to_data_uri(fig))


OVERVIEW_SKIP: tuple[str, ...] = ("image_residual", "pca", "logit_lens_answers", "tuned_lens_answers",
                                  "response_residual")
"""Levels the first-screen figure leaves to the matrix and the detailed figures (other positions,
bottlenecks, the lenses' answer-word readouts)."""
LAYERED: dict[str, str] = {"vision": "vision", "residual": "layer"}
"""Levels the first-screen figure draws layer by layer, with their tick label."""
ATTRIBUTE_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#e377c2",
                     "#7f7f7f", "#bcbd22")


def overview_stages(dec: Decisions) -> list[tuple[str, str, int | None]]:
    """``(tick label, level, layer)`` in flow order: the vision tower's and the decoder's layers one
    by one, every other level once (its strongest reading, as in the matrix)."""
    best = dec.best
    out: list[tuple[str, str, int | None]] = []
    for level in dict.fromkeys(best["level"]):
        if level in OVERVIEW_SKIP:
            continue
        if level in LAYERED:
            rows = best[best["level"] == level]
            out += [(f"{LAYERED[level]} {layer}", level, layer)
                    for layer in sorted({int(num(x)) for x in rows["layer"] if finite(x)})]
        else:
            out.append((level.replace("_", " "), level, None))
    return out


def _reading(dec: Decisions, attr: str, level: str, layer: int | None):
    if layer is None:
        return dec.attributes[attr].by_level.get(level)
    best = dec.best
    rows = best[(best["attribute"] == attr) & (best["level"] == level) & (best["layer"].astype("Float64") == layer)]
    return best_row(rows)


def flow_overview(dec: Decisions) -> Plot | None:
    """Every attribute in one panel: bits from the first stage measured to the API output, the API
    levels shaded (``None`` when nothing was measured)."""
    stages = overview_stages(dec)
    if not stages or not dec.attributes:
        return None
    fig = Figure(figsize=(5.8, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    xs = np.arange(len(stages))
    api = [x for x, (_, level, _) in zip(xs, stages) if level in API_LEVELS]
    if api:
        ax.axvspan(min(api) - 0.5, max(api) + 0.5, color="#fdecea", lw=0)
        ax.text(min(api) - 0.4, 1.0, "what the API returns", transform=ax.get_xaxis_transform(), fontsize=7,
                color="#c62828", va="bottom")
    for i, (attr, d) in enumerate(dec.attributes.items()):
        pts = [(x, _reading(dec, attr, level, layer)) for x, (_, level, layer) in zip(xs, stages)]
        pts = [(x, r) for x, r in pts if r is not None and finite(r["v_info_bits"])]
        if not pts:
            continue
        c = ATTRIBUTE_COLOURS[i % len(ATTRIBUTE_COLOURS)]
        x = np.array([p[0] for p in pts])
        y = np.array([num(p[1]["v_info_bits"]) for p in pts])
        readable = np.array([bool(p[1]["readable"]) for p in pts])
        ax.plot(x, y, "--" if d.task_relevant else "-", color=c, lw=1.5,
                label=f"{attr} (task)" if d.task_relevant else attr)
        ax.plot(x[readable], y[readable], "o", color=c, ms=3.5)
        ax.plot(x[~readable], y[~readable], "o", mfc="white", mec=c, ms=3.5)
    step = max(1, math.ceil(len(stages) / 24))
    ax.set_xticks(xs[::step])
    ax.set_xticklabels([s[0] for s in stages][::step], rotation=60, ha="right", fontsize=6.5)
    ax.set_xlim(-0.5, len(stages) - 0.5)
    ax.axhline(0, color="#333333", lw=0.6)
    ax.set_ylabel("bits (held out)", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return Plot(
        "Information flow: where each attribute can be read",
        "Bits the strongest probe family reads on held-out samples at each stage of the forward pass, layer by "
        "layer, then the lens readouts, the full logits and (shaded) what the API returns. Filled dots are "
        "readable (significant and above the baseline), hollow ones are not; dashed: the attribute the "
        "question asks about.",
        to_data_uri(fig))
