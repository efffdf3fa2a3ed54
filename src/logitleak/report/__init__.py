"""The audit report: a plain-words verdict, plots, the full table, and a terminal summary."""

from logitleak.report.html import build_report, render_html
from logitleak.report.summary import print_summary
from logitleak.report.verdict import Finding, verdict, verdict_text

__all__ = ["Finding", "build_report", "print_summary", "render_html", "verdict", "verdict_text"]
