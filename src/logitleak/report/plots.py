"""The per-side figures of the report: information by layer, level by level, and by k.

Every function takes the run's :class:`~logitleak.decisions.Decisions` (its annotated table and
strongest-family rows, computed once) and which side to draw (task-relevant or not), tolerates
missing levels, columns and NaN, and returns ``None`` when it has nothing to draw.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from logitleak.decisions import Decisions, best_row, level_rank, num
from logitleak.levels.table import OUTPUT_TOPK_LEVELS
from logitleak.report.figure import (
    Plot,
    attr_title,
    color,
    error_bars,
    grid,
    label_axes,
    legend_below,
    side_attributes,
    to_data_uri,
    values,
)


LAYERS_CAPTION = (
    "V-information (bits) the strongest probe family reads at each layer, with its interval as a band; filled dots "
    "are readable (significant and above baseline), hollow ones are not. Lens levels read through top-k show the best "
    "k. Red dashed: the strongest API-level reading, as the verdict picks it; grey dotted: H(Y), the attribute's entropy.")
"""The caption of :func:`layer_plot`."""
LEVELS_CAPTION = (
    "For each attribute and level, the strongest reading (best layer, k and probe family, readable ones first, as in "
    "the verdict). Top: bits with their interval; bottom: accuracy minus the majority baseline with the accuracy "
    "interval. Hatched bars are not readable (not significant, or the interval reaches the baseline).")
"""The caption of :func:`level_plot`."""


def layer_plot(dec: Decisions, relevant: bool) -> Plot | None:
    """V-information by layer, one panel per attribute, one line per layer-wise level."""
    ann, best = dec.table, dec.best
    layered = best[best["layer"].notna()]
    attrs = side_attributes(ann, relevant, layered)
    if not attrs:
        return None
    nrows, ncols = grid(len(attrs))
    fig = Figure(figsize=(5.2 * ncols, 3.6 * nrows))
    handles = {}
    for i, attr in enumerate(attrs):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        rows = layered[layered["attribute"] == attr]
        for level in sorted(set(rows["level"]), key=level_rank):
            lv = rows[rows["level"] == level]
            # per layer: the strongest row over k and probe family
            per_layer = [best_row(g) for _, g in lv.groupby(lv["layer"].astype(int), sort=True)]
            per_layer = pd.DataFrame(per_layer)
            x = values(per_layer["layer"])
            y = values(per_layer["v_info_bits"])
            lo, hi = values(per_layer["v_info_ci_low"]), values(per_layer["v_info_ci_high"])
            c = color(level)
            (line,) = ax.plot(x, y, "-", color=c, lw=1.8, label=level)
            handles[level] = line
            band = np.isfinite(lo) & np.isfinite(hi)
            if band.any():
                ax.fill_between(x, np.where(band, lo, np.nan), np.where(band, hi, np.nan), color=c, alpha=0.15, lw=0)
            readable = per_layer["readable"].to_numpy(dtype=bool)
            ax.plot(x[readable], y[readable], "o", color=c, ms=5)
            ax.plot(x[~readable], y[~readable], "o", mfc="white", mec=c, ms=5)
        top = dec.attributes[attr].strongest
        title = attr_title(attr, relevant)
        if top is not None and math.isfinite(num(top["v_info_bits"])):
            kk = f" k={int(num(top['k']))}" if math.isfinite(num(top["k"])) else ""
            h = ax.axhline(num(top["v_info_bits"]), color="#c62828", ls="--", lw=1.2)
            handles["strongest API reading"] = h
            title += f"\nstrongest API reading: {top['level']}{kk}, {num(top['v_info_bits']):.2f} bits"
        ent = values(ann.loc[ann["attribute"] == attr, "entropy_bits"])
        ent = ent[np.isfinite(ent)]
        if ent.size:
            h = ax.axhline(float(np.median(ent)), color="#888888", ls=":", lw=1.2, label="H(Y): all there is")
            handles["H(Y): all there is"] = h
        label_axes(ax, title, "layer", "V-information (bits)")
    legend_below(fig, handles, 4, 0.06)
    return Plot("Information by layer", LAYERS_CAPTION, to_data_uri(fig))


def level_plot(dec: Decisions, relevant: bool) -> Plot | None:
    """Best row per level and attribute: bits and accuracy above baseline, with intervals."""
    ann, best = dec.table, dec.best
    attrs = side_attributes(ann, relevant, best)
    if not attrs:
        return None
    levels = sorted(set(best[best["attribute"].isin(attrs)]["level"]), key=level_rank)
    table = {(attr, level): r for attr in attrs for level, r in dec.attributes[attr].by_level.items()}
    fig = Figure(figsize=(min(13.0, max(7.0, 1.0 + 0.45 * len(attrs) * len(levels))), 6.4))
    ax_bits = fig.add_subplot(2, 1, 1)
    ax_acc = fig.add_subplot(2, 1, 2, sharex=ax_bits)
    width = 0.8 / max(1, len(levels))
    xs = np.arange(len(attrs))
    for j, level in enumerate(levels):
        rows = [table.get((a, level)) for a in attrs]
        pos = xs - 0.4 + width * (j + 0.5)

        def col(name):
            return np.array([num(r[name]) if r is not None else np.nan for r in rows])

        bits, blo, bhi = col("v_info_bits"), col("v_info_ci_low"), col("v_info_ci_high")
        acc, base = col("accuracy"), col("baseline_accuracy")
        lo, hi = col("ci_low"), col("ci_high")
        gain = acc - base
        readable = np.array([bool(r["readable"]) if r is not None else False for r in rows])
        for ax, y, ylo, yhi in ((ax_bits, bits, blo, bhi), (ax_acc, gain, lo - base, hi - base)):
            ok = np.isfinite(y)
            if not ok.any():
                continue
            yerr = error_bars(y, ylo, yhi)
            ax.bar(pos[ok], y[ok], width=width * 0.92, color=color(level), label=level if ax is ax_bits else None,
                   yerr=None if yerr is None else yerr[:, ok], capsize=2, ecolor="#333333",
                   error_kw={"lw": 0.8})
            faint = ok & ~readable
            if faint.any():  # not readable: hatched
                ax.bar(pos[faint], y[faint], width=width * 0.92, color="white", alpha=0.6, hatch="///",
                       edgecolor=color(level), lw=0)
    for ax in (ax_bits, ax_acc):
        ax.axhline(0, color="#333333", lw=0.8)
        ax.grid(axis="y", alpha=0.3)
    ax_bits.set_ylabel("V-information (bits)")
    ax_acc.set_ylabel("accuracy − baseline")
    ax_acc.set_xticks(xs)
    ax_acc.set_xticklabels(attrs)
    ax_bits.legend(fontsize=8, ncol=min(5, len(levels)), frameon=False, loc="upper left", bbox_to_anchor=(0, 1.25))
    fig.tight_layout()
    return Plot("Level by level", LEVELS_CAPTION, to_data_uri(fig))


def k_plot(dec: Decisions, relevant: bool) -> Plot | None:
    """Accuracy and bits against k for the final top-k levels, one row per attribute."""
    ann, best = dec.table, dec.best
    sel = best[best["level"].isin(OUTPUT_TOPK_LEVELS) & best["layer"].isna()]
    attrs = side_attributes(ann, relevant, sel)
    if not attrs:
        return None
    fig = Figure(figsize=(11, 3.3 * len(attrs)))
    handles = {}
    for i, attr in enumerate(attrs):
        rows = sel[sel["attribute"] == attr]
        ax_a = fig.add_subplot(len(attrs), 2, 2 * i + 1)
        ax_b = fig.add_subplot(len(attrs), 2, 2 * i + 2)
        ks_all = []
        for level in sorted(set(rows["level"]), key=level_rank):
            lv = rows[rows["level"] == level].copy()
            kx = values(lv["k"])
            kx = np.where(np.isfinite(kx), kx, 1.0)  # top1_prob is a k=1 reading
            order = np.argsort(kx, kind="stable")
            lv, kx = lv.iloc[order], kx[order]
            ks_all += list(kx)
            c = color(level)
            readable = lv["readable"].to_numpy(dtype=bool)
            for ax, y, lo, hi in ((ax_a, values(lv["accuracy"]), values(lv["ci_low"]), values(lv["ci_high"])),
                                  (ax_b, values(lv["v_info_bits"]), values(lv["v_info_ci_low"]), values(lv["v_info_ci_high"]))):
                style = "-" if len(kx) > 1 else ""
                (line,) = ax.plot(kx, y, style, color=c, lw=1.8, label=level)
                handles[level] = line
                band = np.isfinite(lo) & np.isfinite(hi)
                if band.any() and len(kx) > 1:
                    ax.fill_between(kx, np.where(band, lo, np.nan), np.where(band, hi, np.nan), color=c, alpha=0.15, lw=0)
                elif band.any():
                    ax.errorbar(kx, y, yerr=error_bars(y, lo, hi), fmt="none", ecolor=c, capsize=3)
                ax.plot(kx[readable], y[readable], "o" if level != "top1_prob" else "D", color=c, ms=5)
                ax.plot(kx[~readable], y[~readable], "o" if level != "top1_prob" else "D", mfc="white", mec=c, ms=5)
        base = values(rows["baseline_accuracy"])
        base = base[np.isfinite(base)]
        if base.size:
            h = ax_a.axhline(float(np.median(base)), color="#333333", ls="--", lw=1.1, label="majority baseline")
            handles["majority baseline"] = h
        ent = values(rows["entropy_bits"])
        ent = ent[np.isfinite(ent)]
        if ent.size:
            h = ax_b.axhline(float(np.median(ent)), color="#888888", ls=":", lw=1.2, label="H(Y)")
            handles["H(Y)"] = h
        ax_b.axhline(0, color="#333333", lw=0.6)
        ks = sorted(set(k for k in ks_all if math.isfinite(k)))
        for ax, ylabel in ((ax_a, "accuracy"), (ax_b, "V-information (bits)")):
            if ks and max(ks) / max(min(ks), 1) > 8:
                ax.set_xscale("log", base=2)
            if ks:
                ax.set_xticks(ks)
                ax.set_xticklabels([str(int(k)) for k in ks])
                ax.minorticks_off()
            ax.set_xlabel("k (top-k entries returned)")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.set_title(attr_title(attr, relevant) + (" — accuracy" if ax is ax_a else " — bits"), fontsize=10)
    legend_below(fig, handles, 6, 0.05 if len(attrs) > 1 else 0.1)
    return Plot(
        "What the API returns, by k",
        "Accuracy (left, with interval and the majority baseline) and V-information (right, with interval) "
        "against the number of top-k entries returned, for the strongest probe family at each k. Filled "
        "markers are readable; the top-1 probability (diamond) is shown at k=1.",
        to_data_uri(fig))
