"""Defences measured by the same audit: the LEACE guarantee, monotone sweeps, clear errors."""

import json
import subprocess
import sys

import pytest
import torch

from logitleak.capture.forward import capture
from logitleak.config import make_config
from logitleak.data import make_shapes
from logitleak.defend import run_defend, split_fit_eval
from logitleak.defenses import parse_defenses
from logitleak.defenses.erasure import eraser_hook, fit_eraser
from logitleak.models.loading import load_model
from logitleak.probing.sweep import evaluate_sweep


@pytest.fixture(scope="module")
def adapter(organism_dir):
    return load_model(organism_dir, device="cpu")


def test_leace_guarantee_on_the_residual_stream(adapter):
    """After erasing 'shape' at layer 2, a held-out linear probe on residual[2] sits at the baseline;
    without erasure the same probe reads it far above."""
    ps = make_shapes(600, questions="color", seed=11)
    fit_set, eval_set = split_fit_eval(ps, seed=0)
    layer = 2
    plain_fit = capture(adapter, fit_set, batch_size=100, progress=False)
    eraser = fit_eraser(plain_fit.hidden[:, layer].float(), {"shape": fit_set.labels("shape")})
    plain = capture(adapter, eval_set, batch_size=100, progress=False)
    erased = capture(adapter, eval_set, batch_size=100, edit_hooks={layer: eraser_hook(eraser)}, progress=False)
    feats = {("plain", layer, None): plain.hidden[:, layer].float().numpy(),
             ("erased", layer, None): erased.hidden[:, layer].float().numpy()}
    df = evaluate_sweep(feats, {"shape": eval_set.labels("shape")}, probes=("linear",), n_permutations=20,
                        n_bootstrap=300, seed=0, progress=False).set_index("level")
    before, after = df.loc["plain"], df.loc["erased"]
    assert before.ci_low > before.baseline_accuracy + 0.2
    assert after.ci_low <= after.baseline_accuracy + 0.02
    assert after.accuracy < before.accuracy - 0.2
    # The hook rewrote the model's state, and later layers see the change.
    assert not torch.allclose(plain.hidden[:, layer + 1], erased.hidden[:, layer + 1])


def best_leak(tradeoff, label):
    rows = tradeoff[(tradeoff.defense_label == label) & (~tradeoff.task_relevant.astype(bool))
                    & (tradeoff.level != "residual")]
    return rows.sort_values("accuracy").iloc[-1]


def test_noise_and_rounding_do_not_increase_leakage(tmp_path, organism_dir):
    cfg = make_config({"model": str(organism_dir), "task": "color", "samples": 500, "seed": 0, "k": [5],
                       "out": str(tmp_path / "d"), "probes": {"families": ["linear"], "permutations": 10,
                                                              "folds": 3, "bootstrap": 200}})
    grid = parse_defenses("none;gauss:0.5,2,8;round:1,0;values_only")
    result = run_defend(cfg, grid, progress=False)
    t = result.tradeoff
    for sweep in (["none", "gauss:0.5", "gauss:2", "gauss:8"], ["none", "round:1", "round:0"]):
        rows = [best_leak(t, label) for label in sweep]
        for weaker, stronger in zip(rows, rows[1:]):
            assert stronger.accuracy <= weaker.ci_high + 1e-9, (weaker.defense_label, stronger.defense_label)
    # Utility is reported beside it, and output-side noise on the numbers only reorders alternatives.
    util = t.groupby("defense_label").utility_accuracy.first()
    assert util["none"] > 0.95 and util["round:1"] == util["none"]
    assert util["gauss:8"] <= util["none"]
    assert util["values_only"] == util["none"]  # redacting ids changes the report, not the answer
    for name in ("tradeoff.csv", "tradeoff.json", "report.html", "run.json", "recommendation.txt"):
        assert (result.out_dir / name).is_file()
    rows = json.loads((result.out_dir / "tradeoff.json").read_text())
    needed = {"defense", "strength", "layer", "attribute", "level", "k", "accuracy", "baseline_accuracy",
              "p_value", "v_info_bits", "utility_accuracy"}
    assert needed <= set(rows[0])
    assert result.recommendation


@pytest.mark.parametrize("spec, message", [
    ("gauss:-1", "noise scale must be 0 or more"),
    ("topk:500", "more alternatives than the vocabulary has"),
    ("leace:9", "Erasure layer 9 does not exist"),
])
def test_invalid_defence_parameters_are_clear_errors(tmp_path, organism_dir, spec, message):
    res = subprocess.run([sys.executable, "-c", "from logitleak.cli import main; main()", "defend",
                          "--model", str(organism_dir), "--defenses", spec, "--samples", "40",
                          "--out", str(tmp_path / "o"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr


def test_recommendation_refuses_when_permutations_cannot_reach_alpha():
    import pandas as pd

    from logitleak.defend import recommend

    rows = pd.DataFrame([{"defense": "none", "defense_label": "none", "task_relevant": False, "level": "topk_ids",
                          "p_value": 0.5, "utility_accuracy": 1.0, "utility_loss": 0.0, "n_permutations": 5}])
    assert recommend(rows, 0.05).startswith("No recommendation: with 5 permutations")
    rows["n_permutations"] = 99
    assert recommend(rows, 0.05).startswith("No defence is needed")
    rows["n_permutations"], rows["p_test"] = 0, "heldout"       # the default test is not bounded by a count
    assert recommend(rows, 0.05).startswith("No defence is needed")
