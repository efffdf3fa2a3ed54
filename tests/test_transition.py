"""The vision-to-language levels (vision tower, projector, image positions) on every VLM family,
the store round trip, the PCA level, and Mllama (cross-attention) end to end."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_models import VLM_FAMILIES, probeset_for, tiny_model_dir

from logitleak.capture.forward import capture
from logitleak.capture.store import ActivationStore
from logitleak.capture.vision import pool_per_sample
from logitleak.errors import LogitleakError
from logitleak.levels.features import available_levels, build_features
from logitleak.models.loading import load_model
from logitleak.probing.pca import fold_pca
from logitleak.probing.sweep import evaluate_sweep

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.usefixtures("one_thread")]

N = 5


@pytest.fixture(scope="module", params=VLM_FAMILIES)
def vlm(request):
    return request.param


def test_transition_states_come_from_the_same_pass(vlm):
    ad = load_model(tiny_model_dir(vlm), device="cpu", padding_side="left")
    ps = probeset_for(ad, N, seed=3)
    cap = capture(ad, ps, batch_size=N, progress=False)
    L = ad.n_layers
    assert ad.n_vision_layers >= 1 and ad.projector is not None
    assert cap.vision.shape[:2] == (N, ad.n_vision_layers + 1)
    assert cap.projector.shape[0] == N and cap.image_hidden.shape == (N, L + 1, ad.d_model)
    # the image-position rows: HF's own hidden states averaged over the image-token positions
    inputs = ad.build_inputs(ps.prompts, list(ps.images))
    with torch.no_grad():
        out = ad.model(**ad.forward_kwargs(inputs), output_hidden_states=True)
    mask = (inputs["input_ids"] == ad.image_token_id).float().unsqueeze(-1)
    for layer in range(L):  # HF's last hidden state is normed; ours is raw
        ref = (out.hidden_states[layer] * mask).sum(1) / mask.sum(1)
        torch.testing.assert_close(cap.image_hidden[:, layer], ref.float(), atol=1e-4, rtol=1e-4)
    # one sample at a time (other padding, other batch) gives the same pooled states
    single = capture(ad, ps, batch_size=1, progress=False)
    for name in ("vision", "projector", "image_hidden"):
        torch.testing.assert_close(getattr(single, name), getattr(cap, name), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(cap.vision[:, 0], cap.vision[:, -1])
    feats = build_features(cap, ad.readout(), levels=["vision", "projector", "image_residual", "residual"],
                           layers=[0, L], ks=[1])
    assert {("vision", j, None) for j in range(ad.n_vision_layers + 1)} <= set(feats)
    assert ("projector", None, None) in feats and ("image_residual", L, None) in feats


def test_llava_vision_levels_match_the_tower():
    ad = load_model(tiny_model_dir("llava"), device="cpu")
    ps = probeset_for(ad, N, seed=1)
    cap = capture(ad, ps, batch_size=N, progress=False)
    pixels = ad.build_inputs(ps.prompts, list(ps.images))["pixel_values"]
    with torch.no_grad():
        vt = ad.model.model.vision_tower(pixels, output_hidden_states=True)
        for j, h in enumerate(vt.hidden_states):
            torch.testing.assert_close(cap.vision[:, j], h.mean(1), atol=1e-5, rtol=1e-5)
        proj = ad.model.model.multi_modal_projector(vt.hidden_states[-1][:, 1:])   # 'default': CLS dropped
    torch.testing.assert_close(cap.projector, proj.mean(1), atol=1e-5, rtol=1e-5)
    cls = capture(ad, ps, batch_size=N, progress=False, vision_pool="cls")
    torch.testing.assert_close(cls.vision[:, 1], vt.hidden_states[1][:, 0], atol=1e-5, rtol=1e-5)


def test_pooling_rules():
    h = torch.arange(24.0).reshape(4, 3, 2)                       # 2 samples x 2 tiles x 3 tokens
    torch.testing.assert_close(pool_per_sample(h, 2), h.reshape(2, 6, 2).mean(1))
    flat = torch.arange(20.0).reshape(10, 2)                      # Qwen-style: 6 + 4 tokens
    got = pool_per_sample(flat, 2, counts=torch.tensor([6, 4]))
    torch.testing.assert_close(got, torch.stack([flat[:6].mean(0), flat[6:].mean(0)]))
    merged = pool_per_sample(flat[:5], 2, counts=torch.tensor([12, 8]))   # a 2x merge: 3 + 2 tokens
    torch.testing.assert_close(merged, torch.stack([flat[:3].mean(0), flat[3:5].mean(0)]))
    with pytest.raises(LogitleakError, match="3 images for a batch of 2"):
        pool_per_sample(torch.zeros(3, 4, 2), 2)


def test_store_keeps_the_transition_levels(tmp_path):
    ad = load_model(tiny_model_dir("qwen2_vl"), device="cpu")
    ps = probeset_for(ad, 7, seed=2)
    mem = capture(ad, ps, batch_size=3, progress=False)
    stored = ActivationStore(tmp_path).extract(ad, ps, shard_size=4, batch_size=3, progress=False)
    assert stored.has_vision and stored.has_projector and stored.has_image_hidden
    back = stored.to_capture()
    for name in ("vision", "projector", "image_hidden"):
        torch.testing.assert_close(getattr(back, name), getattr(mem, name), atol=2e-2, rtol=2e-3)  # float16 on disk
    assert {"vision", "projector", "image_residual", "pca"} <= set(available_levels(stored))
    again = ActivationStore(tmp_path).extract(ad, ps, shard_size=4, batch_size=3, progress=False)
    assert again.path == stored.path  # reused, not recomputed


def test_text_models_have_no_transition_levels():
    ad = load_model(tiny_model_dir("llama"), device="cpu")
    ps = probeset_for(ad, N, seed=0)
    cap = capture(ad, ps, batch_size=N, progress=False)
    assert cap.vision is None and cap.image_hidden is None
    assert "vision" not in available_levels(cap) and "pca" in available_levels(cap)
    with pytest.raises(LogitleakError, match="needs a vision-language model"):
        build_features(cap, ad.readout(), levels=["vision"], layers=[0], ks=[1])


# ----------------------------------------------------------------------------- PCA

def test_fold_pca_uses_training_rows_only():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 6)) * [5, 3, 2, 1, 0.5, 0.1]
    train = np.zeros((2, 50), bool)
    train[0, :30], train[1, 20:] = True, True
    Z = fold_pca(X, train, 3)
    for s in range(2):
        ref = PCA(3).fit(X[train[s]]).transform(X)
        np.testing.assert_allclose(np.abs(Z[s]), np.abs(ref), atol=1e-8)   # components up to sign
    X2 = X.copy()
    X2[~train[0]] += 100 * rng.normal(size=X2[~train[0]].shape)          # test rows change: fold 0's basis does not
    np.testing.assert_allclose(np.abs(fold_pca(X2, train[:1], 3)[0][train[0]]), np.abs(Z[0][train[0]]), atol=1e-8)


def test_pca_at_full_width_matches_the_residual_row():
    rng = np.random.default_rng(5)
    n, D = 240, 12
    y = rng.integers(0, 3, n)
    centres = rng.normal(size=(3, D)) * 1.2
    X = centres[y] + rng.normal(size=(n, D)) * rng.uniform(0.5, 2, D)
    num = X[:, 0] - X[:, 1] + 0.3 * rng.normal(size=n)
    feats = {("residual", 2, None): X, ("pca", 2, D): X, ("pca", 2, 1): X}
    df = evaluate_sweep(feats, {"cls": y.astype(str), "num": num}, probes=("linear",), n_permutations=19,
                        n_bootstrap=200, progress=False, probe_params={"linear": {"C": 1.0}})
    res = df[(df.level == "residual")].set_index("attribute")
    full = df[(df.level == "pca") & (df.k == D)].set_index("attribute")
    one = df[(df.level == "pca") & (df.k == 1)].set_index("attribute")
    assert res.loc["cls", "ci_low"] <= full.loc["cls", "accuracy"] <= res.loc["cls", "ci_high"]
    assert res.loc["num", "r2_ci_low"] <= full.loc["num", "r2"] <= res.loc["num", "r2_ci_high"]
    assert full.loc["cls", "n_features"] == D and one.loc["num", "r2"] < full.loc["num", "r2"] - 0.2
    assert (df.p_value[df.level == "pca"] <= 0.05).sum() >= 3


# ----------------------------------------------------------------------------- Mllama

def test_mllama_cross_attention_audits_end_to_end(tmp_path):
    d = tiny_model_dir("mllama", n_layers=3)
    ad = load_model(d, device="cpu")
    assert ad.family.name == "mllama" and ad.layer_types == ["embedding", "self", "cross", "self"]
    out = tmp_path / "audit"
    res = subprocess.run([sys.executable, "-c", "from logitleak.cli import main; main()", "audit", "--model", str(d),
                          "--data", "shapes", "--task", "shape", "--attributes", "size,center_x", "--samples", "60", "--k",
                          "1,5", "--probes", "linear", "--permutations", "3", "--folds", "2", "--pca-dims", "1,4",
                          "--out", str(out), "--quiet"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    df = pd.read_parquet(out / "results.parquet")
    assert {"vision", "projector", "image_residual", "residual", "pca", "logit_lens_topk", "tuned_lens_topk",
            "topk_ids", "topk_logprobs"} <= set(df.level)
    resid = df[df.level == "residual"].drop_duplicates("layer").set_index("layer")["layer_type"]
    assert resid.to_dict() == {0: "embedding", 1: "self", 2: "cross", 3: "self"}
    assert set(df[df.level == "vision"].layer) == {0, 1, 2}                 # local + global encoder
    assert set(df[df.level == "pca"].k) == {1, 4}
    assert set(df.attribute) == {"shape", "size", "center_x"} and df[df.attribute == "center_x"].r2.notna().all()
