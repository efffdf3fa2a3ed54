"""The comparison report (compare.html) and the comparison's files beside it.

What changed comes first, then each attribute's call per run, a figure of the strongest API
readings side by side, and every shared reading with its difference and interval.

One self-contained HTML file, like the audit report; beside it ``comparison.{csv,json}`` (the
readings) and ``compare.json`` (the calls and the changes).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from logitleak.integrity import atomic_write, write_json
from logitleak.report.compare import Comparison, change_sentences, comparison_record
from logitleak.report.figure import Plot, error_bars, to_data_uri, values
from logitleak.report.html import CSP, CSS
from logitleak.report.markup import esc, figures
from logitleak.report.wording import CALL_WORDS, fmt_int, fmt_interval, fmt_num

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#e377c2", "#7f7f7f")


def api_plot(cmp: Comparison) -> Plot | None:
    """Grouped bars: per attribute, each run's strongest API-level reading as its own decisions
    pick it (bits with interval; hatched when not readable)."""
    attrs = list(cmp.calls["attribute"])
    if not attrs:
        return None
    fig = Figure(figsize=(min(13.0, 2.5 + 0.45 * len(attrs) * len(cmp.runs)), 3.8))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(cmp.runs)
    xs = np.arange(len(attrs))
    for j, run in enumerate(cmp.runs):
        tops = [run.decisions.attributes[a].strongest for a in attrs]
        y, lo, hi = (values([np.nan if r is None else r[c] for r in tops])
                     for c in ("v_info_bits", "v_info_ci_low", "v_info_ci_high"))
        readable = np.array([r is not None and bool(r["readable"]) for r in tops])
        pos = xs - 0.4 + width * (j + 0.5)
        c = PALETTE[j % len(PALETTE)]
        ok = np.isfinite(y)
        if not ok.any():
            continue
        yerr = error_bars(y, lo, hi)
        ax.bar(pos[ok], y[ok], width=width * 0.92, color=c, label=run.name, capsize=2, ecolor="#333333",
               yerr=None if yerr is None else yerr[:, ok], error_kw={"lw": 0.8})
        faint = ok & ~readable
        if faint.any():
            ax.bar(pos[faint], y[faint], width=width * 0.92, color="white", alpha=0.6, hatch="///", edgecolor=c, lw=0)
    ax.axhline(0, color="#333333", lw=0.8)
    ax.set_xticks(xs)
    ax.set_xticklabels(attrs)
    ax.set_ylabel("bits, strongest API reading")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return Plot("The strongest API reading of each attribute, run by run",
                "Bits (with interval) of the reading each run's verdict rests on: its strongest API-level reading, "
                "readable ones first. Hatched bars are not readable in that run.", to_data_uri(fig))


def _calls_table(cmp: Comparison) -> str:
    names = [r.name for r in cmp.runs]
    changed = {(c["attribute"], c["run"]) for c in cmp.changes}
    head = "<tr><th>attribute</th>" + "".join(f"<th>{esc(n)}</th>" for n in names) + "</tr>"
    body = []
    for _, row in cmp.calls.iterrows():
        cells = "".join(
            f'<td class="call-{esc(row[n])}{" changed" if (row["attribute"], n) in changed else ""}">'
            f"{esc(CALL_WORDS[row[n]])}</td>" for n in names)
        body.append(f"<tr><th>{esc(row['attribute'])}</th>{cells}</tr>")
    return f'<div class="scroll"><table class="calls"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table></div>'


def _score(r, prefix: str = "") -> str:
    acc, base, r2 = r[f"{prefix}accuracy"], r[f"{prefix}baseline_accuracy"], r[f"{prefix}r2"]
    return f"{fmt_num(acc)} vs {fmt_num(base)}" if np.isfinite(acc) else f"R² {fmt_num(r2)}"


def _call(r, prefix: str = "") -> str:
    return "LEAK" if r[f"{prefix}leak"] else ("readable" if r[f"{prefix}readable"] else "not readable")


def _where(r, prefix: str = "") -> str:
    parts = [f"layer {fmt_int(r[prefix + 'layer'])}" if fmt_int(r[prefix + "layer"]) else "",
             f"k={fmt_int(r[prefix + 'k'])}" if fmt_int(r[prefix + "k"]) else "", str(r[prefix + "probe"])]
    return ", ".join(p for p in parts if p)


def _readings_table(cmp: Comparison) -> str:
    if cmp.readings.empty:
        return "<p>No shared readings.</p>"
    base = esc(cmp.baseline.name)
    head = (f"<tr><th>run</th><th>attribute</th><th>level</th><th>{base}: where</th><th>bits [CI]</th>"
            "<th>score</th><th>call</th><th>this run: where</th><th>bits [CI]</th><th>score</th><th>call</th>"
            "<th>Δ bits [95% CI]</th></tr>")
    body = []
    for _, r in cmp.readings.iterrows():
        delta = (f"{r['delta_bits']:+.2f}{fmt_interval(r['delta_ci_low'], r['delta_ci_high'])}"
                 if np.isfinite(r["delta_bits"]) else "n/a")
        cls = ' class="changed"' if r["readable_changed"] else ""
        cells = [r["run"], r["attribute"], r["level"], _where(r, "base_"),
                 fmt_num(r["base_bits"]) + fmt_interval(r["base_bits_ci_low"], r["base_bits_ci_high"]),
                 _score(r, "base_"), _call(r, "base_"), _where(r),
                 fmt_num(r["bits"]) + fmt_interval(r["bits_ci_low"], r["bits_ci_high"]), _score(r), _call(r), delta]
        body.append(f"<tr{cls}>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    return f'<div class="scroll"><table class="results"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table></div>'


COMPARE_CSS = """
td.changed, tr.changed td { outline: 2px solid #f9a825; outline-offset: -2px; background: #fff8e1; }
td.call-leak { color: #c62828; font-weight: 700; } td.call-no_leak { color: #2e7d32; }
td.call-readable { color: #1f4e79; } td.call-not_readable { color: #b26a00; }
ul.changes li { margin: 4px 0; font-weight: 600; }
"""


def render_compare(cmp: Comparison) -> str:
    """The comparison as one HTML string."""
    sentences = change_sentences(cmp)
    runs = "".join(f"<li><strong>{esc(r.name)}</strong> ({esc(r.kind)}, {esc(r.path)}): {esc(r.decisions.status)}</li>"
                   for r in cmp.runs)
    changes = ("<ul class=\"changes\">" + "".join(f"<li>{esc(s)}</li>" for s in sentences) + "</ul>" if sentences else
               f"<p>No decision changed: every attribute gets the same call in every run as in {esc(cmp.baseline.name)}.</p>")
    parts = ["<h1>logitleak compare</h1>", f"<ul>{runs}</ul>",
             f'<h2 id="changes">Decisions that changed (against {esc(cmp.baseline.name)})</h2>', changes,
             '<h2 id="calls">Each attribute\'s call, run by run</h2>', _calls_table(cmp)]
    if cmp.left_out:
        parts.append(f"<p class=\"small\">Not in every run, so left out: {esc(', '.join(cmp.left_out))}.</p>")
    plot = api_plot(cmp)
    if plot is not None:
        parts.append(figures([plot]))
    parts += ['<h2 id="readings">Every shared reading</h2>',
              f'<p class="small">Each later run against {esc(cmp.baseline.name)}, on the level, layer and k cells '
              "both measured: each one's strongest reading of each attribute at each level there. Δ bits: this run "
              "minus the first, with a 95% interval from the two readings' own intervals taken as independent normal "
              "ones (conservative when the runs share samples). Outlined: readable in one run and not in the other."
              "</p>", _readings_table(cmp)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f"<title>logitleak compare — {esc(', '.join(r.name for r in cmp.runs))}</title>"
            f"<style>{CSS}{COMPARE_CSS}</style></head>\n<body>\n" + "\n".join(parts) + "\n</body></html>\n")


def write_comparison(cmp: Comparison, out_dir: str | Path) -> Path:
    """Write ``compare.html``, ``comparison.{csv,json}`` and ``compare.json`` into ``out_dir``
    atomically; return the report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = render_compare(cmp)
    path = out / "compare.html"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    atomic_write(out / "comparison.csv", lambda tmp: cmp.readings.to_csv(tmp, index=False))
    write_json(out / "comparison.json", json.loads(cmp.readings.to_json(orient="records")))  # NaN -> null
    write_json(out / "compare.json", comparison_record(cmp))
    return path
