"""Loading any HF VLM / causal LM: every supported family, built as a tiny random model, saved,
loaded through ``load_model`` and captured; plus the errors a user can cause."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import FAMILIES, TEXT_ONLY_DROPS_IMAGE, VLM_FAMILIES, probeset_for, tiny_model_dir

from logitleak.capture.forward import capture
from logitleak.errors import LogitleakError
from logitleak.models.families import FAMILIES as FAMILY_TABLE
from logitleak.models.families import family_for
from logitleak.models.loading import load_model

# PaliGemma's processor trips a numpy-2 DeprecationWarning inside transformers.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

N = 5  # several question paraphrases of different lengths: the batch is padded


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


def _adapter(family, side=None):
    return load_model(tiny_model_dir(family), device="cpu", padding_side=side)


def _reference(adapter, probeset):
    """The model's own logits and HF hidden states at the last real token, computed directly."""
    images = list(probeset.images) if probeset.images is not None else None
    inputs = adapter.build_inputs(probeset.prompts, images)
    mask = inputs["attention_mask"]
    kw = adapter.forward_kwargs(inputs)  # no logits_to_keep: every position's logits
    with torch.no_grad():
        out = adapter.model(**kw, output_hidden_states=True)
    if adapter.padding_side == "right":
        pos = mask.sum(1) - 1
    else:
        pos = torch.full((mask.shape[0],), mask.shape[1] - 1)
    rows = torch.arange(mask.shape[0])
    hs = torch.stack([h[rows, pos] for h in out.hidden_states], dim=1)
    return out.logits[rows, pos], hs, mask


def test_components_match_config(family):
    ad = _adapter(family)
    tc = ad.model.config.get_text_config()
    assert ad.n_layers == tc.num_hidden_layers == 2
    assert ad.d_model == tc.hidden_size
    assert ad.vocab_size == ad.model.get_output_embeddings().weight.shape[0]
    assert ad.is_vlm == (family in VLM_FAMILIES)
    fam = family_for(ad.config.model_type)
    assert fam is not None and ad.components.paths["layers"] == fam.layers
    assert ad.components.paths["final_norm"] == fam.final_norm
    assert ad.unembed is ad.model.get_output_embeddings()


