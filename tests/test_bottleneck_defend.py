"""`defend` with a trained bottleneck, small scale: fine-tuned on the fit split, audited by the unchanged
audit on the held-out split with fresh probes of every family (the MLP asserted), the readings of the
protected attributes down while the colour answer stays right, and a model that serve, audit and
transformers load."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from logitleak.config import make_config
from logitleak.defend import run_defend
from logitleak.defenses import parse_defenses
from logitleak.defenses.bottleneck import BottleneckSettings
from logitleak.defenses.finetuned import read_info
from logitleak.models.loading import load_model

PROTECT = ("shape", "size")


@pytest.fixture(scope="module")
def defended(organism_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bneck") / "d"
    cfg = make_config({"model": str(organism_dir), "task": "color", "samples": 420, "seed": 0, "k": [20],
                       "attributes": list(PROTECT), "out": str(out),
                       "probes": {"families": ["linear"], "folds": 3, "bootstrap": 200, "workers": 0}})
    settings = BottleneckSettings(at="output", steps=120, batch_size=32, refresh=40, warmup=100, checkpoint_every=40)
    return run_defend(cfg, parse_defenses("none;bottleneck:1"), bottleneck=settings, fit_samples=270,
                      progress=False)


def _api(t: pd.DataFrame, label: str) -> pd.DataFrame:
    return t[(t.defense_label == label) & (t.level == "topk_ids") & t.attribute.isin(PROTECT)]


def test_fresh_probes_read_less_of_the_protected_attributes_and_the_answer_stays(defended):
    t = defended.tradeoff
    # every family, the MLP included, although the run asked for the linear probe only
    b = t[t.defense_label == "bottleneck:1"]
    for a in PROTECT:
        assert {"linear", "mlp"} <= set(b[(b.attribute == a) & (b.level == "topk_ids")].probe)
        assert set(b[(b.attribute == a) & (b.level == "residual")].layer.astype(int)) == {1, 2, 3, 4}
    assert set(t[t.defense_label == "none"].probe) == {"linear"}
    util = t.groupby("defense_label").utility_accuracy.first()
    assert util["none"] >= 0.95 and util["bottleneck:1"] >= 0.95
    gain = {label: (g.accuracy - g.baseline_accuracy).groupby(g.attribute).max()
            for label, g in ((lab, _api(t, lab)) for lab in ("none", "bottleneck:1"))}
    # the undefended top-20 reads shape well above its baseline at this scale (150 audited samples; size
    # only barely with the linear probe), and the bottleneck takes a good part of that away on samples
    # the fine-tuning never saw
    assert gain["none"]["shape"] > 0.2
    assert gain["bottleneck:1"]["shape"] < 0.75 * gain["none"]["shape"]
    assert (t[t.defense_label == "bottleneck:1"].bottleneck_at == "output").all()


def test_the_run_record_and_the_recommendation_describe_the_bottleneck(defended):
    run = json.loads((defended.out_dir / "run.json").read_text())
    info = run["bottlenecks"]["bottleneck:1"]
    assert info["protect"] == list(PROTECT) and info["at"] == "output"
    assert set(info["gone_from_layer"]) == set(PROTECT)
    assert "bottleneck:1 (output)" in defended.recommendation and "residual stream:" in defended.recommendation
    saved = read_info(info["path"])
    assert saved["lambda"] == 1.0 and saved["train_samples"] == run["n_fit_samples"]
    assert abs(run["n_fit_samples"] - 270) <= 3 and run["n_samples"] + run["n_fit_samples"] == 420


def test_the_saved_bottleneck_loads_in_transformers_audit_and_serve(defended):
    from transformers import LlavaForConditionalGeneration

    from logitleak.data import make_shapes
    from logitleak.serve.app import build_engine

    path = json.loads((defended.out_dir / "run.json").read_text())["bottlenecks"]["bottleneck:1"]["path"]
    ours = load_model(path, device="cpu")
    theirs = LlavaForConditionalGeneration.from_pretrained(path).eval()
    engine, name = build_engine(path, progress=False)
    ps = make_shapes(4, questions="color", seed=9)
    inputs = ours.build_inputs(ps.prompts, ps.images)
    with torch.no_grad():
        a = ours.model(**inputs).logits[:, -1]
        b = theirs(**inputs).logits[:, -1]
        c = engine.adapter.model(**inputs).logits[:, -1]
    assert torch.allclose(a, b) and torch.allclose(a, c)
    assert name == "model"


def test_bad_bottleneck_flags_are_one_sentence(tmp_path, organism_dir):
    for args, message in ((["--bottleneck-at", "layer:9"], "--bottleneck-at layer:9 does not exist"),
                          (["--protect", "color"], "--protect names the task attribute 'color'"),
                          (["--bottleneck-at", "middle"], "--bottleneck-at 'middle' is not a place")):
        res = subprocess.run([sys.executable, "-c", "from logitleak.cli import main; main()", "defend", "--model",
                              str(organism_dir), "--defenses", "bottleneck:1", "--samples", "40", "--out",
                              str(tmp_path / "o"), "--quiet", *args], capture_output=True, text=True, timeout=300)
        assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr
