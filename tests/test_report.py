"""The audit report: the verdict's rules on known tables, and a self-contained HTML file."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from rich.console import Console

from logitleak.decisions import annotate, holm
from logitleak.report import build_report, print_summary, verdict, verdict_text

try:
    from report_fixtures import LEAK_BITS_K5, make_table, make_tradeoff, run_info
except ImportError:  # tests/ imported as a package
    from tests.report_fixtures import LEAK_BITS_K5, make_table, make_tradeoff, run_info


class _Collect(HTMLParser):
    """Every tag with its attributes, and the text of <style>/<script>."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self._in = None
        self.style = ""

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in = tag

    def handle_data(self, data):
        if self._in == "style":
            self.style += data

    def handle_endtag(self, tag):
        self._in = None


def _parse(text: str) -> _Collect:
    p = _Collect()
    p.feed(text)
    return p


def _leaks(findings):
    return [f for f in findings if f.kind == "leak"]


# --------------------------------------------------------------------------------- the verdict


def test_verdict_names_the_leaking_attribute_from_k5_with_its_bits():
    findings = verdict(make_table())
    leaks = _leaks(findings)
    assert [f.attribute for f in leaks] == ["shape"]
    shape = leaks[0]
    # the finding rests on the strongest reading (most bits: topk_ids at k >= 10), with its interval
    assert shape.level == "topk_ids" and shape.k in (10, 20)
    assert shape.probe == "mlp"  # the strongest family at that cell, and it is named
    top = make_table().query("level == 'topk_ids' and attribute == 'shape' and probe == 'mlp'").v_info_bits.max()
    assert shape.bits == pytest.approx(top) and shape.bits > LEAK_BITS_K5
    assert shape.bits_ci == pytest.approx((top - 0.08, top + 0.08))
    assert shape.details["first_k"] == 5                      # the smallest k shown, as the secondary fact
    head = findings[0]
    assert head.kind == "headline"
    assert "CAN read" in head.text and "shape" in head.text and "from k=5" in head.text
    assert f"{top:.2f} [{top - 0.08:.2f}, {top + 0.08:.2f}]" in head.text and "mlp" in head.text
    assert head.text.index("strongest") < head.text.index("from k=5")
    assert "accuracy 0.83 [0.80, 0.86] vs baseline 0.35" in shape.text   # the k=5 reading, per level
    # compared with the residual stream and the tuned lens for the same attribute
    assert "residual stream holds" in shape.text and "tuned lens holds" in shape.text


def test_bits_whose_interval_includes_zero_are_not_shown_above_zero_and_bits_are_estimates():
    df = make_table()
    shape = df["attribute"] == "shape"
    df.loc[shape, "v_info_ci_low"] = -0.02
    findings = verdict(df)
    assert "not shown above zero" in findings[0].text
    method = next(f for f in findings if f.kind == "method").text
    assert "estimate" in method and "lower bound" not in method
    plain = verdict(make_table())
    assert "not shown above zero" not in plain[0].text


def test_verdict_does_not_name_the_attribute_at_baseline():
    findings = verdict(make_table())
    assert "size" not in findings[0].text
    assert all("size" not in f.text for f in _leaks(findings))
    size = [f for f in findings if f.attribute == "size"]
    assert [f.kind for f in size] == ["no_leak"]
    assert "not readable from the API output" in size[0].text


def test_task_relevant_attribute_is_reported_as_expected_not_as_leak():
    findings = verdict(make_table())
    color = [f for f in findings if f.attribute == "color"]
    assert [f.kind for f in color] == ["task_relevant"]
    assert "As expected" in color[0].text


def test_everything_at_baseline_says_no_leak():
    findings = verdict(make_table("null"))
    assert not _leaks(findings)
    assert findings[0].text.startswith("No leak found")
    assert "NOT readable" in " ".join(verdict_text(make_table("null")))  # the task attribute: unexpected


def test_significant_but_interval_touching_baseline_is_not_a_leak():
    df = make_table()
    shape = df["attribute"] == "shape"
    df.loc[shape, "ci_low"] = df.loc[shape, "baseline_accuracy"] - 0.01
    findings = verdict(df)
    assert not _leaks(findings)
    assert findings[0].text.startswith("No leak found")


def test_raw_p_below_alpha_but_not_after_holm_is_not_a_leak():
    df = make_table()
    shape = df["attribute"] == "shape"
    df.loc[shape, "p_value"] = np.where(df.loc[shape, "p_value"] < 0.05, 0.01, df.loc[shape, "p_value"])
    assert not _leaks(verdict(df))
    # ...while a lone test at p=0.01 does survive (Holm over one test is the raw p)
    one = df[(df["level"] == "topk_ids") & (df["k"] == 5) & shape & (df["probe"] == "mlp")]
    assert [f.attribute for f in _leaks(verdict(one))] == ["shape"]


