"""The audit report as one self-contained HTML file.

Inline CSS, plots as base64 PNG data URIs, no scripts, no external resources; a
Content-Security-Policy forbids any network load.

The page is the first screen (:mod:`logitleak.report.first_screen`: verdict, matrix, flow figure)
followed by the sections of :mod:`logitleak.report.sections`. Decisions are taken once, here or by
the caller, and handed to every part.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from logitleak.decisions import Decisions, DefenceDecision, Recommendation, decide, decide_defences
from logitleak.decisions.attack import AttackDecisions
from logitleak.integrity import atomic_write
from logitleak.report.first_screen import CSS as FIRST_SCREEN_CSS
from logitleak.report.first_screen import first_screen_html
from logitleak.report.markup import esc, plain
from logitleak.report.sections import SECTIONS, ReportInput

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1d1d1f;
       max-width: 1360px; margin: 0 auto; padding: 14px 24px 60px; line-height: 1.45; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 34px 0 10px; border-bottom: 2px solid #e5e5ea; padding-bottom: 4px; }
h3 { font-size: 16px; margin: 22px 0 6px; }
.meta { display: flex; flex-wrap: wrap; gap: 2px 14px; font-size: 13px; margin: 4px 0 6px; }
.meta div { white-space: nowrap; }
.meta .k { color: #6e6e73; }
ul.findings { padding-left: 20px; } ul.findings li { margin: 8px 0; }
li.leak { color: #8b1a1a; } li.leak ul { margin-top: 2px; } li.leak li { margin: 3px 0; } li.method { color: #6e6e73; font-size: 13px; list-style: none; margin-left: -20px; }
.problems { background: #fff8e1; border-left: 6px solid #f9a825; padding: 10px 16px; border-radius: 6px; }
.problems ul { margin: 4px 0; }
figure { margin: 12px 0 26px; } figure img { max-width: 100%; height: auto; border: 1px solid #e5e5ea; }
figcaption { font-size: 13px; color: #48484a; margin-top: 4px; }
.section-note { color: #48484a; font-size: 14px; }
details > summary { cursor: pointer; font-weight: 600; margin: 6px 0; }
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


def _get(info: Mapping, *names, default=None):
    for n in names:
        if n in info and info[n] is not None:
            return info[n]
    return default


def _header(dec: Decisions, run_info: Mapping) -> str:
    task = _get(run_info, "task_attribute", "task attribute", "task")
    if task is None:
        rel = [d.attribute for d in dec.relevant]
        task = ", ".join(rel) if rel else None
    n = _get(run_info, "n_samples", "n")
    ann = dec.table
    if n is None and len(ann) and ann["n"].notna().any():
        n = int(pd.to_numeric(ann["n"], errors="coerce").max())
    date = _get(run_info, "date", "created", "started", "timestamp") or _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    items = [("Model", _get(run_info, "model")), ("Probe set", _get(run_info, "data", "probe_set", "dataset")),
             ("Task attribute", task), ("Seed", _get(run_info, "seed")), ("Samples", n), ("Date", date)]
    meta = "".join(f"<div><span class=\"k\">{esc(k)}:</span> <strong>{esc('—' if v is None else plain(v))}</strong></div>"
                   for k, v in items)
    return f"<h1>logitleak audit: what do the logits know?</h1>\n<div class=\"meta\">{meta}</div>"


def _problems_banner(run_info: Mapping) -> str:
    problems = run_info.get("problems") or []
    if not problems:
        return ""
    n = 1 if isinstance(problems, str) else len(problems)
    return (f'<div class="problems">{n} problem{"s" if n != 1 else ""} during the run (listed under '
            f'<a href="#problems">Run details</a>): the numbers below rest on the samples that were answered.</div>')


def _defences(tradeoff: pd.DataFrame | None, recommendation) -> dict[str, DefenceDecision] | None:
    """Each defence's decisions: the recommendation's when it carries them, else taken once here."""
    if isinstance(recommendation, Recommendation):
        return recommendation.defences
    if tradeoff is not None and len(tradeoff) and {"level", "defense_label"} <= set(tradeoff.columns):
        return decide_defences(tradeoff)
    return None


def render_html(results: pd.DataFrame, run_info: Mapping, *, tradeoff: pd.DataFrame | None = None,
                recommendation: str | Recommendation | None = None, alpha: float = 0.05,
                decisions: Decisions | None = None, attack: AttackDecisions | None = None) -> str:
    """The report as one HTML string (``decisions``: already taken on ``results``; ``recommendation``:
    defend's decision, whose per-defence decisions the Defences section then reads; ``attack``: the
    decisions on the attack-cost curves)."""
    dec = decisions if decisions is not None else decide(results, alpha)
    ctx = ReportInput(decisions=dec, run_info=run_info, tradeoff=tradeoff,
                      defences=_defences(tradeoff, recommendation),
                      recommendation=str(recommendation) if recommendation else None, attack=attack)
    parts = [_header(dec, run_info), _problems_banner(run_info), first_screen_html(dec, with_css=False)]
    parts += [section(ctx) for section in SECTIONS]
    title = f"logitleak audit — {_get(run_info, 'model', default='model')}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}{FIRST_SCREEN_CSS}</style></head>\n<body>\n"
            + "\n".join(p for p in parts if p) + "\n</body></html>\n")


def build_report(results: pd.DataFrame, run_info: dict, out_path: str | Path, *,
                 tradeoff: pd.DataFrame | None = None, recommendation: str | Recommendation | None = None,
                 alpha: float = 0.05, decisions: Decisions | None = None,
                 attack: AttackDecisions | None = None) -> Path:
    """Write the self-contained HTML report atomically (temp file + rename); return its path.

    ``out_path`` may be an existing directory (the file is then ``report.html`` inside it)."""
    out = Path(out_path)
    if out.is_dir():
        out = out / "report.html"
    text = render_html(results, run_info or {}, tradeoff=tradeoff, recommendation=recommendation, alpha=alpha,
                       decisions=decisions, attack=attack)
    atomic_write(out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return out
