"""Open report.html in headless Chromium: every plot image loads, the page logs no errors, the
report's own Content-Security-Policy (no network, data: images only) holds, and at 1400x900 the
first screen holds the verdict and the matrix without scrolling.

A copy of the report gets a small probe script (its CSP widened only by inline scripts) that,
on window load, writes what it saw into the DOM; ``--dump-dom`` brings it back. A deliberately
broken control image proves the probe can fail. A screenshot of the untouched report is saved
at /tmp/report_screenshot.png for a human to look at."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

try:
    from report_fixtures import make_table, make_tradeoff, make_wide_table, run_info
except ImportError:  # tests/ imported as a package
    from tests.report_fixtures import make_table, make_tradeoff, make_wide_table, run_info

from logitleak.report import build_report
from logitleak.report.html import CSP

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (`make browser` installs Debian's chromium)")

SCREENSHOT = Path("/tmp/report_screenshot.png")

PROBE = """<script>
(function () {
  var errors = [];
  window.addEventListener('error', function (e) {
    var t = e.target || {};
    errors.push({what: 'error', msg: String(e.message || ''), src: String((t.alt || t.src || t.href || '')).slice(0, 60)});
  }, true);
  window.addEventListener('securitypolicyviolation', function (e) {
    errors.push({what: 'csp', msg: e.violatedDirective + ' ' + e.blockedURI});
  });
  ['error', 'warn'].forEach(function (level) {
    var orig = console[level];
    console[level] = function () {
      errors.push({what: 'console.' + level, msg: Array.prototype.join.call(arguments, ' ')});
      return orig.apply(console, arguments);
    };
  });
  window.addEventListener('load', function () {
    var imgs = Array.prototype.slice.call(document.images);
    var out = document.createElement('pre');
    out.id = '__probe';
    out.textContent = 'PROBE' + JSON.stringify({
      images: imgs.map(function (i) { return {alt: i.alt, ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth}; }),
      errors: errors,
      title: document.title,
      viewport: [window.innerWidth, window.innerHeight],
      boxes: ['verdict-sentence', 'matrix', 'flow-overview'].reduce(function (acc, id) {
        var el = document.getElementById(id);
        if (el) { var r = el.getBoundingClientRect(); acc[id] = [r.left, r.top, r.right, r.bottom]; }
        return acc;
      }, {}),
      verdict: (document.getElementById('verdict-sentence') || {}).textContent || ''
    }) + 'ENDPROBE';
    document.body.appendChild(out);
  });
})();
</script>"""
CONTROL = '<img alt="__control" src="data:image/png;base64,AAAAAAAA">'


def _chromium(*args: str, tmp: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
           f"--user-data-dir={tmp / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("browser")
    return build_report(make_table(), run_info(problems=["sample 3: endpoint timed out"]), d / "report.html",
                        tradeoff=make_tradeoff(), recommendation="Return k<=2 and drop token ids.")


def _probe(report: Path, tmp_path: Path, *, control: bool = True) -> dict:
    """Open a probed copy of ``report`` at 1400x900 and return what the probe saw."""
    text = report.read_text(encoding="utf-8")
    assert CSP in text
    probed = text.replace(CSP, CSP + "; script-src 'unsafe-inline'", 1)
    probed = re.sub(r"(<head[^>]*>)", lambda m: m.group(1) + PROBE, probed, count=1)
    if control:
        probed = probed.replace("</body>", CONTROL + "</body>", 1)
    page = tmp_path / "probed.html"
    page.write_text(probed, encoding="utf-8")
    res = _chromium("--window-size=1400,900", "--virtual-time-budget=10000", "--dump-dom", page.as_uri(), tmp=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    m = re.search(r'<pre id="__probe">PROBE(.*?)ENDPROBE</pre>', res.stdout, flags=re.S)
    assert m, f"the probe did not report; stdout tail: {res.stdout[-500:]!r}"
    return json.loads(html.unescape(m.group(1)))


def test_every_plot_loads_and_the_page_logs_no_errors(report, tmp_path):
    seen = _probe(report, tmp_path)
    plots = [i for i in seen["images"] if i["alt"] != "__control"]
    assert len(plots) == 8, plots            # the first screen's flow figure, 3 + 3 per side, the trade-off
    bad = [i for i in plots if not i["ok"]]
    assert not bad, f"plot images that did not load: {bad}"
    assert all(i["w"] >= 300 for i in plots)
    # the control image must be seen as broken, or the probe proves nothing
    control = [i for i in seen["images"] if i["alt"] == "__control"]
    assert control and not control[0]["ok"]
    errors = [e for e in seen["errors"] if "__control" not in e.get("src", "")]
    assert errors == [], errors
    assert seen["title"].startswith("logitleak audit")


@pytest.fixture(scope="module")
def wide_report(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("wide")
    return build_report(make_wide_table(), run_info(problems=["sample 3: endpoint timed out"]), d / "report.html")


@pytest.mark.parametrize("which", ["report", "wide_report"])
def test_the_first_screen_holds_the_verdict_and_the_matrix_at_1400x900(which, request, tmp_path):
    report = request.getfixturevalue(which)     # 3 attributes x 7 levels, and the demo's 7 x 14
    seen = _probe(report, tmp_path, control=False)
    assert seen["viewport"][0] == 1400 and seen["viewport"][1] <= 900
    height = seen["viewport"][1]
    boxes = seen["boxes"]
    for name in ("verdict-sentence", "matrix", "flow-overview"):      # laid out, and on the first screen
        left, top, right, bottom = boxes[name]
        assert 0 <= left < right <= 1400 and 0 <= top < bottom <= height, (name, boxes[name], height)
    assert boxes["verdict-sentence"][3] <= boxes["matrix"][1]        # the verdict above the matrix
    n = 1 if which == "report" else 3                          # shape and its two copies leak
    assert seen["verdict"].startswith(f"LEAK: an API user CAN read {n} of the")

    shot = tmp_path / "first.png"
    res = _chromium(f"--screenshot={shot}", "--window-size=1400,900", "--virtual-time-budget=10000",
                    report.as_uri(), tmp=tmp_path)
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1400, 900)
        px = np.asarray(im.convert("RGB"), dtype=int)

    def crop(name):
        left, top, right, bottom = (int(round(v)) for v in boxes[name])
        return px[top:bottom, left:right]

    def reddish(a):
        return int(((a[..., 0] - a[..., 2] > 60) & (a[..., 0] > 150)).sum())

    def bluish(a):
        return int(((a[..., 2] - a[..., 0] > 40) & (a[..., 2] > 90)).sum())

    def pink(a):
        r, g, b = a[..., 0], a[..., 1], a[..., 2]
        return int(((r > 240) & (g < 240) & (b < 240) & (r - g > 10)).sum())

    verdict, matrix = crop("verdict-sentence"), crop("matrix")
    assert verdict.size and pink(verdict) > 0.5 * verdict.shape[0] * verdict.shape[1]   # the pale red LEAK box
    assert reddish(verdict[:, :8]) > 0.5 * 8 * verdict.shape[0]                        # with its red edge
    # the matrix is painted: red LEAK cells (shape at the API levels) and blue readable ones
    assert reddish(matrix) > 1500 and bluish(matrix) > 3000
    gray = px.mean(axis=2)
    assert gray.max() - gray.min() > 100                              # not a blank page
    if which == "wide_report":
        shutil.copyfile(shot, SCREENSHOT)
