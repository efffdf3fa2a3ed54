"""The audit report: one self-contained HTML file (inline CSS, plots as base64 PNG data URIs,
no scripts, no external resources; a Content-Security-Policy forbids any network load)."""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from logitleak.decisions import Decisions, decide, finite, num, relevance
from logitleak.integrity import atomic_write
from logitleak.report import plots as _plots
from logitleak.report.verdict import Finding, verdict
from logitleak.report.wording import fmt_acc, fmt_interval, fmt_num, fmt_p

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1d1d1f;
       max-width: 1180px; margin: 0 auto; padding: 24px 28px 60px; line-height: 1.45; background: #fff; }
h1 { font-size: 26px; margin: 0 0 6px; }
h2 { font-size: 20px; margin: 34px 0 10px; border-bottom: 2px solid #e5e5ea; padding-bottom: 4px; }
h3 { font-size: 16px; margin: 22px 0 6px; }
.meta { display: grid; grid-template-columns: max-content 1fr max-content 1fr; gap: 2px 14px;
        font-size: 14px; margin: 8px 0 14px; }
.meta dt { color: #6e6e73; } .meta dd { margin: 0; font-weight: 600; }
.headline { font-size: 18px; font-weight: 600; padding: 14px 18px; border-radius: 8px; margin: 10px 0; }
.headline.leak { background: #fdecea; border-left: 6px solid #c62828; }
.headline.clean { background: #e8f5e9; border-left: 6px solid #2e7d32; }
.headline.unknown { background: #f2f2f7; border-left: 6px solid #8e8e93; }
ul.findings { padding-left: 20px; } ul.findings li { margin: 8px 0; }
li.leak { color: #8b1a1a; } li.leak ul { margin-top: 2px; } li.leak li { margin: 3px 0; } li.method { color: #6e6e73; font-size: 13px; list-style: none; margin-left: -20px; }
.problems { background: #fff8e1; border-left: 6px solid #f9a825; padding: 10px 16px; border-radius: 6px; }
.problems ul { margin: 4px 0; }
figure { margin: 12px 0 26px; } figure img { max-width: 100%; height: auto; border: 1px solid #e5e5ea; }
figcaption { font-size: 13px; color: #48484a; margin-top: 4px; }
.section-note { color: #48484a; font-size: 14px; }
table { border-collapse: collapse; font-size: 12.5px; width: 100%; }
th, td { border-bottom: 1px solid #e5e5ea; padding: 3px 7px; text-align: left; vertical-align: top;
         white-space: nowrap; }
th { background: #f2f2f7; position: sticky; top: 0; }
td.num { font-variant-numeric: tabular-nums; }
tr.leak td { background: #fdecea; } tr.readable td { background: #f3f9f3; }
tr.relevant td.attr::after { content: " \\2605"; color: #b8860b; }
.badge { display: inline-block; padding: 0 6px; border-radius: 4px; font-size: 11px; font-weight: 700; }
.badge.leak { background: #c62828; color: #fff; } .badge.readable { background: #2e7d32; color: #fff; }
.badge.relevant { background: #b8860b; color: #fff; }
.scroll { overflow-x: auto; max-height: 900px; overflow-y: auto; border: 1px solid #e5e5ea; }
.small { font-size: 12.5px; color: #48484a; }
pre.recommendation { white-space: pre-wrap; background: #f2f2f7; padding: 10px 14px; border-radius: 6px;
                     font-family: inherit; font-size: 14px; }
table.kv { width: auto; } table.kv td, table.kv th { white-space: normal; }
"""


def _e(v) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _get(info: Mapping, *names, default=None):
    for n in names:
        if n in info and info[n] is not None:
            return info[n]
    return default


def _plain(v) -> str:
    """A run_info value as text: numbers trimmed, containers as compact JSON."""
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else "n/a"
    if isinstance(v, (dict, list, tuple)):
        try:
            return json.dumps(v, default=str, ensure_ascii=False)
        except (TypeError, ValueError):
            return str(v)
    return str(v)


def _kv_table(d: Mapping, unit: str = "") -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_plain(v))}{_e(unit) if isinstance(v, (int, float)) else ''}</td></tr>"
                   for k, v in d.items())
    return f'<table class="kv">{rows}</table>'


# ---------------------------------------------------------------------------------------------


def _header(results: pd.DataFrame, run_info: Mapping) -> str:
    task = _get(run_info, "task_attribute", "task attribute", "task")
    if task is None:
        rel = [a for a, r in relevance(results).items() if r] if len(results) else []
        task = ", ".join(rel) if rel else None
    n = _get(run_info, "n_samples", "n")
    if n is None and len(results) and results["n"].notna().any():
        n = int(pd.to_numeric(results["n"], errors="coerce").max())
    date = _get(run_info, "date", "started", "timestamp") or _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    items = [("Model", _get(run_info, "model")), ("Probe set", _get(run_info, "data", "probe_set", "dataset")),
             ("Task attribute", task), ("Seed", _get(run_info, "seed")), ("Samples", n), ("Date", date)]
    meta = "".join(f"<dt>{_e(k)}</dt><dd>{_e('—' if v is None else _plain(v))}</dd>" for k, v in items)
    return f"<h1>logitleak audit: what do the logits know?</h1>\n<dl class=\"meta\">{meta}</dl>"


HEADLINE_CLASS: dict[str, str] = {"leak": "leak", "clean": "clean"}
"""The headline box's CSS class by the decisions' ``status`` (``unknown`` otherwise)."""


def _verdict_html(findings: list[Finding], decisions: Decisions) -> str:
    head = next((f for f in findings if f.kind == "headline"), None)
    cls = HEADLINE_CLASS.get(decisions.status, "unknown")
    out = ['<h2 id="verdict">Verdict</h2>']
    if head is not None:
        out.append(f'<div class="headline {cls}">{_e(head.text)}</div>')
    items = []
    for f in findings:
        if f is head:
            continue
        parts = f.details.get("parts") if isinstance(f.details, dict) else None
        if parts:
            sub = "".join(f"<li>{_e(p)}</li>" for p in parts)
            items.append(f'<li class="{_e(f.kind)}"><strong>{_e(f.details.get("intro", ""))}</strong><ul>{sub}</ul></li>')
        else:
            items.append(f'<li class="{_e(f.kind)}">{_e(f.text)}</li>')
    out.append(f'<ul class="findings">{"".join(items)}</ul>')
    return "\n".join(out)


def _plots_html(plots: list[_plots.Plot]) -> str:
    out = []
    for p in plots:
        out.append(f'<figure><h3>{_e(p.title)}</h3><img src="{p.data_uri}" alt="{_e(p.title)}">'
                   f"<figcaption>{_e(p.caption)}</figcaption></figure>")
    return "\n".join(out)


def _status(row) -> tuple[str, str]:
    if bool(row["leak"]):
        return "leak", '<span class="badge leak">LEAK</span>'
    if bool(row["readable"]):
        return "readable", '<span class="badge readable">readable</span>'
    return "", ""


def _int(v) -> str:
    return str(int(num(v))) if finite(v) else ""


def _test(row) -> str:
    """' (heldout)' / ' (permutation)': which test gave the row's p-value (column ``p_test``)."""
    t = row.get("p_test")
    return f" ({t})" if isinstance(t, str) and t else ""


def results_table(ann: pd.DataFrame) -> str:
    """Every row: score beside its interval and baseline, p-values (Holm at the API levels)."""
    if ann.empty:
        return "<p>No rows.</p>"
    df = ann.assign(_lk=ann["layer"].astype("Float64").fillna(-1.0), _kk=ann["k"].astype("Float64").fillna(-1.0))
    df = df.sort_values(["_rank", "attribute", "_lk", "_kk", "probe"], kind="stable")
    head = ("<tr><th>level</th><th>layer</th><th>k</th><th>attribute</th><th>probe</th><th>n</th>"
            "<th>accuracy [CI] vs baseline</th><th>balanced acc.</th><th>bits [CI] of H(Y)</th><th>frac.</th>"
            "<th>p (test)</th><th>Holm p</th><th>selectivity</th><th>status</th></tr>")
    body = []
    for _, r in df.iterrows():
        cls, badge = _status(r)
        classes = " ".join(c for c in (cls, "relevant" if r["task_relevant_attr"] else "") if c)
        acc = fmt_acc(r)
        bits = fmt_num(r["v_info_bits"]) + fmt_interval(r["v_info_ci_low"], r["v_info_ci_high"])
        bits += f" of {fmt_num(r['entropy_bits'])}" if finite(r["entropy_bits"]) else ""
        body.append(
            f'<tr class="{classes}"><td>{_e(r["level"])}</td><td class="num">{_int(r["layer"])}</td>'
            f'<td class="num">{_int(r["k"])}</td><td class="attr">{_e(r["attribute"])}</td><td>{_e(r["probe"])}</td>'
            f'<td class="num">{_int(r["n"])}</td><td class="num">{_e(acc)}</td>'
            f'<td class="num">{_e(fmt_num(r["balanced_accuracy"]))}</td><td class="num">{_e(bits)}</td>'
            f'<td class="num">{_e(fmt_num(r["v_info_frac"]))}</td><td class="num">{_e(fmt_p(r["p_value"]) + _test(r))}</td>'
            f'<td class="num">{_e(fmt_p(r["p_holm"]) if r["is_api"] else "")}</td>'
            f'<td class="num">{_e(fmt_num(r["selectivity"]))}</td><td>{badge}</td></tr>')
    return (f'<div class="scroll"><table class="results"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table></div>')


def _decided_tradeoff(tradeoff: pd.DataFrame) -> pd.DataFrame:
    """A ``defend`` table (``level`` and ``defense_label`` columns) with each defence's decision
    columns (``p_holm``, ``readable``, ``leak``: the audit's rules once per defence); any other as it is."""
    if not {"level", "defense_label"} <= set(tradeoff.columns):
        return tradeoff
    from logitleak.decisions import decide_defences

    return pd.concat([d.decisions.table for d in decide_defences(tradeoff).values()], ignore_index=True)


def _tradeoff_table(tradeoff: pd.DataFrame) -> str:
    tradeoff = _decided_tradeoff(tradeoff)
    cols = [c for c in ("defense", "strength", "attribute", "level", "layer", "k", "probe", "accuracy",
                        "baseline_accuracy", "p_value", "p_holm", "v_info_bits", "utility_accuracy", "leak")
            if c in tradeoff.columns and (c != "probe" or "p_holm" in tradeoff.columns)]
    head = "".join(f"<th>{_e({'p_holm': 'Holm p', 'leak': 'status'}.get(c, c))}</th>" for c in cols)
    body = []
    for _, r in tradeoff.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if c == "leak":
                cells.append(f"<td>{_status(r)[1]}</td>")
                continue
            if c in ("p_value", "p_holm"):
                s = fmt_p(v) if c == "p_value" or bool(r.get("is_api")) else ""
            elif c in ("layer", "k"):
                s = _int(v)
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                s = f"{num(v):.3g}" if finite(v) else "n/a"
            else:
                s = "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
            cells.append(f"<td>{_e(s)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _run_details(run_info: Mapping) -> str:
    out = ['<h2 id="run">Run details</h2>']
    problems = run_info.get("problems") or []
    if isinstance(problems, str):
        problems = [problems]
    if problems:
        items = "".join(f"<li>{_e(p)}</li>" for p in problems)
        out.append(f'<div class="problems" id="problems"><strong>Problems during the run ({len(problems)})</strong>'
                   f"<ul>{items}</ul></div>")
    shown = {"problems"}
    for key, title, unit in (("timings", "Timings", " s"), ("versions", "Package versions", ""),
                             ("fingerprints", "Fingerprints", "")):
        val = run_info.get(key)
        shown.add(key)
        if isinstance(val, Mapping) and val:
            out.append(f"<h3>{title}</h3>" + _kv_table(val, unit if key == "timings" else ""))
    shown |= {"model", "data", "task_attribute", "task attribute", "seed", "n_samples", "date"}
    rest = {k: v for k, v in run_info.items() if k not in shown}
    if rest:
        out.append("<h3>Settings</h3>" + _kv_table(rest))
    return "\n".join(out)


def render_html(results: pd.DataFrame, run_info: Mapping, *, tradeoff: pd.DataFrame | None = None,
                recommendation: str | None = None, alpha: float = 0.05) -> str:
    """The report as one HTML string."""
    dec = decide(results, alpha)
    ann = dec.table
    findings = verdict(results, alpha, decisions=dec)
    rel = relevance(ann) if len(ann) else {}
    parts = [_header(ann, run_info)]
    problems = run_info.get("problems") or []
    if problems:
        n = 1 if isinstance(problems, str) else len(problems)
        parts.append(f'<div class="problems">{n} problem{"s" if n != 1 else ""} during the run '
                     f'(listed under <a href="#problems">Run details</a>): the numbers below rest on the samples that '
                     f"were answered.</div>")
    parts.append(_verdict_html(findings, dec))

    for relevant, title, note in (
        (False, "Task-irrelevant attributes: leakage",
         "Attributes the question did not ask about. Anything readable here at an API level is leakage."),
        (True, "Task-relevant attribute: expected to be readable",
         "The attribute the question asks about; the answer itself carries it, so reading it is expected."),
    ):
        if not any((r == relevant) for r in rel.values()):
            continue
        sec = [f'<h2 id="{"irrelevant" if not relevant else "relevant"}">{_e(title)}</h2>',
               f'<p class="section-note">{_e(note)}</p>']
        plots = _plots.section_plots(ann, relevant)
        sec.append(_plots_html(plots) if plots else "<p>No level in this audit can be plotted for these attributes.</p>")
        parts.append("\n".join(sec))

    if tradeoff is not None or recommendation:
        sec = ['<h2 id="defences">Defences</h2>']
        if tradeoff is not None and len(tradeoff):
            p = _plots.tradeoff_plot(tradeoff, rel)
            if p is not None:
                sec.append(_plots_html([p]))
        if recommendation:
            sec.append(f'<h3>Recommendation</h3><pre class="recommendation">{_e(recommendation)}</pre>')
        if tradeoff is not None and len(tradeoff):
            sec.append("<details><summary>Trade-off table</summary>" + _tradeoff_table(tradeoff) + "</details>")
        parts.append("\n".join(sec))

    parts.append('<h2 id="table">All results</h2>'
                 f'<p class="small">One row per level, layer, k, attribute and probe family. Accuracy is shown with '
                 f'its interval and the majority baseline; bits (V-information) with their interval and H(Y). "Holm p" '
                 f"is the p-value corrected across all API-level tests. LEAK: readable (p &lt; {alpha:g} and interval "
                 f"above baseline) at an API level for a task-irrelevant attribute. &#9733; marks the task-relevant attribute.</p>"
                 + results_table(ann))
    parts.append(_run_details(run_info))
    title = f"logitleak audit — {_get(run_info, 'model', default='model')}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def build_report(results: pd.DataFrame, run_info: dict, out_path: str | Path, *,
                 tradeoff: pd.DataFrame | None = None, recommendation: str | None = None,
                 alpha: float = 0.05) -> Path:
    """Write the self-contained HTML report atomically (temp file + rename); return its path.

    ``out_path`` may be an existing directory (the file is then ``report.html`` inside it)."""
    out = Path(out_path)
    if out.is_dir():
        out = out / "report.html"
    text = render_html(results, run_info or {}, tradeoff=tradeoff, recommendation=recommendation, alpha=alpha)
    atomic_write(out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return out
