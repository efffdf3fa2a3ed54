"""Matplotlib figures for the report, rendered with the Agg canvas (no pyplot, no global state)
into base64 PNG data URIs. Every function takes the annotated table (``decisions.annotate``),
tolerates missing levels, columns and NaN, and returns ``None`` when it has nothing to draw."""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from logitleak.decisions import best_row, level_rank, num, strongest
from logitleak.levels.table import API_LEVELS, LEVEL_COLOURS, OUTPUT_TOPK_LEVELS

LEVEL_COLORS: dict[str, str] = LEVEL_COLOURS
TOPK_LEVELS: tuple[str, ...] = OUTPUT_TOPK_LEVELS


@dataclass(frozen=True)
class Plot:
    """One rendered figure: a title, a caption saying how to read it, and its PNG data URI."""

    title: str
    caption: str
    data_uri: str


def color(level: str) -> str:
    return LEVEL_COLORS.get(level, "#555555")


def to_data_uri(fig: Figure, dpi: int = 100) -> str:
    """Render a figure to a base64 PNG data URI."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")   # each figure is laid out by tight_layout already
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _arr(s) -> np.ndarray:
    return np.array([num(v) for v in s], dtype=float)


def _grid(n: int, ncols: int = 3) -> tuple[int, int]:
    ncols = max(1, min(ncols, n))
    return math.ceil(n / ncols), ncols


def _attr_title(attr: str, relevant: bool) -> str:
    return f"{attr} (task-relevant)" if relevant else f"{attr} (task-irrelevant)"


def _yerr(center: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray | None:
    lo_e = np.where(np.isfinite(lo) & np.isfinite(center), np.clip(center - lo, 0, None), 0.0)
    hi_e = np.where(np.isfinite(hi) & np.isfinite(center), np.clip(hi - center, 0, None), 0.0)
    if not (np.any(lo_e) or np.any(hi_e)):
        return None
    return np.vstack([lo_e, hi_e])


def _attrs(ann: pd.DataFrame, relevant: bool, within: pd.DataFrame | None = None) -> list[str]:
    """The (task-relevant or irrelevant) attributes in table order; ``within``: only those with rows there."""
    sel = ann[ann["task_relevant_attr"] == relevant]
    out = list(dict.fromkeys(sel["attribute"]))
    return out if within is None else [a for a in out if a in set(within["attribute"])]


# ---------------------------------------------------------------------------------------------


def layer_plot(ann: pd.DataFrame, relevant: bool) -> Plot | None:
    """V-information by layer, one panel per attribute, one line per layer-wise level."""
    best = strongest(ann)
    layered = best[best["layer"].notna()]
    attrs = _attrs(ann, relevant, layered)
    if not attrs:
        return None
    nrows, ncols = _grid(len(attrs))
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
            x = _arr(per_layer["layer"])
            y = _arr(per_layer["v_info_bits"])
            lo, hi = _arr(per_layer["v_info_ci_low"]), _arr(per_layer["v_info_ci_high"])
            c = color(level)
            (line,) = ax.plot(x, y, "-", color=c, lw=1.8, label=level)
            handles[level] = line
            band = np.isfinite(lo) & np.isfinite(hi)
            if band.any():
                ax.fill_between(x, np.where(band, lo, np.nan), np.where(band, hi, np.nan), color=c, alpha=0.15, lw=0)
            readable = per_layer["readable"].to_numpy(dtype=bool)
            ax.plot(x[readable], y[readable], "o", color=c, ms=5)
            ax.plot(x[~readable], y[~readable], "o", mfc="white", mec=c, ms=5)
        api = best[(best["attribute"] == attr) & best["level"].isin(API_LEVELS)]
        top = best_row(api)
        title = _attr_title(attr, relevant)
        if top is not None and math.isfinite(num(top["v_info_bits"])):
            kk = f" k={int(num(top['k']))}" if math.isfinite(num(top["k"])) else ""
            h = ax.axhline(num(top["v_info_bits"]), color="#c62828", ls="--", lw=1.2)
            handles["best API output"] = h
            title += f"\nbest API output: {top['level']}{kk}, {num(top['v_info_bits']):.2f} bits"
        ent = _arr(ann.loc[ann["attribute"] == attr, "entropy_bits"])
        ent = ent[np.isfinite(ent)]
        if ent.size:
            h = ax.axhline(float(np.median(ent)), color="#888888", ls=":", lw=1.2, label="H(Y): all there is")
            handles["H(Y): all there is"] = h
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("layer")
        ax.set_ylabel("V-information (bits)")
        ax.grid(alpha=0.3)
    fig.legend(list(handles.values()), list(handles.keys()), loc="lower center", ncol=min(4, len(handles)),
               fontsize=8, frameon=False, bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return Plot(
        "Information by layer",
        "V-information (bits) the strongest probe family reads at each layer, with its interval as a band; "
        "filled dots are readable (significant and above baseline), hollow ones are not. Lens levels read "
        "through top-k show the best k. Red dashed: the most any API-level output reaches; grey dotted: "
        "H(Y), the attribute's entropy.",
        to_data_uri(fig))


def level_plot(ann: pd.DataFrame, relevant: bool) -> Plot | None:
    """Best row per level and attribute: bits and accuracy above baseline, with intervals."""
    best = strongest(ann)
    attrs = _attrs(ann, relevant, best)
    if not attrs:
        return None
    levels = sorted(set(best[best["attribute"].isin(attrs)]["level"]), key=level_rank)
    table = {}
    for attr in attrs:
        for level in levels:
            r = best_row(best[(best["attribute"] == attr) & (best["level"] == level)])
            if r is not None:
                table[(attr, level)] = r
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
            yerr = _yerr(y, ylo, yhi)
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
    return Plot(
        "Level by level",
        "For each attribute and level, the strongest row (best layer, k and probe family). Top: bits with "
        "their interval; bottom: accuracy minus the majority baseline with the accuracy interval. Hatched "
        "bars are not readable (not significant, or the interval reaches the baseline).",
        to_data_uri(fig))


def k_plot(ann: pd.DataFrame, relevant: bool) -> Plot | None:
    """Accuracy and bits against k for the final top-k levels, one row per attribute."""
    best = strongest(ann)
    sel = best[best["level"].isin(TOPK_LEVELS) & best["layer"].isna()]
    attrs = _attrs(ann, relevant, sel)
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
            kx = _arr(lv["k"])
            kx = np.where(np.isfinite(kx), kx, 1.0)  # top1_prob is a k=1 reading
            order = np.argsort(kx, kind="stable")
            lv, kx = lv.iloc[order], kx[order]
            ks_all += list(kx)
            c = color(level)
            readable = lv["readable"].to_numpy(dtype=bool)
            for ax, y, lo, hi in ((ax_a, _arr(lv["accuracy"]), _arr(lv["ci_low"]), _arr(lv["ci_high"])),
                                  (ax_b, _arr(lv["v_info_bits"]), _arr(lv["v_info_ci_low"]), _arr(lv["v_info_ci_high"]))):
                style = "-" if len(kx) > 1 else ""
                (line,) = ax.plot(kx, y, style, color=c, lw=1.8, label=level)
                handles[level] = line
                band = np.isfinite(lo) & np.isfinite(hi)
                if band.any() and len(kx) > 1:
                    ax.fill_between(kx, np.where(band, lo, np.nan), np.where(band, hi, np.nan), color=c, alpha=0.15, lw=0)
                elif band.any():
                    ax.errorbar(kx, y, yerr=_yerr(y, lo, hi), fmt="none", ecolor=c, capsize=3)
                ax.plot(kx[readable], y[readable], "o" if level != "top1_prob" else "D", color=c, ms=5)
                ax.plot(kx[~readable], y[~readable], "o" if level != "top1_prob" else "D", mfc="white", mec=c, ms=5)
        base = _arr(rows["baseline_accuracy"])
        base = base[np.isfinite(base)]
        if base.size:
            h = ax_a.axhline(float(np.median(base)), color="#333333", ls="--", lw=1.1, label="majority baseline")
            handles["majority baseline"] = h
        ent = _arr(rows["entropy_bits"])
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
            ax.set_title(_attr_title(attr, relevant) + (" — accuracy" if ax is ax_a else " — bits"), fontsize=10)
    fig.legend(list(handles.values()), list(handles.keys()), loc="lower center", ncol=min(6, len(handles)),
               fontsize=8, frameon=False, bbox_to_anchor=(0.5, -0.01))
    fig.tight_layout(rect=(0, 0.05 if len(attrs) > 1 else 0.1, 1, 1))
    return Plot(
        "What the API returns, by k",
        "Accuracy (left, with interval and the majority baseline) and V-information (right, with interval) "
        "against the number of top-k entries returned, for the strongest probe family at each k. Filled "
        "markers are readable; the top-1 probability (diamond) is shown at k=1.",
        to_data_uri(fig))


def tradeoff_readings(tradeoff: pd.DataFrame) -> pd.DataFrame:
    """The rows the trade-off plot draws. A ``defend`` table (``level`` and ``defense_label``
    columns): each defence's strongest API-level reading per task-irrelevant attribute, as the
    decisions pick it, never an internal level such as the erased residual stream. Any other
    table: as it is."""
    if {"level", "defense_label"} <= set(tradeoff.columns):
        from logitleak.decisions import decide_defences, strongest_rows

        best = strongest_rows(decide_defences(tradeoff))
        if len(best):
            return best
    return tradeoff


def tradeoff_plot(tradeoff: pd.DataFrame, relevance: dict[str, bool]) -> Plot | None:
    """Leakage (bits, or accuracy above baseline) against answer quality, one line per defence."""
    if tradeoff is None or len(tradeoff) == 0:
        return None
    df = tradeoff_readings(tradeoff).copy()
    if "utility_accuracy" not in df.columns or "attribute" not in df.columns:
        return None
    for col in ("v_info_bits", "accuracy", "baseline_accuracy", "utility_accuracy"):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    numeric_strength = True
    if "strength" in df.columns:
        coerced = pd.to_numeric(df["strength"], errors="coerce")
        numeric_strength = not (coerced.isna() & df["strength"].notna()).any()
        df["strength"] = coerced if numeric_strength else df["strength"].astype(str)
    if "defense" not in df.columns:
        df["defense"] = "defence"
    if "strength" not in df.columns:
        df["strength"] = np.nan
    if "v_info_bits" in df.columns and df["v_info_bits"].notna().any():
        df["leak"] = df["v_info_bits"]
        ylabel = "leakage: V-information (bits)"
    elif {"accuracy", "baseline_accuracy"} <= set(df.columns):
        df["leak"] = df["accuracy"] - df["baseline_accuracy"]
        ylabel = "leakage: accuracy − baseline"
    else:
        return None
    df["attribute"] = df["attribute"].astype(str)
    attrs = [a for a in dict.fromkeys(df["attribute"]) if not relevance.get(a, False)] or list(dict.fromkeys(df["attribute"]))
    nrows, ncols = _grid(len(attrs), 2)
    fig = Figure(figsize=(5.6 * ncols, 4.0 * nrows))
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#e377c2"]
    handles = {}
    for i, attr in enumerate(attrs):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        sub = df[df["attribute"] == attr]
        for j, (defense, g) in enumerate(sub.groupby(sub["defense"].astype(str), sort=False)):
            agg = g.groupby("strength", dropna=False, sort=numeric_strength).agg(
                leak=("leak", "max"), utility=("utility_accuracy", "mean"))
            c = palette[j % len(palette)]
            (line,) = ax.plot(agg["utility"], agg["leak"], "-o", color=c, lw=1.6, ms=5, label=str(defense))
            handles[str(defense)] = line
            for strength, r in agg.iterrows():
                if math.isfinite(num(r["utility"])) and math.isfinite(num(r["leak"])):
                    ax.annotate(f"{strength:g}" if isinstance(strength, (int, float)) and math.isfinite(strength) else str(strength),
                                (r["utility"], r["leak"]), textcoords="offset points", xytext=(4, 4), fontsize=7, color=c)
        ax.axhline(0, color="#333333", lw=0.6)
        ax.set_xlabel("utility: answer accuracy")
        ax.set_ylabel(ylabel)
        ax.set_title(_attr_title(attr, relevance.get(attr, False)), fontsize=10)
        ax.grid(alpha=0.3)
    fig.legend(list(handles.values()), list(handles.keys()), loc="lower center", ncol=min(6, len(handles)),
               fontsize=8, frameon=False, bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return Plot(
        "Defences: leakage against answer quality",
        "Each line is one defence over its strengths (labels); the best defence sits bottom-right: little "
        "leakage, answers still right. Leakage is the strongest API-level reading at that strength (the "
        "readable one with the most bits, as the verdict picks it).",
        to_data_uri(fig))


def section_plots(ann: pd.DataFrame, relevant: bool) -> list[Plot]:
    """The plots for one side (task-relevant or task-irrelevant attributes)."""
    from logitleak.report.flow import flow_plot, pca_plot

    out = []
    for fn in (flow_plot, layer_plot, level_plot, k_plot, pca_plot):
        p = fn(ann, relevant)
        if p is not None:
            out.append(p)
    return out


__all__ = ["Plot", "LEVEL_COLORS", "layer_plot", "level_plot", "k_plot", "tradeoff_plot",
           "section_plots", "to_data_uri"]
