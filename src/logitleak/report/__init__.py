"""The audit report: first screen, plots, tables, terminal summary, verdict.json, the gate, comparisons."""

from logitleak.report.finding import Finding
from logitleak.report.first_screen import first_screen_html
from logitleak.report.html import build_report, render_html
from logitleak.report.summary import print_summary
from logitleak.report.verdict import verdict, verdict_sentence, verdict_text

__all__ = ["Finding", "build_report", "first_screen_html", "print_summary", "render_html", "verdict",
           "verdict_sentence", "verdict_text"]
