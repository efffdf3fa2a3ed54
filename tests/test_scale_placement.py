"""``--device auto``: the placement plan across GPUs and CPU memory (checked on the meta device, no
GPU needed), and the capture through accelerate's hooks on a model split across several device-map
entries (two CPU entries and a disk-offloaded block), equal bit for bit to the plain model's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import probeset_for, tiny_model_dir

from logitleak.capture.forward import capture
from logitleak.capture.store import ActivationStore
from logitleak.errors import LogitleakError
from logitleak.models.adapter import ModelAdapter
from logitleak.models.devices import check_device, compute_device, placement
from logitleak.models.loading import load_model

N_LAYERS = 6


def _empty(family: str, n_layers: int = N_LAYERS):
    """The model of ``family`` on the meta device: shapes and sizes only, no weights."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    from logitleak.models.loading import _model_class

    config = AutoConfig.from_pretrained(tiny_model_dir(family, n_layers=n_layers))
    with init_empty_weights():
        model = _model_class(config).from_config(config)
    assert all(p.device.type == "meta" for p in model.parameters())
    return model


def _bytes(module) -> int:
    return sum(p.numel() * 4 for p in module.parameters())


def _block_of(name: str, blocks: list[str]) -> str | None:
    return next((b for b in blocks if name == b or name.startswith(b + ".")), None)


def test_auto_plan_splits_the_blocks_across_two_gpus_whole():
    model = _empty("llama")
    block = _bytes(model.model.layers[0])
    total = _bytes(model)
    gpu = int(total * 0.8)  # neither GPU holds the model alone (accelerate keeps room for its largest block): split
    device_map = placement(model, {0: gpu, 1: gpu, "cpu": 10 * total}, dtype=torch.float32)
    blocks = [f"model.layers.{i}" for i in range(N_LAYERS)]
    where = {}
    for name, _ in model.named_parameters():  # every parameter is placed, each block on exactly one device
        entry = next(k for k in device_map if name == k or name.startswith(k + "."))
        b = _block_of(name, blocks)
        if b is not None:
            assert where.setdefault(b, device_map[entry]) == device_map[entry], f"block {b} was split"
    assert set(where) == set(blocks)
    assert {where[b] for b in blocks} == {0, 1}  # the decoder spans both GPUs, in order
    order = [where[b] for b in blocks]
    assert order == sorted(order)
    assert device_map["model.embed_tokens"] == 0
    on = {d: sum(_bytes(model.get_submodule(k)) for k, v in device_map.items() if v == d) for d in (0, 1)}
    assert all(on[d] <= gpu for d in (0, 1)) and block < gpu


def test_auto_plan_spills_to_cpu_memory_and_refuses_the_disk():
    model = _empty("llama")
    block = _bytes(model.model.layers[0])
    device_map = placement(model, {0: 2 * block, "cpu": 100 * _bytes(model)}, dtype=torch.float32)
    assert "cpu" in device_map.values() and 0 in device_map.values()
    with pytest.raises(LogitleakError, match=r"^--device auto: the model does not fit the visible GPUs and CPU memory "
                                             r"\(GPU 0 0\.0 GiB, cpu 0\.0 GiB\); \d+ module\(s\) from '.+' on would go "
                                             r"to disk\. Free memory, add GPUs, or load it in a smaller --dtype\.$"):
        placement(model, {0: 2 * block, "cpu": 2 * block}, dtype=torch.float32)


