"""The report's first screen on known tables: one sentence of verdict, the attribute x level
matrix read from the decisions, the flow figure; p-values past what the test resolves; a notebook's view."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from logitleak.decisions import decide
from logitleak.levels.table import API_LEVELS
from logitleak.report import build_report, first_screen_html, verdict_sentence
from logitleak.report.tables import results_table
from logitleak.report.wording import fmt_p

try:
    from report_fixtures import make_table, run_info
except ImportError:  # tests/ imported as a package
    from tests.report_fixtures import make_table, run_info


class _Matrix(HTMLParser):
    """The matrix's cells: (row attribute, column level) -> (classes, text)."""

    def __init__(self):
        super().__init__()
        self.levels, self.rows, self.calls = [], {}, {}
        self._in, self._attr, self._col, self._cls, self._text = None, None, 0, "", ""
        self.in_matrix = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("id") == "matrix":
            self.in_matrix = True
        if not self.in_matrix:
            return
        cls = a.get("class") or ""
        if tag == "th" and "ll-level" in cls:
            self._in = "level"
        elif tag == "th" and "ll-attr" in cls:
            self._in, self._text = "attr", ""
        elif tag == "td" and "ll-call" in cls:
            self._in, self._text = "call", ""
        elif tag == "td" and "ll-cell" in cls:
            self._in, self._cls, self._text = "cell", cls, ""
        elif tag == "small":
            self._text += " "

    def handle_data(self, data):
        if self._in == "level":
            self.levels.append(data)
            self._in = None
        elif self._in in ("attr", "call", "cell"):
            self._text += data

    def handle_endtag(self, tag):
        if not self.in_matrix:
            return
        if tag == "table":
            self.in_matrix = False
        elif tag == "th" and self._in == "attr":
            words = self._text.split()
            if words and words[0] != "attribute":
                self._attr, self._col = words[0], 0
                self.rows[self._attr] = {"task": "task" in words[1:]}
            self._in = None
        elif tag == "td" and self._in == "call":
            self.calls[self._attr] = self._text.strip()
            self._in = None
        elif tag == "td" and self._in == "cell":
            self.rows[self._attr][self.levels[self._col]] = (self._cls, self._text.split())
            self._col += 1
            self._in = None


def _matrix(html: str) -> _Matrix:
    m = _Matrix()
    m.feed(html)
    return m


def test_the_verdict_is_one_sentence_naming_the_leak_and_its_strongest_reading():
    dec = decide(make_table())
    s = verdict_sentence(dec)
    assert s.count(". ") == 0 and s.endswith(".")
    assert s.startswith("LEAK: an API user CAN read 1 of the 2 task-irrelevant attributes") and "(shape)" in s
    top = dec.attributes["shape"].strongest
    assert f"{top['v_info_bits']:.2f} [{top['v_info_ci_low']:.2f}, {top['v_info_ci_high']:.2f}] of 1.58 bits" in s
    assert "size" not in s and len(s.split()) < 45
    null = verdict_sentence(decide(make_table("null")))
    assert null.startswith("No leak: none of the 2 task-irrelevant attributes (shape and size) can be read")


def test_the_matrix_holds_each_attributes_strongest_reading_per_level_from_the_decisions():
    df = make_table()
    dec = decide(df)
    m = _matrix(first_screen_html(dec))
    levels = sorted(set(df["level"]), key=list(dec.best["level"].drop_duplicates()).index)
    assert m.levels == levels                                      # every level, in flow order
    inner = [lv for lv in m.levels if lv not in API_LEVELS]
    assert m.levels[len(inner):] == [lv for lv in m.levels if lv in API_LEVELS]   # API columns apart, last
    assert list(m.rows) == ["color", "shape", "size"] and m.rows["color"]["task"] and not m.rows["shape"]["task"]
    assert m.calls == {"color": "readable", "shape": "LEAK", "size": "no leak"}
    for attr, d in dec.attributes.items():
        for level, r in d.by_level.items():
            cls, text = m.rows[attr][level]
            assert text[0] == f"{r['v_info_bits']:.2f}"             # the decisions' reading, not a recomputed one
            assert text[1] == f"{r['accuracy'] - r['baseline_accuracy']:+.2f}"
            want = "ll-leak" if r["leak"] else ("ll-readable" if r["readable"] else "ll-weak")
            assert want in cls.split(), (attr, level, cls)
    leaks = {(a, lv) for a, row in m.rows.items() for lv, cell in row.items() if lv != "task" and "ll-leak" in cell[0]}
    assert leaks == {("shape", lv) for lv in ("topk_ids", "topk_logprobs", "topk_logits")}
    # the cell is the strongest over layers, k and family: shape at topk_ids is its k=10/20 mlp row
    assert m.rows["shape"]["topk_ids"][1][0] == f"{dec.attributes['shape'].strongest['v_info_bits']:.2f}"


def test_a_level_an_attribute_lacks_is_an_empty_cell_and_a_table_with_no_rows_has_no_matrix():
    df = make_table()
    df = df[~((df["attribute"] == "size") & (df["level"] == "top1_prob"))]
    m = _matrix(first_screen_html(decide(df)))
    assert m.rows["size"]["top1_prob"] == ("ll-cell ll-none", ["·"])
    empty = first_screen_html(decide(make_table().iloc[:0]))
    assert 'id="matrix"' not in empty and "nothing was measured" in empty


def test_p_values_past_what_the_test_resolves_print_as_a_floor():
    assert fmt_p(8.5e-114) == "< 1e-10" and fmt_p(0.0) == "< 1e-10"
    assert fmt_p(2e-9) == "2.0e-09" and fmt_p(0.0123) == "0.012" and fmt_p(float("nan")) == "n/a"
    df = make_table()
    df.loc[df["level"] == "residual", "p_value"] = 8.5e-114
    html = results_table(decide(df).table)
    assert "&lt; 1e-10" in html and "e-114" not in html and "e-11" not in html


def test_the_report_opens_on_the_first_screen_with_the_details_below(tmp_path):
    out = build_report(make_table(), run_info(), tmp_path / "report.html")
    text = out.read_text(encoding="utf-8")
    body = text.split("<body>", 1)[1]
    order = [body.index(s) for s in ('id="verdict-sentence"', 'id="matrix"', 'id="flow-overview"',
                                     'id="verdict"', 'id="irrelevant"', 'id="table"', 'id="run"')]
    assert order == sorted(order)
    assert body.index("<h1>") < order[0]
    # the long findings and the full table are collapsed
    assert re.search(r'<h2 id="verdict">[^<]*</h2><details><summary>', body)
    assert re.search(r'<h2 id="table">[^<]*</h2><details><summary>The full table', body)
    assert body.count("<details") == 2 and "<details open" not in body


def test_a_notebook_shows_the_first_screen_of_an_audit_result(tmp_path):
    from logitleak.audit import AuditResult

    table = make_table()
    result = AuditResult(results=table, out_dir=Path(tmp_path), run_info=run_info())
    view = result._repr_html_()
    assert view.startswith("<style>") and 'id="first-screen"' in view and 'id="matrix"' in view
    assert verdict_sentence(decide(table)) in view.replace("&#x27;", "'")
    assert "<html" not in view and "<script" not in view
    given = decide(make_table("null"))          # a result shows the decisions it carries (run_audit's, taken once)
    shown = AuditResult(results=table, out_dir=Path(tmp_path), run_info={}, decisions=given)._repr_html_()
    assert verdict_sentence(given) in shown and "No leak" in shown


@pytest.mark.parametrize("levels", [["residual"], ["topk_ids"], ["top1_prob"], ["residual", "tuned_lens_topk"]])
def test_partial_audits_still_get_a_first_screen(levels):
    dec = decide(make_table(levels=levels))
    html = first_screen_html(dec)
    m = _matrix(html)
    assert m.levels == levels and set(m.rows) == {"color", "shape", "size"}
    assert 'id="verdict-sentence"' in html
    assert np.all([("ll-leak" in c[0]) == (a == "shape" and lv in API_LEVELS and lv != "top1_prob")
                   for a, row in m.rows.items() for lv, c in row.items() if lv != "task"])
