"""capture(): read position, edit hooks, logits transform, batching and streaming."""

from __future__ import annotations

import pytest
import torch
from tiny_models import probeset_for, tiny_model_dir

from logitleak.capture.forward import Capture, capture, concat_captures, iter_capture, read_positions
from logitleak.errors import LogitleakError
from logitleak.models.loading import load_model


@pytest.fixture(scope="module")
def llava():
    return load_model(tiny_model_dir("llava"), device="cpu")


@pytest.fixture(scope="module")
def gpt2():
    return load_model(tiny_model_dir("gpt2"), device="cpu")


def test_read_positions_either_padding_side():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert read_positions(right).tolist() == [2, 4, 0]
    assert read_positions(left).tolist() == [4, 4, 4]
    assert read_positions(right[:2], -2).tolist() == [1, 3]
    assert read_positions(left[:2], -3).tolist() == [2, 2]
    with pytest.raises(LogitleakError, match="before the start"):
        read_positions(left, -2)  # the last row has a single token
    with pytest.raises(LogitleakError, match="not valid"):
        read_positions(right, "first")


@pytest.mark.parametrize("name", ["llava", "gpt2"])
def test_edit_hook_changes_the_stream_from_its_layer_on(name, request):
    ad = request.getfixturevalue(name)
    ps = probeset_for(ad, 4, seed=1)
    base = capture(ad, ps, progress=False)
    n_hooks = [len(layer._forward_hooks) + len(layer._forward_pre_hooks) for layer in ad.layers]
    shift = torch.randn(ad.d_model)
    L = ad.n_layers
    # the last block's output: the stored state and the logits both see the edit
    cap = capture(ad, ps, edit_hooks={L: lambda h: h + shift}, progress=False)
    torch.testing.assert_close(cap.hidden[:, :L], base.hidden[:, :L])
    torch.testing.assert_close(cap.hidden[:, L], base.hidden[:, L] + shift, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cap.logits, ad.readout()(base.hidden[:, L] + shift), atol=1e-4, rtol=1e-4)
    # an earlier block: its output is edited and every later block sees the edit
    cap1 = capture(ad, ps, edit_hooks={1: lambda h: h * 0.0}, progress=False)
    torch.testing.assert_close(cap1.hidden[:, 0], base.hidden[:, 0])
    assert float(cap1.hidden[:, 1].abs().max()) == 0.0
    assert not torch.allclose(cap1.hidden[:, 2], base.hidden[:, 2])
    assert cap1.meta["edited_layers"] == [1]
    # hooks are gone afterwards: the same pass gives the unedited result again
    assert [len(layer._forward_hooks) + len(layer._forward_pre_hooks) for layer in ad.layers] == n_hooks
    torch.testing.assert_close(capture(ad, ps, progress=False).hidden, base.hidden)


def test_hooks_removed_when_a_pass_fails(llava):
    ps = probeset_for(llava, 2, seed=1)
    before = [len(layer._forward_hooks) for layer in llava.layers]
    with pytest.raises(LogitleakError, match="same shape"):
        capture(llava, ps, edit_hooks={1: lambda h: h[:, :1]}, progress=False)
    assert [len(layer._forward_hooks) for layer in llava.layers] == before


def test_bad_edit_layers(llava):
    ps = probeset_for(llava, 2, seed=1)
    for bad in (0, llava.n_layers + 1):
        with pytest.raises(LogitleakError, match="block outputs are layers 1"):
            capture(llava, ps, edit_hooks={bad: lambda h: h}, progress=False)


def test_logits_transform_only_touches_logits(gpt2):
    ps = probeset_for(gpt2, 3, seed=2)
    base = capture(gpt2, ps, progress=False)
    cap = capture(gpt2, ps, logits_transform=lambda x: x / 2.0, progress=False)
    torch.testing.assert_close(cap.logits, base.logits / 2.0)
    torch.testing.assert_close(cap.hidden, base.hidden)
    assert cap.meta["logits_transform"] is True


def test_iter_capture_batches_and_concat(llava):
    ps = probeset_for(llava, 7, seed=5)
    parts = list(iter_capture(llava, ps, batch_size=3, progress=False))
    assert [(p.meta["start"], p.meta["stop"]) for p in parts] == [(0, 3), (3, 6), (6, 7)]
    whole = concat_captures(parts)
    assert isinstance(whole, Capture) and len(whole) == 7 and "start" not in whole.meta
    ref = capture(llava, ps, batch_size=7, progress=False)
    torch.testing.assert_close(whole.logits, ref.logits, atol=1e-4, rtol=1e-4)
    some = list(iter_capture(llava, ps, batch_size=2, start=3, stop=6, progress=False))
    torch.testing.assert_close(concat_captures(some).hidden, ref.hidden[3:6], atol=1e-4, rtol=1e-4)


def test_images_are_read_one_batch_at_a_time(llava):
    ps = probeset_for(llava, 6, seed=6)
    seen: list[int] = []

    class Lazy(list):
        def __getitem__(self, i):
            seen.append(i)
            return super().__getitem__(i)

    ps.images = Lazy(ps.images)
    gen = iter_capture(llava, ps, batch_size=2, progress=False)
    next(gen)
    assert sorted(seen) == [0, 1]  # nothing beyond the first batch touched yet
    gen.close()


def test_outputs_are_ordinary_tensors(llava):
    """Captured tensors can feed autograd later (the tuned lens trains on them) and sit on the CPU."""
    ps = probeset_for(llava, 2, seed=1)
    cap = capture(llava, ps, hidden_dtype=torch.float16, progress=False)
    assert cap.hidden.dtype == torch.float16 and cap.logits.dtype == torch.float32
    assert not cap.hidden.is_inference() and not cap.logits.is_inference()
    w = torch.zeros(llava.d_model, requires_grad=True)
    (cap.hidden[:, -1].float() @ w).sum().backward()
    assert torch.is_grad_enabled()


def test_meta_records_how_it_was_made(llava):
    ps = probeset_for(llava, 2, seed=1)
    meta = capture(llava, ps, progress=False).meta
    assert meta["model_fingerprint"] == llava.fingerprint() and meta["n_layers"] == llava.n_layers
    assert meta["read_position"] == "last" and meta["family"] == "llava"