def test_auto_plan_of_a_vlm_keeps_vision_tower_and_decoder_blocks_whole():
    model = _empty("llava")
    total = _bytes(model)
    device_map = placement(model, {0: total // 2, 1: total // 2, "cpu": 10 * total}, dtype=torch.float32)
    names = [n for n, _ in model.named_parameters()]
    assert all(any(n == k or n.startswith(k + ".") for k in device_map) for n in names)
    assert "disk" not in device_map.values() and {0, 1} <= set(device_map.values())


def test_auto_device_and_the_compute_device_on_a_cpu_machine():
    assert check_device("auto") == "auto"
    if not torch.cuda.is_available():
        assert compute_device("auto") == compute_device(None) == "cpu"
    assert compute_device("cuda:1") == "cuda:1"
    with pytest.raises(LogitleakError, match=r"^--device 'gpu' is not a torch device; use auto, cpu, cuda, cuda:N or mps\.$"):
        check_device("gpu")


@pytest.fixture(scope="module")
def plain():
    return load_model(tiny_model_dir("llama", n_layers=N_LAYERS), device="cpu")


def _split(tmp_path, offload_block: int | None = None) -> ModelAdapter:
    """The same model dispatched by accelerate with one device-map entry per block, every entry
    ``cpu`` (two and more of them: the hooks that move states between devices run on every block),
    optionally one block offloaded to disk (its weights live on the meta device until its hook
    loads them for the pass)."""
    from accelerate import dispatch_model
    from transformers import AutoModelForCausalLM

    d = tiny_model_dir("llama", n_layers=N_LAYERS)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    device_map.update({f"model.layers.{i}": "cpu" for i in range(N_LAYERS)})
    if offload_block is not None:  # that block, the final norm and the unembedding on disk
        device_map.update({f"model.layers.{offload_block}": "disk", "model.norm": "disk", "lm_head": "disk"})
    model = dispatch_model(model, device_map, main_device="cpu", offload_dir=str(tmp_path / "offload"), force_hooks=True)
    assert hasattr(model.model.layers[0], "_hf_hook")  # accelerate's hooks are on the blocks
    if offload_block is not None:
        assert model.model.layers[offload_block].mlp.up_proj.weight.device.type == "meta"
    from transformers import AutoTokenizer

    return ModelAdapter.from_model(model, tokenizer=AutoTokenizer.from_pretrained(d), name="split")


@pytest.mark.parametrize("offload_block", [None, 3])
def test_capture_through_a_split_model_equals_the_plain_one(plain, tmp_path, offload_block):
    split = _split(tmp_path, offload_block)
    ps = probeset_for(plain, 7, seed=5)
    want = capture(plain, ps, batch_size=4, progress=False)
    got = capture(split, ps, batch_size=4, progress=False)
    assert torch.equal(got.hidden, want.hidden) and torch.equal(got.logits, want.logits)
    stored = ActivationStore(tmp_path / "store").extract(split, ps, shard_size=4, batch_size=4, progress=False)
    np.testing.assert_array_equal(stored.layer(N_LAYERS), want.hidden[:, N_LAYERS].numpy())
    assert split.fingerprint() == plain.fingerprint()  # offloaded weights are read for the key too
    readout, ref = split.readout(), plain.readout()
    assert torch.equal(readout.weight, ref.weight) and readout.fingerprint() == ref.fingerprint()
    h = want.hidden[:, 2]
    for _ in range(2):  # the readout's copy of the norm keeps its weights (no hook offloads them again)
        assert torch.equal(readout(h), ref(h))


def test_load_model_auto_on_a_cpu_machine_equals_cpu(plain):
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine auto places the model on the GPUs")
    auto = load_model(tiny_model_dir("llama", n_layers=N_LAYERS), device="auto")
    assert auto.device.type == "cpu" and auto.fingerprint() == plain.fingerprint()
    ps = probeset_for(plain, 5, seed=1)
    assert torch.equal(capture(auto, ps, progress=False).hidden, capture(plain, ps, progress=False).hidden)


def test_readout_moves_and_stays_put_on_its_own_device(plain):
    readout = plain.readout()
    assert readout.to("cpu") is readout and readout.device.type == "cpu"
    h = torch.randn(3, plain.d_model, dtype=torch.float16)
    assert readout(h).dtype == torch.float32 and readout(h).shape == (3, plain.vocab_size)