@pytest.mark.parametrize("side", ["right", "left"])
def test_capture_reproduces_the_model(family, side):
    ad = _adapter(family, side)
    ps = probeset_for(ad, N, seed=3)
    cap = capture(ad, ps, batch_size=N, progress=False)
    ref_logits, ref_hidden, mask = _reference(ad, ps)
    assert bool((mask == 0).any()), "the test batch must be padded"
    L = ad.n_layers
    assert cap.hidden.shape == (N, L + 1, ad.d_model) and cap.logits.shape == (N, ad.vocab_size)
    assert cap.n_layers == L
    # final logits = the model's own at the read position
    torch.testing.assert_close(cap.logits, ref_logits.float(), atol=1e-4, rtol=1e-4)
    # raw residuals: HF's hidden_states[l] for l < L; HF's last one is already normed, ours is not
    torch.testing.assert_close(cap.hidden[:, :L], ref_hidden[:, :L], atol=1e-4, rtol=1e-4)
    readout = ad.readout()
    torch.testing.assert_close(readout.normed(cap.hidden[:, L]), ref_hidden[:, L], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(cap.hidden[:, L], ref_hidden[:, L], atol=1e-3)
    # the last raw state through final norm + unembedding (+ soft-cap) gives the logits
    torch.testing.assert_close(readout(cap.hidden[:, L]), cap.logits, atol=1e-4, rtol=1e-4)


def test_batch_equals_one_at_a_time_either_padding(family):
    ad = _adapter(family, "right")
    ps = probeset_for(ad, N, seed=4)
    right = capture(ad, ps, batch_size=N, progress=False)
    single = capture(ad, ps, batch_size=1, progress=False)
    ad.set_padding_side("left")
    left = capture(ad, ps, batch_size=N, progress=False)
    for other in (single, left):
        torch.testing.assert_close(other.logits, right.logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(other.hidden, right.hidden, atol=1e-4, rtol=1e-4)


def test_family_table_is_declarative():
    names = [f.name for f in FAMILY_TABLE]
    assert len(names) == len(set(names))
    for fam in FAMILY_TABLE:
        assert fam.positions in ("mask", "model")
        if fam.layers:
            assert fam.final_norm and fam.unembed


# ----------------------------------------------------------------------------- errors

def test_image_to_text_only_model():
    ad = _adapter("gpt2")
    from logitleak.data import make_shapes

    with pytest.raises(LogitleakError, match="text-only"):
        capture(ad, make_shapes(2, seed=0), progress=False)


def test_missing_image_placeholder(tmp_path):
    from tiny_models import build_tiny

    d = build_tiny("llava", tmp_path / "m", chat_template=TEXT_ONLY_DROPS_IMAGE)
    ad = load_model(d, device="cpu")
    from logitleak.data import make_shapes

    with pytest.raises(LogitleakError, match="placeholder"):
        capture(ad, make_shapes(2, seed=0), progress=False)


def test_unmappable_architecture_then_mapping():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from logitleak.models.adapter import ModelAdapter

    d = tiny_model_dir("llama")
    model = AutoModelForCausalLM.from_pretrained(d)
    tok = AutoTokenizer.from_pretrained(d)
    model.model.stack = model.model.layers  # an architecture whose blocks live under an unusual name
    del model.model.layers
    with pytest.raises(LogitleakError, match=r"decoder layers.*mapping=\{'layers'"):
        ModelAdapter.from_model(model, tokenizer=tok)
    ad = ModelAdapter.from_model(model, tokenizer=tok, mapping={"layers": "model.stack"})
    assert ad.n_layers == 2 and ad.components.paths["layers"] == "model.stack"
    with pytest.raises(LogitleakError, match="'model.nowhere'"):
        ModelAdapter.from_model(model, tokenizer=tok, mapping={"layers": "model.nowhere"})
    with pytest.raises(LogitleakError, match="Unknown key"):
        ModelAdapter.from_model(model, tokenizer=tok, mapping={"layer": "model.stack"})


def test_mapping_file_beside_the_weights(tmp_path):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir("gpt2"), d)
    (d / "logitleak_mapping.json").write_text(json.dumps({"final_norm": "transformer.no_norm"}))
    with pytest.raises(LogitleakError, match="transformer.no_norm"):
        load_model(d, device="cpu")
    (d / "logitleak_mapping.json").write_text(json.dumps({"final_norm": "transformer.ln_f"}))
    assert load_model(d, device="cpu").components.paths["final_norm"] == "transformer.ln_f"


def test_not_a_language_model(tmp_path):
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    ViTModel(cfg).save_pretrained(tmp_path)  # safe, intact weights: refused for what it is, not for what it lacks
    with pytest.raises(LogitleakError, match="not a causal LM"):
        load_model(tmp_path, device="cpu")


def test_missing_model_is_never_downloaded(tmp_path):
    with pytest.raises(LogitleakError, match="nothing is downloaded"):
        load_model("no-such-org/no-such-model-xyz", device="cpu")
    with pytest.raises(LogitleakError, match="no config.json"):
        load_model(tmp_path, device="cpu")


def test_answer_token_ids_follow_the_prompt():
    def tokens(family):
        ad = _adapter(family)
        return ad.tokenizer.convert_ids_to_tokens(ad.answer_token_ids(["red", "circle"]))

    assert tokens("llama") == ["red", "circle"]  # word-level: the word itself
    assert tokens("qwen2") == ["red", "circle"]  # byte-level BPE after "assistant\n": no leading space
    assert tokens("gpt2") == ["Ġred", "Ġcircle"]  # byte-level BPE after a plain question: " red"
