"""The report's first screen: verdict sentence, attribute x level matrix and flow figure, as one fragment.

The fragment carries its own (scoped) CSS.

The same fragment opens report.html and is what an :class:`~logitleak.audit.AuditResult` shows in
a notebook (``_repr_html_``); everything else in the report sits below it.
"""

from __future__ import annotations

from logitleak.decisions import Decisions
from logitleak.report.flow import flow_overview
from logitleak.report.markup import esc
from logitleak.report.matrix import matrix_html
from logitleak.report.verdict import verdict_sentence

STATUS_CLASS: dict[str, str] = {"leak": "leak", "clean": "clean"}
"""The verdict line's CSS class by the decisions' ``status`` (``unknown`` otherwise)."""

CSS = """
.logitleak { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1d1d1f; }
.logitleak .ll-verdict { font-size: 17px; font-weight: 600; padding: 10px 16px; border-radius: 8px; margin: 8px 0 12px; }
.logitleak .ll-verdict.leak { background: #fdecea; border-left: 6px solid #c62828; }
.logitleak .ll-verdict.clean { background: #e8f5e9; border-left: 6px solid #2e7d32; }
.logitleak .ll-verdict.unknown { background: #f2f2f7; border-left: 6px solid #8e8e93; }
.logitleak .ll-glance { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
.logitleak .ll-glance figure { margin: 0; flex: 1 1 480px; max-width: 600px; }
.logitleak .ll-glance figure img { width: 100%; height: auto; border: 1px solid #e5e5ea; }
.logitleak .ll-glance figcaption, .logitleak .ll-matrix caption { font-size: 12px; color: #48484a; margin-top: 4px;
    caption-side: bottom; text-align: left; white-space: normal; line-height: 1.35; }
.logitleak .ll-left { flex: 0 1 auto; max-width: 100%; overflow-x: auto; }
.logitleak table.ll-matrix { border-collapse: collapse; font-size: 12.5px; width: auto; }
.logitleak .ll-matrix th, .logitleak .ll-matrix td { border: 1px solid #e5e5ea; padding: 2px 5px; white-space: nowrap;
    text-align: center; vertical-align: middle; position: static; background: #fff; }
.logitleak .ll-matrix th.ll-attr { text-align: left; font-weight: 600; background: #fff; }
.logitleak .ll-matrix th.ll-level { height: 112px; vertical-align: bottom; background: #fff; font-weight: 500; padding: 4px 2px; }
.logitleak .ll-matrix th.ll-level span { writing-mode: vertical-rl; transform: rotate(180deg); font-size: 11.5px; }
.logitleak .ll-matrix th.ll-group { font-size: 11px; font-weight: 600; color: #1f4e79; background: #f2f2f7; }
.logitleak .ll-matrix th.ll-group-api { color: #c62828; background: #fdecea; }
.logitleak .ll-matrix .ll-api-edge { border-left: 3px solid #c62828; }
.logitleak .ll-matrix td.ll-cell { min-width: 38px; font-variant-numeric: tabular-nums; line-height: 1.15; }
.logitleak .ll-matrix td.ll-cell small { display: block; font-size: 10px; opacity: 0.85; }
.logitleak .ll-matrix td.ll-weak, .logitleak .ll-matrix td.ll-none { color: #8e8e93; }
.logitleak .ll-matrix td.ll-leak { font-weight: 700; }
.logitleak .ll-matrix td.ll-call { font-size: 11.5px; font-weight: 700; }
.logitleak .ll-call-leak { color: #c62828; } .logitleak .ll-call-no_leak { color: #2e7d32; }
.logitleak .ll-call-readable { color: #1f4e79; } .logitleak .ll-call-not_readable { color: #b26a00; }
.logitleak .ll-task { font-size: 10px; font-weight: 700; background: #b8860b; color: #fff; border-radius: 4px;
    padding: 0 4px; margin-left: 4px; }
"""


def first_screen_html(dec: Decisions, *, with_css: bool = True) -> str:
    """The first screen as one fragment: ``<div class="logitleak">`` (with its CSS when ``with_css``)."""
    cls = STATUS_CLASS.get(dec.status, "unknown")
    parts = [f'<div class="ll-verdict {cls}" id="verdict-sentence">{esc(verdict_sentence(dec))}</div>']
    matrix = matrix_html(dec)
    plot = flow_overview(dec)
    glance = []
    if matrix:
        glance.append(f'<div class="ll-left">{matrix}</div>')
    if plot is not None:
        glance.append(f'<figure id="flow-overview"><img src="{plot.data_uri}" alt="{esc(plot.title)}">'
                      f"<figcaption><strong>{esc(plot.title)}.</strong> {esc(plot.caption)}</figcaption></figure>")
    if glance:
        parts.append(f'<div class="ll-glance">{"".join(glance)}</div>')
    style = f"<style>{CSS}</style>" if with_css else ""
    return f'{style}<div class="logitleak" id="first-screen">{"".join(parts)}</div>'
