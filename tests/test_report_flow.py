"""The report's information-flow figure and its numeric-attribute rows and statements."""

import math

import pandas as pd

from logitleak.decisions import annotate, decide
from logitleak.report import build_report, verdict_text
from logitleak.report.flow import flow_plot, pca_plot
from logitleak.report.numeric import numeric_findings


def _row(level, layer, k, attr, bits, **kw):
    base = {"level": level, "layer": layer, "k": k, "attribute": attr, "probe": "linear",
            "task_relevant": attr == "color", "n": 400, "v_info_bits": bits, "v_info_ci_low": bits - 0.1,
            "v_info_ci_high": bits + 0.1, "p_value": 0.01, "p_value_tail": 1e-6}
    if attr == "center_x":   # numeric: R² and MAE, no accuracy
        r2 = 1 - 2 ** (-2 * bits)
        base.update(target="numeric", r2=r2, r2_ci_low=r2 - 0.05, r2_ci_high=r2 + 0.05, mae=4 * (1 - r2) + 0.5,
                    baseline_mae=4.4, accuracy=math.nan, baseline_accuracy=math.nan)
    else:
        base.update(accuracy=0.5 + bits / 6, ci_low=0.45 + bits / 6, ci_high=0.55 + bits / 6, baseline_accuracy=0.15,
                    entropy_bits=3.0)
    base.update(kw)
    return base


def table():
    rows = []
    for attr in ("color", "center_x"):
        rows += [_row("vision", j, None, attr, 0.5 + 0.4 * j) for j in range(4)]
        rows.append(_row("projector", None, None, attr, 1.6))
        rows += [_row("image_residual", l, None, attr, 1.6) for l in range(5)]
        rows += [_row("residual", l, None, attr, 0.4 * l) for l in range(5)]
        rows += [_row("pca", l, d, attr, 0.4 * l * d / 64) for l in (2, 4) for d in (1, 4, 16, 64)]
        rows += [_row("topk_ids", None, 20, attr, 0.5), _row("topk_logprobs", None, 20, attr, 0.02, p_value=0.6,
                                                             p_value_tail=0.6)]
    return pd.DataFrame(rows)


def test_flow_figure_and_numeric_rows(tmp_path):
    df = table()
    ann = annotate(df)
    num = ann[ann.attribute == "center_x"]
    # a numeric row is readable when significant and its R² interval is above the training mean's 0
    assert num[num.level == "topk_ids"].readable.all() and not num[num.level == "topk_logprobs"].readable.any()
    dec = decide(df)
    plot = flow_plot(dec, relevant=False)
    assert plot is not None and plot.data_uri.startswith("data:image/png;base64,") and "projector" in plot.title
    assert flow_plot(decide(df[~df.level.isin(["vision", "projector", "image_residual"])]), False) is None
    curve = pca_plot(dec, relevant=False)
    assert curve is not None and "bottleneck" in curve.title and pca_plot(decide(df[df.level != "pca"]), False) is None
    (finding,) = numeric_findings(dec)
    ids = num[num.level == "topk_ids"].iloc[0]
    assert f"within {ids.mae:.2f}" in finding.text and "training mean is off by 4.40" in finding.text
    assert "top-20 logprobs with ids" in finding.text and "sorted logprobs (no ids)" in finding.text
    text = " ".join(verdict_text(df))
    assert "LEAK — center_x" in text and "R² " in text and "MAE" in text
    html = build_report(df, {"model": "m"}, tmp_path / "r.html").read_text()
    assert "Information flow" in html and "R² " in html and "d-dimensional bottleneck" in html
