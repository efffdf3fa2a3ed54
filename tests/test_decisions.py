"""The decision module on known tables: its rules, and that the verdict, the summaries and
``defend``'s recommendation and table all read the same decisions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from logitleak.decisions import decide, recommend_defence, strongest_rows
from logitleak.defend import recommend
from logitleak.report import print_summary, verdict

try:
    from report_fixtures import LEAK_BITS_K5, make_row, make_table
except ImportError:  # tests/ imported as a package
    from tests.report_fixtures import LEAK_BITS_K5, make_row, make_table


def _api_row(attribute="shape", *, k=5, probe="linear", accuracy=0.6, baseline=0.35, p=1e-5, bits=0.4,
             relevant=False, level="topk_ids", **kw):
    return make_row(level, attribute, k=k, probe=probe, accuracy=accuracy, baseline=baseline, p=p, bits=bits,
                    n_classes=3, task_relevant=relevant, **kw)


def _defence(rows, label, utility, *, defense=None):
    df = pd.DataFrame(rows) if not isinstance(rows, pd.DataFrame) else rows.copy()
    df["defense"], df["defense_label"], df["strength"] = defense or label.split(":")[0], label, None
    df["utility_accuracy"] = utility
    return df


def _tradeoff(*parts):
    t = pd.concat(parts, ignore_index=True)
    base = float(t.loc[t["defense_label"] == "none", "utility_accuracy"].iloc[0])
    t["utility_loss"] = base - t["utility_accuracy"]
    return t


def _verdict_leaks(rows) -> list[str]:
    return [f.attribute for f in verdict(rows) if f.kind == "leak"]


# ------------------------------------------------------------------------------------ the rules


def test_holm_significant_but_interval_including_baseline_is_not_readable():
    row = _api_row(p=1e-6, accuracy=0.40, half_width=0.06)    # ci_low 0.34 <= baseline 0.35
    dec = decide(pd.DataFrame([row]))
    assert dec.table["p_holm"].iloc[0] < 0.05 and not dec.table["readable"].iloc[0]
    shape = dec.attributes["shape"]
    assert shape.measured and not shape.readable and not shape.leak and dec.status == "clean"
    lifted = decide(pd.DataFrame([_api_row(p=1e-6, accuracy=0.42, half_width=0.06)]))  # ci_low 0.36
    assert lifted.attributes["shape"].leak and lifted.status == "leak"


def test_raw_p_below_alpha_is_not_a_leak_after_holm_over_all_api_rows():
    rows = [_api_row(k=k, p=0.02) for k in (1, 2, 5)]            # Holm: 3 * 0.02 = 0.06
    dec = decide(pd.DataFrame(rows))
    assert dec.n_tests == 3
    assert dec.table["p_holm"].to_numpy() == pytest.approx([0.06] * 3)
    assert not dec.attributes["shape"].leak
    # internal levels are not in the API family and never make a leak
    inner = [make_row("residual", "shape", layer=2, accuracy=0.9, baseline=0.35, p=1e-9, bits=1.0, n_classes=3,
                      task_relevant=False)]
    dec2 = decide(pd.DataFrame(rows + inner))
    assert dec2.n_tests == 3 and not dec2.attributes["shape"].leak
    assert dec2.attributes["shape"].inside is not None and dec2.attributes["shape"].inside["level"] == "residual"


def test_strongest_reading_is_the_readable_one_with_most_bits_not_most_accuracy():
    rows = [_api_row(k=5, probe="linear", accuracy=0.80, bits=0.30),
            _api_row(k=5, probe="mlp", accuracy=0.70, bits=0.50),
            _api_row(k=10, probe="linear", accuracy=0.95, bits=0.45, p=0.5)]   # most accurate, not significant
    shape = decide(pd.DataFrame(rows)).attributes["shape"]
    assert (shape.strongest["probe"], shape.strongest["k"]) == ("mlp", 5)
    assert shape.p_holm == pytest.approx(3e-5)  # Holm over 3 tests: step-down, monotone and shape.p_value == pytest.approx(1e-5)


def test_smallest_k_with_a_leak_and_top1_prob_counts_as_k1():
    dec = decide(make_table())
    shape = dec.attributes["shape"]
    assert shape.leak and shape.smallest_k == 5 and shape.first["level"] == "topk_ids"
    assert shape.first["v_info_bits"] == pytest.approx(LEAK_BITS_K5)   # ties at k=5: the most bits
    assert set(shape.first_per_level) == {"topk_ids", "topk_logprobs", "topk_logits"}
    only_top1 = decide(pd.DataFrame([_api_row(level="top1_prob", k=None), _api_row(k=2, p=0.5)]))
    a = only_top1.attributes["shape"]
    assert a.leak and a.smallest_k is None and a.first["level"] == "top1_prob"


def test_status_of_known_tables():
    assert decide(make_table()).status == "leak"
    assert decide(make_table("null")).status == "clean"
    assert decide(make_table(levels=["residual"])).status == "no_api"
    assert decide(make_table().iloc[:0]).status == "empty"
    only_task = make_table(levels=["topk_ids"])
    assert decide(only_task[only_task["attribute"] == "color"]).status == "nothing_to_claim"
    dec = decide(make_table())
    assert [d.attribute for d in dec.leaks] == ["shape"]
    assert dec.attributes["color"].readable and not dec.attributes["color"].leak   # task-relevant: expected
    assert not dec.attributes["size"].readable and dec.attributes["size"].inside is not None


def test_summary_colour_follows_the_decision_not_the_wording():
    def styled(table) -> str:
        console = Console(record=True, width=400, force_terminal=True, color_system="standard")
        print_summary(table, console=console)
        return console.export_text(styles=True)

    assert "\x1b[1;31mLEAK: an API user CAN read" in styled(make_table())
    assert "\x1b[1mNo leak:" in styled(make_table("null"))


# ------------------------------------------------------------------------------ the recommendation


def test_recommendation_agrees_with_the_verdict_on_the_same_rows():
    leak = make_table()
    topk2 = make_table()
    topk2 = topk2[~topk2["level"].isin(["topk_ids", "topk_logprobs", "topk_logits"]) | (topk2["k"] <= 2)]
    t = _tradeoff(_defence(leak, "none", 0.95), _defence(make_table("null"), "gauss:8", 0.60),
                  _defence(topk2, "topk:2", 0.93), _defence(leak, "round:1", 0.95))
    rec = recommend_defence(t, max_loss=0.05)
    for label, d in rec.defences.items():       # per defence: the verdict on its rows says the same
        assert d.leaks == _verdict_leaks(t[t["defense_label"] == label]), label
    assert rec.defences["none"].leaks == ["shape"] and rec.defences["topk:2"].works
    assert (rec.kind, rec.label) == ("recommended", "topk:2")
    assert rec.text.startswith("Recommended: topk:2.") and "0.020 (0.950 -> 0.930)" in rec.text
    assert recommend(t, 0.05) == rec.text                     # defend's recommendation is this decision
    assert recommend_defence(t, max_loss=0.01).kind == "none_found"   # topk:2 costs 0.02; gauss:8 more
    assert recommend_defence(t, max_loss=0.5).label == "topk:2"       # still the cheapest that works


def test_recommendation_uses_holm_and_the_interval_not_uncorrected_p():
    none = [_api_row(k=k, p=1e-5) for k in (1, 5)]                        # a clear leak
    holm_only = [_api_row(k=k, p=0.03) for k in (1, 5)]                  # raw p < 0.05, Holm 0.06
    touching = [_api_row(k=k, p=1e-5, accuracy=0.37) for k in (1, 5)]     # ci_low 0.34 <= 0.35
    t = _tradeoff(_defence(none, "none", 0.9), _defence(holm_only, "gauss:1", 0.89),
                  _defence(touching, "round:0", 0.895))
    rec = recommend_defence(t, max_loss=0.05)
    assert rec.defences["gauss:1"].works and rec.defences["round:0"].works
    assert rec.label == "round:0"              # both stop the leak: the cheaper one (the old rule: neither)
    clean = _tradeoff(_defence(holm_only, "none", 0.9), _defence(touching, "gauss:1", 0.9))
    assert recommend_defence(clean, 0.05).kind == "none_needed"
    assert _verdict_leaks(clean[clean["defense_label"] == "none"]) == []


def test_recommendation_with_nothing_measured_or_only_the_task_attribute():
    t = _tradeoff(_defence([_api_row("color", relevant=True)], "none", 0.9))
    assert recommend_defence(t, 0.05).kind == "nothing_measured"
    inner_only = _tradeoff(_defence([make_row("residual", "shape", layer=1, accuracy=0.9, baseline=0.35, p=1e-6,
                                              bits=1.0, n_classes=3, task_relevant=False)], "none", 0.9))
    assert recommend_defence(inner_only, 0.05).kind == "nothing_measured"


def test_defend_table_shows_the_decisions_strongest_reading():
    from logitleak.cli.defend import tradeoff_table

    rows = [_api_row(k=5, probe="linear", accuracy=0.80, bits=0.30),
            _api_row(k=5, probe="mlp", accuracy=0.70, bits=0.50),
            _api_row("size", k=5, accuracy=0.51, baseline=0.5, p=0.4, bits=0.01),
            _api_row("color", k=5, accuracy=0.9, baseline=0.25, relevant=True)]
    t = _tradeoff(_defence(rows, "none", 0.9))
    rec = recommend_defence(t, 0.05)
    best = strongest_rows(rec)
    assert list(best["attribute"]) == ["shape", "size"]                    # the task attribute is no leak
    assert best.loc[0, "probe"] == "mlp" and bool(best.loc[0, "leak"]) and not bool(best.loc[1, "leak"])
    assert best.loc[0, "p_holm"] == pytest.approx(4e-5)   # Holm over all 4 API tests, task attribute included
    console = Console(record=True, width=200)
    console.print(tradeoff_table(rec))
    out = console.export_text()
    line = next(ln for ln in out.splitlines() if "shape" in ln)
    assert "LEAK" in line and "(mlp)" in line and "0.700 [0.670, 0.730] vs 0.350" in line
    assert "no leak" in next(ln for ln in out.splitlines() if "size" in ln)
    assert np.isfinite(best["utility_accuracy"]).all()


def test_tradeoff_plot_draws_each_defences_strongest_api_reading_not_the_erased_residual():
    from logitleak.decisions import decide_defences
    from logitleak.report.defences import tradeoff_plot, tradeoff_readings

    def rows(bits_api):
        return [_api_row(k=5, probe="linear", accuracy=0.5, bits=bits_api),
                _api_row(k=5, probe="mlp", accuracy=0.6, bits=bits_api + 0.1),
                make_row("residual", "shape", layer=2, accuracy=0.9, baseline=0.35, p=1e-9, bits=1.2, n_classes=3,
                         task_relevant=False)]
    t = _tradeoff(_defence(rows(0.4), "none", 0.9), _defence(rows(0.05), "leace:2", 0.85))
    t["strength"] = [None] * 3 + [2] * 3
    drawn = tradeoff_readings(t, decide_defences(t))
    assert set(drawn["level"]) == {"topk_ids"} and list(drawn["defense_label"]) == ["none", "leace:2"]
    assert list(drawn["v_info_bits"]) == pytest.approx([0.5, 0.15])       # the mlp rows: most bits
    assert list(drawn["strength"].fillna(-1)) == [-1, 2]                 # the defence's setting survives
    assert tradeoff_plot(t, {"shape": False}, decide_defences(t)) is not None
    plain = t.drop(columns=["defense_label"])                              # not a defend table: drawn as it is
    assert len(tradeoff_readings(plain, None)) == len(plain)


def test_no_defence_when_none_is_needed_and_ties_go_to_the_grid_order():
    quiet = [_api_row(k=5, p=0.4, accuracy=0.36)]
    loud = [_api_row(k=5, p=1e-6)]
    # noise that happens to raise answer accuracy (negative loss) is still not recommended over nothing
    t = _tradeoff(_defence(quiet, "none", 0.90), _defence(quiet, "gauss:0.1", 0.91))
    assert (recommend_defence(t, 0.05).kind, recommend_defence(t, 0.05).label) == ("none_needed", "none")
    t = _tradeoff(_defence(loud, "none", 0.90), _defence(quiet, "round:1", 0.88), _defence(quiet, "gauss:1", 0.88))
    assert recommend_defence(t, 0.05).label == "round:1"          # equal loss: the one listed first
    t = _tradeoff(_defence(loud, "none", 0.90), _defence(quiet, "gauss:1", 0.88), _defence(quiet, "round:1", 0.88))
    assert recommend_defence(t, 0.05).label == "gauss:1"


def test_report_tradeoff_table_shows_each_defences_decisions():
    from logitleak.decisions import decide_defences
    from logitleak.report.defences import tradeoff_table

    t = _tradeoff(_defence([_api_row(k=5, p=1e-6)], "none", 0.9),
                  _defence([_api_row(k=5, p=0.03), _api_row(k=2, p=0.03)], "gauss:1", 0.88))   # Holm: 0.06
    html = tradeoff_table(t, decide_defences(t))
    rows = html.split("<tr>")[2:]
    assert len(rows) == 3 and "Holm p" in html and "status" in html
    assert "LEAK" in rows[0] and "1.0e-06" in rows[0]
    assert all("LEAK" not in r and "0.060" in r and "0.030" in r for r in rows[1:])


def test_bits_are_shown_above_zero_only_beyond_float_rounding():
    from logitleak.decisions import bits_shown
    from logitleak.decisions.rules import BITS_RESOLUTION
    from logitleak.report.wording import bits_text

    rounding = _api_row(bits=2e-9)
    rounding.update(v_info_ci_low=1.2e-8, v_info_ci_high=6.9e-8)      # constant features through float32
    assert not bits_shown(rounding) and bits_text(rounding).endswith("not shown above zero")
    assert not bits_shown({**rounding, "v_info_ci_low": BITS_RESOLUTION})
    assert bits_shown({**rounding, "v_info_ci_low": 2 * BITS_RESOLUTION})
    assert bits_shown(_api_row(bits=0.4)) and not bits_shown({**rounding, "v_info_ci_low": None})
