"""Acceptance on the organism: the box centre from the residual stream, the vision tower's last
layer reads every attribute it was pretrained on, and the API rows for the centre exist."""

import numpy as np
import pandas as pd
import pytest

from logitleak.capture.forward import capture
from logitleak.data import make_shapes
from logitleak.data.shapes import ATTRIBUTES
from logitleak.levels.features import build_features
from logitleak.models.loading import load_model
from logitleak.probing.sweep import evaluate_sweep

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def organism_results(organism_dir):
    ad = load_model(organism_dir, device="cpu")
    ps = make_shapes(700, questions="color", seed=11)
    cap = capture(ad, ps, batch_size=100, progress=False)
    feats = build_features(cap, ad.readout(), levels=["vision", "projector", "residual", "topk_ids", "topk_logprobs"],
                           layers=range(ad.n_layers + 1), ks=[20], vision_layers=[ad.n_vision_layers])
    kw = dict(groups=ps.groups, probes=("linear",), n_permutations=9, n_bootstrap=100, progress=False,
              probe_params={"linear": {"C": 1.0}})
    # classes at the vision tower's last layer and the projector; the centre everywhere (regression is cheap)
    tower = {k: v for k, v in feats.items() if k[0] in ("vision", "projector")}
    classes = evaluate_sweep(tower, {a: ps.labels(a) for a in ATTRIBUTES}, task_attribute="color", **kw)
    centre = evaluate_sweep(feats, {a: ps.labels(a) for a in ("center_x", "center_y")}, **kw)
    return pd.concat([classes, centre], ignore_index=True), ad


def test_box_centre_from_the_residual_stream(organism_results):
    df, ad = organism_results
    res = df[(df.level == "residual")]
    for attr in ("center_x", "center_y"):
        rows = res[res.attribute == attr]
        best = rows.loc[rows.r2.idxmax()]
        # The organism's centre R^2 is a property of its training, which float rounding steers: 0.89
        # (x) and 0.91 (y) on one CPU, above 0.9 on another. The claim is "read well, far above chance".
        assert best.r2 >= 0.85 and best.r2 - best.control_r2 >= 0.8, (attr, best.r2, best.control_r2)
        assert best.layer >= 1, (attr, best.layer)   # layer 0 is the embedding: no position there
        for level in ("topk_ids", "topk_logprobs"):   # what the top-20 logprobs with ids / sorted values give
            row = df[(df.level == level) & (df.k == 20) & (df.attribute == attr)].iloc[0]
            assert np.isfinite(row.r2) and np.isfinite(row.mae) and row.baseline_mae > 0
        ids = df[(df.level == "topk_ids") & (df.attribute == attr)].iloc[0]
        assert ids.mae < ids.baseline_mae and ids.p_value <= 0.1   # the ids carry the position, in pixels


def test_vision_tower_reads_what_it_was_pretrained_on(organism_results):
    df, ad = organism_results
    last = df[(df.level == "vision") & (df.layer == ad.n_vision_layers)].set_index("attribute")
    for attr in ATTRIBUTES:
        assert last.loc[attr, "accuracy"] > 0.9, (attr, last.loc[attr, "accuracy"])
    assert df[df.level == "projector"].shape[0] == len(ATTRIBUTES) + 2