def test_holm_matches_hand_computation_and_keeps_nan():
    got = holm([0.01, 0.04, np.nan, 0.03, 0.5])
    # sorted 0.01, 0.03, 0.04, 0.5 with m=4 -> 0.04, 0.09, 0.09 (monotone), 0.5
    assert got[[0, 3, 1, 4]] == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert np.isnan(got[2])


def test_holm_counts_only_api_rows():
    ann = annotate(make_table())
    assert ann.loc[~ann["is_api"], "p_holm"].isna().all()
    n_api = int(ann["is_api"].sum())
    smallest = ann.loc[ann["is_api"], "p_value"].min()
    assert ann.loc[ann["is_api"], "p_holm"].min() == pytest.approx(smallest * n_api)


def test_leak_only_at_top1_prob_is_reported_without_k():
    df = make_table(levels=["residual", "top1_prob"])
    m = (df["level"] == "top1_prob") & (df["attribute"] == "size")
    df.loc[m, ["accuracy", "ci_low", "ci_high", "p_value", "v_info_bits"]] = [0.7, 0.66, 0.74, 1e-6, 0.2]
    leaks = _leaks(verdict(df))
    assert [(f.attribute, f.level, f.k) for f in leaks] == [("size", "top1_prob", None)]
    assert "top-1 probability" in leaks[0].text


def test_no_api_level_measured_says_it_cannot_tell():
    findings = verdict(make_table(levels=["residual", "tuned_lens_topk"]))
    assert "cannot say" in findings[0].text
    assert not _leaks(findings)


def test_missing_task_relevant_marks_count_every_attribute():
    df = make_table()
    df["task_relevant"] = None
    attrs = {f.attribute for f in _leaks(verdict(df))}
    assert attrs == {"shape", "color"}


# --------------------------------------------------------------------------------- the HTML


def _check_self_contained(text: str) -> list[bytes]:
    parsed = _parse(text)
    for tag, attrs in parsed.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed"), tag
        for name in ("src", "href", "srcset", "data", "poster"):
            v = (attrs.get(name) or "").strip().lower()
            assert not v.startswith(("http:", "https:", "//", "ftp:", "file:")), (tag, name, v[:80])
            if tag == "a" and name == "href" and v:
                assert v.startswith("#"), v
    assert not re.search(r"url\(|@import", parsed.style)
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", text, flags=re.I)
    pngs = []
    for tag, attrs in parsed.tags:
        if tag == "img":
            src = attrs["src"]
            assert src.startswith("data:image/png;base64,")
            raw = base64.b64decode(src.split(",", 1)[1], validate=True)
            assert raw.startswith(b"\x89PNG\r\n\x1a\n")
            with Image.open(io.BytesIO(raw)) as im:
                im.verify()
            with Image.open(io.BytesIO(raw)) as im:
                assert im.format == "PNG" and im.width > 100 and im.height > 100
            pngs.append(raw)
    return pngs


def test_html_is_self_contained_with_png_plots_and_all_rows(tmp_path):
    table = make_table()
    info = run_info(problems=["sample 17: the endpoint returned no logprobs"])
    out = build_report(table, info, tmp_path / "report.html", tradeoff=make_tradeoff(),
                       recommendation="Return k<=2 and drop token ids.")
    assert out == tmp_path / "report.html"
    text = out.read_text(encoding="utf-8")
    pngs = _check_self_contained(text)
    # the first screen's flow figure, 3 plots for each side (layers, levels, k) + the trade-off
    assert len(pngs) == 8
    assert len(set(pngs)) == 8
    # the full table: one row per results row, scores beside interval and baseline
    body = text.split('<table class="results">', 1)[1].split("</table>", 1)[0]
    assert body.count("<tr") - 1 == len(table)
    assert "0.83 [0.80, 0.86] vs 0.35" in body
    assert f"{LEAK_BITS_K5:.2f} [{LEAK_BITS_K5 - 0.08:.2f}, {LEAK_BITS_K5 + 0.08:.2f}] of 1.58" in body
    assert 'class="leak"' in body and "relevant" in body
    # the verdict comes before the plots, the table before the run details
    assert text.index('id="verdict"') < text.index('id="irrelevant"') < text.index('id="relevant"') < text.index('id="table"') < text.index('id="run"')
    assert "sample 17: the endpoint returned no logprobs" in text
    assert "Return k&lt;=2 and drop token ids." in text
    for key in ("organism:tiny-llava", "shapes (procedural)", "sha256:abc123", "probes_s", "transformers"):
        assert key in text
    assert "Content-Security-Policy" in text and "default-src 'none'; img-src data:" in text


def test_write_is_atomic_and_a_directory_gets_report_html(tmp_path):
    out = build_report(make_table(levels=["topk_ids"]), run_info(), tmp_path)
    assert out == tmp_path / "report.html" and out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]  # no temp file left


@pytest.mark.parametrize("levels", [
    ["residual"], ["top1_prob"], ["topk_ids"], ["tuned_lens_topk", "topk_logits"],
    ["logit_lens_topk"], [],
])
def test_missing_levels_do_not_crash(tmp_path, levels):
    out = build_report(make_table(levels=levels), run_info(), tmp_path / "r.html")
    _check_self_contained(out.read_text(encoding="utf-8"))


