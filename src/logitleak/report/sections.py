"""The report below its first screen, as a list of pluggable sections.

A section is a function of :class:`ReportInput` (the run's decisions, taken once, and what else the
run handed in) returning HTML, or ``""`` when it has nothing to say. :data:`SECTIONS` is their
order and :data:`SIDE_PLOTS` the figures drawn for each side (task-irrelevant, task-relevant
attributes); a new figure or section is one more entry there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pandas as pd

from logitleak.decisions import Decisions, DefenceDecision
from logitleak.decisions.attack import AttackDecisions
from logitleak.report.attack import attack_section
from logitleak.report.defences import tradeoff_plot, tradeoff_table
from logitleak.report.figure import Plot
from logitleak.report.flow import flow_plot, pca_plot
from logitleak.report.markup import details, esc, figures, kv_table
from logitleak.report.plots import k_plot, layer_plot, level_plot
from logitleak.report.tables import results_table
from logitleak.report.verdict import verdict


@dataclass(frozen=True)
class ReportInput:
    """What every section reads: the decisions (computed once) and the run's other outputs."""

    decisions: Decisions
    run_info: Mapping
    tradeoff: pd.DataFrame | None = None
    defences: dict[str, DefenceDecision] | None = None
    recommendation: str | None = None
    attack: AttackDecisions | None = None


SIDE_PLOTS: list[Callable[[Decisions, bool], Plot | None]] = [flow_plot, layer_plot, level_plot, k_plot, pca_plot]
"""The figures of each side's section, in order; each returns ``None`` when it has nothing to draw."""


def findings_section(ctx: ReportInput) -> str:
    """Every statement of the verdict (leaks with their evidence, the rest, the method), collapsed."""
    items = []
    for f in verdict(ctx.decisions.table, ctx.decisions.alpha, decisions=ctx.decisions):
        if f.kind == "headline":
            continue
        parts = f.details.get("parts") if isinstance(f.details, dict) else None
        if parts:
            sub = "".join(f"<li>{esc(p)}</li>" for p in parts)
            items.append(f'<li class="{esc(f.kind)}"><strong>{esc(f.details.get("intro", ""))}</strong><ul>{sub}</ul></li>')
        else:
            items.append(f'<li class="{esc(f.kind)}">{esc(f.text)}</li>')
    if not items:
        return ""
    return ('<h2 id="verdict">The verdict in full</h2>'
            + details("Every finding: each attribute's strongest reading, smallest k, p-values and the method",
                      f'<ul class="findings">{"".join(items)}</ul>'))


SIDES = ((False, "irrelevant", "Task-irrelevant attributes: leakage",
          "Attributes the question did not ask about. Anything readable here at an API level is leakage."),
         (True, "relevant", "Task-relevant attribute: expected to be readable",
          "The attribute the question asks about; the answer itself carries it, so reading it is expected."))


def side_sections(ctx: ReportInput) -> str:
    """One section per side with its figures."""
    out = []
    for relevant, ident, title, note in SIDES:
        if not any(d.task_relevant == relevant for d in ctx.decisions.attributes.values()):
            continue
        plots = [p for p in (fn(ctx.decisions, relevant) for fn in SIDE_PLOTS) if p is not None]
        body = figures(plots) if plots else "<p>No level in this audit can be plotted for these attributes.</p>"
        out.append(f'<h2 id="{ident}">{esc(title)}</h2><p class="section-note">{esc(note)}</p>{body}')
    return "\n".join(out)


def defences_section(ctx: ReportInput) -> str:
    """The trade-off figure, the recommendation and the trade-off table (``defend`` runs)."""
    tradeoff, rec = ctx.tradeoff, ctx.recommendation
    if tradeoff is None and not rec:
        return ""
    sec = ['<h2 id="defences">Defences</h2>']
    rel = {a: d.task_relevant for a, d in ctx.decisions.attributes.items()}
    if tradeoff is not None and len(tradeoff):
        p = tradeoff_plot(tradeoff, rel, ctx.defences)
        if p is not None:
            sec.append(figures([p]))
    if rec:
        sec.append(f'<h3>Recommendation</h3><pre class="recommendation">{esc(rec)}</pre>')
    if tradeoff is not None and len(tradeoff):
        sec.append(details("Trade-off table", tradeoff_table(tradeoff, ctx.defences)))
    return "\n".join(sec)


def results_section(ctx: ReportInput) -> str:
    """Every row of the results table, collapsed."""
    ann, alpha = ctx.decisions.table, ctx.decisions.alpha
    note = (f'<p class="small">One row per level, layer, k, attribute and probe family. Accuracy is shown with its '
            f'interval and the majority baseline; bits (V-information) with their interval and H(Y). "Holm p" is the '
            f"p-value corrected across all API-level tests; p-values below 1e-10 print as &lt; 1e-10 (the test does "
            f"not resolve smaller ones). LEAK: readable (p &lt; {alpha:g} and interval above baseline) at an API "
            f"level for a task-irrelevant attribute. &#9733; marks the task-relevant attribute.</p>")
    return ('<h2 id="table">All results</h2>'
            + details(f"The full table ({len(ann)} rows)", note + results_table(ann)))


SHOWN_IN_HEADER = {"model", "data", "task_attribute", "task attribute", "seed", "n_samples", "date"}


def run_details(ctx: ReportInput) -> str:
    """Problems during the run, timings, versions, fingerprints and every other setting."""
    run_info = ctx.run_info
    out = ['<h2 id="run">Run details</h2>']
    problems = run_info.get("problems") or []
    if isinstance(problems, str):
        problems = [problems]
    if problems:
        items = "".join(f"<li>{esc(p)}</li>" for p in problems)
        out.append(f'<div class="problems" id="problems"><strong>Problems during the run ({len(problems)})</strong>'
                   f"<ul>{items}</ul></div>")
    shown = {"problems"}
    for key, title, unit in (("timings", "Timings (wall)", " s"), ("cpu_timings", "Timings (CPU)", " s"),
                             ("versions", "Package versions", ""), ("fingerprints", "Fingerprints", "")):
        val = run_info.get(key)
        shown.add(key)
        if isinstance(val, Mapping) and val:
            out.append(f"<h3>{title}</h3>" + kv_table(val, unit))
    rest = {k: v for k, v in run_info.items() if k not in shown | SHOWN_IN_HEADER}
    if rest:
        out.append(details("Settings", kv_table(rest)))
    return "\n".join(out)


def attacker_section(ctx: ReportInput) -> str:
    """The attacker's view: attack-cost curves and the cheapest attack (audits with curves)."""
    return attack_section(ctx.attack, ctx.decisions)


SECTIONS: list[Callable[[ReportInput], str]] = [findings_section, side_sections, attacker_section, defences_section,
                                                results_section, run_details]
"""The report below the first screen, in order."""
