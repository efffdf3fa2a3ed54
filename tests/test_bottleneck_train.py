"""Training a bottleneck: a killed run resumes to the same weights; LoRA trains only adapters and its
saved adapters, merged model and transformers' own loading agree."""

import json

import numpy as np
import pytest
import torch

from logitleak.data import ProbeSet, make_shapes
from logitleak.defenses.bottleneck import BottleneckSettings
from logitleak.defenses.bottleneck_train import train_bottleneck
from logitleak.defenses.finetuned import ADAPTER_DIR, read_info
from logitleak.models.loading import load_model

TINY = dict(steps=6, batch_size=16, refresh=3, warmup=5, adversary_steps=2, adversary_batch=32, checkpoint_every=2)


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def organism(organism_dir):
    return load_model(organism_dir, device="cpu")


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_a_killed_run_resumes_at_its_checkpoint_to_the_same_weights(organism, organism_dir, tmp_path, one_thread):
    ps = make_shapes(64, questions="color", seed=3)
    settings = BottleneckSettings(protect=("shape", "size"), at="layer:3", **TINY)
    whole = train_bottleneck(organism, ps, lam=1.0, settings=settings, task="color", root=tmp_path / "a", progress=False)

    def kill(step):
        if step == 5:  # after the checkpoint at step 4 and a refresh at step 3
            raise Killed

    with pytest.raises(Killed):
        train_bottleneck(organism, ps, lam=1.0, settings=settings, task="color", root=tmp_path / "b", progress=False,
                         on_step=kill)
    run = next((tmp_path / "b").iterdir())
    assert (run / "checkpoint.safetensors").is_file() and not (run / "model").exists()
    steps = []
    resumed = train_bottleneck(organism, ps, lam=1.0, settings=settings, task="color", root=tmp_path / "b",
                               progress=False, on_step=steps.append)
    assert steps == [5, 6]  # only the steps after the checkpoint ran again
    a, b = _weights(whole), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    base = _weights(organism_dir)
    assert base.keys() == a.keys()  # the architecture's own checkpoint layout
    changed = [k for k in a if not torch.equal(a[k], base[k])]
    assert changed  # the fine-tuning moved weights (the organism is fully fine-tuned)
    info = read_info(whole)
    assert info["protect"] == ["shape", "size"] and info["at"] == "layer:3" and info["guarded_layers"] == [3, 4]
    assert info["tune"] == "full" and info["base_fingerprint"] == organism.fingerprint()
    # a finished run is reused, not retrained
    again = []
    train_bottleneck(organism, ps, lam=1.0, settings=settings, task="color", root=tmp_path / "a", progress=False,
                     on_step=again.append)
    assert again == []


def _text_set(n=48, seed=0):
    """Shapes questions as text with the shape word in the prompt: something for the bottleneck to hide."""
    ps = make_shapes(n, questions="color", seed=seed)
    prompts = [f"{p} {s}" for p, s in zip(ps.prompts, ps.attributes["shape"])]
    return ProbeSet(name="shapes-text", prompts=prompts, attributes=ps.attributes[["color", "shape"]], asked=ps.asked,
                    groups=ps.groups, images=None)


def test_lora_trains_only_adapters_and_its_saves_load_everywhere(tmp_path, one_thread):
    from peft import PeftModel
    from tiny_models import tiny_model_dir
    from transformers import AutoModelForCausalLM

    base_dir = tiny_model_dir("llama")
    adapter = load_model(base_dir, device="cpu")
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    ps = _text_set()
    settings = BottleneckSettings(protect=("shape",), tune="lora", lora_rank=4, **TINY)
    out = train_bottleneck(adapter, ps, lam=1.0, settings=settings, task="color", root=tmp_path, progress=False)
    assert all(torch.equal(before[k], v) for k, v in adapter.model.state_dict().items())  # the base is untouched
    info = read_info(out)
    assert info["tune"] == "lora"
    cfg = json.loads((out / ADAPTER_DIR / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and (out / ADAPTER_DIR / "adapter_model.safetensors").is_file()
    # the merged model: logitleak's loader and transformers' give the same logits; so does the base + adapters
    merged = load_model(out, device="cpu")
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    with_adapters = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), out / ADAPTER_DIR).eval()
    inputs = merged.build_inputs(ps.prompts[:4])
    with torch.no_grad():
        a = merged.model(**inputs).logits
        b = plain(**inputs).logits
        c = with_adapters(**inputs).logits
        d = adapter.model(**inputs).logits
    assert torch.allclose(a, b) and torch.allclose(a, c, atol=1e-5)
    assert not torch.allclose(a, d, atol=1e-4)  # and the adapters changed the model
    weights = _weights(out)
    assert not any("lora" in k for k in weights)  # merged: a plain checkpoint of the base architecture
    assert np.isfinite(info["history_tail"][-1]["task_loss"])


def test_a_response_bottleneck_trains_on_the_base_models_own_response(tmp_path, one_thread):
    """A whole response: the base model's greedy response (its end token where it ended) is the
    teacher-forced task; the adversaries read every shown position."""
    from tiny_models import tiny_model_dir

    from logitleak.capture.forward import capture
    from logitleak.defenses.bottleneck_features import response_targets

    adapter = load_model(tiny_model_dir("llama"), device="cpu")
    ps = _text_set(32, seed=1)
    cap = capture(adapter, ps, batch_size=16, generate=3, gen_k=5, progress=False)
    tokens, shown, ids = response_targets(cap, adapter)
    assert tokens.shape == shown.shape == (32, 3) and ids.shape == (32, 3, 5)
    assert torch.equal(tokens[shown], cap.gen_tokens[shown])  # the response as generated
    n = shown.sum(1)
    eos = {adapter.model.generation_config.eos_token_id, adapter.tokenizer.eos_token_id}
    ended = torch.nonzero(n < 3).flatten().tolist()
    assert ended  # the random tiny model ends some responses early
    for row in ended:  # an ended response: an end token, then nothing
        assert int(tokens[row, n[row]]) in eos and (tokens[row, n[row] + 1:] == -1).all()
    settings = BottleneckSettings(protect=("shape",), tune="lora", lora_rank=2, generate=3, at="layer:2", **TINY)
    out = train_bottleneck(adapter, ps, lam=1.0, settings=settings, task="color", root=tmp_path, progress=False,
                           response=(tokens, shown, ids))
    info = read_info(out)
    assert info["guarded_layers"] == [2] and np.isfinite(info["history_tail"][-1]["task_loss"])