def test_nan_and_missing_columns_do_not_crash(tmp_path):
    df = make_table(levels=["residual", "topk_ids", "top1_prob"])
    df.loc[df.index[::3], ["v_info_bits", "v_info_ci_low", "ci_low", "p_value"]] = np.nan
    df = df.drop(columns=["v_info_ci_high", "selectivity", "entropy_bits"])
    info = {"model": "m"}  # the bare minimum
    tr = make_tradeoff().drop(columns=["v_info_bits"])  # leakage falls back to accuracy - baseline
    out = build_report(df, info, tmp_path / "r.html", tradeoff=tr)
    pngs = _check_self_contained(out.read_text(encoding="utf-8"))
    assert len(pngs) >= 4
    # a NaN p-value or interval never counts as readable
    ann = annotate(df)
    assert not ann.loc[ann["p_value"].isna() | ann["ci_low"].isna(), "readable"].any()


def test_html_escapes_user_text(tmp_path):
    df = make_table(levels=["topk_ids"])
    df["attribute"] = df["attribute"].replace("shape", "<b>shape</b>")
    out = build_report(df, run_info(model="<script>alert(1)</script>"), tmp_path / "r.html")
    text = out.read_text(encoding="utf-8")
    assert "<script>" not in text and "<b>shape</b>" not in text
    assert "&lt;b&gt;shape&lt;/b&gt;" in text


# --------------------------------------------------------------------------------- terminal


def test_print_summary_marks_the_leak():
    console = Console(record=True, width=140)
    print_summary(make_table(), console=console)
    out = console.export_text()
    lines = {ln.split("│")[1].strip(): ln for ln in out.splitlines() if ln.startswith("│") and ln.split("│")[1].strip()}
    # the strongest reading (k=10), as in the verdict, with the smallest readable k beside it
    cells = [c.strip() for c in lines["shape"].split("│")]
    assert cells[2:4] == ["LEAK", "topk_ids k=10 (mlp)"] and cells[6] == "k=5"
    assert "no leak" in lines["size"]
    assert "readable" in lines["color *task"]
    assert "CAN read" in out


def test_print_summary_handles_partial_and_empty_tables():
    console = Console(record=True, width=100)
    print_summary(make_table(levels=["residual"]), console=console)
    print_summary(make_table().iloc[:0], console=console)
    out = console.export_text()
    assert out.count("no API rows") == 3 and "cannot say" in out and "empty" in out


def test_tradeoff_without_results_section_columns_is_skipped(tmp_path):
    bad = pd.DataFrame({"defense": ["x"], "strength": [1]})  # no utility/attribute: no plot, no crash
    out = build_report(make_table(levels=["topk_ids"]), run_info(), tmp_path / "r.html", tradeoff=bad)
    assert "Defences" in out.read_text(encoding="utf-8")


def test_results_table_says_which_test_gave_each_p_value():
    from logitleak.report.tables import results_table

    df = make_table()
    df["p_test"] = np.where(df["level"] == "residual", "permutation", "heldout")
    html = results_table(annotate(df))
    assert "(heldout)" in html and "(permutation)" in html and "p (test)" in html


@pytest.mark.parametrize("columns", [None, "80", "200"])
def test_a_summary_table_in_a_log_never_wraps_a_cell(monkeypatch, columns):
    from logitleak.report.console import print_table
    from logitleak.report.summary import summary_table

    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    buf = io.StringIO()
    console = Console(file=buf)                     # not a terminal: a log
    assert not console.is_terminal
    print_table(console, summary_table(make_table()))
    lines = buf.getvalue().splitlines()
    body = [ln for ln in lines if ln.startswith("│")]
    assert [ln.split("│")[1].split()[0] for ln in body] == ["color", "shape", "size"]   # one line per row
    assert not any("…" in ln for ln in lines)
    assert lines[0].startswith("logitleak audit (alpha=0.05, Holm-corrected at the API levels)")
    width = max(len(ln) for ln in lines)
    assert width <= max(int(columns or 80), len(body[0]))          # the content's width, or COLUMNS when wider
    assert "topk_ids k=10 (mlp)" in body[1] and "0.74 [0.66, 0.82]" in body[1]


def test_a_title_wider_than_its_table_gets_its_own_line():
    from rich.table import Table

    from logitleak.report.console import print_table

    table = Table(title="Organism (/a/long/cache/path/organism-seed0-v1): held-out answer accuracy per question type")
    table.add_column("question")
    table.add_column("accuracy")
    table.add_row("background", "1.000")
    buf = io.StringIO()
    print_table(Console(file=buf), table)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "Organism (/a/long/cache/path/organism-seed0-v1): held-out answer accuracy per question type"
    assert lines[1].startswith("┏") and max(len(ln) for ln in lines[1:]) < 30       # the table keeps its width
