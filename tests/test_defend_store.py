"""The pieces `defend` stores per defence: output-side views of a stored capture (equal to
apply_output_defense shard by shard, reused, recomputed when damaged) and LEACE erasers fitted
from stored captures (equal to concept-erasure's fit on the same states, named by their weights)."""

import numpy as np
import pytest
import torch
from concept_erasure import LeaceFitter

from logitleak.capture.store import ActivationStore
from logitleak.data import make_shapes
from logitleak.defenses import apply_output_defense, parse_defenses
from logitleak.defenses.erasure import eraser_hook, erasers_key, fit_eraser_stored, fit_erasers_from_store
from logitleak.defenses.spec import Defense
from logitleak.defenses.stored import defended_output, shard_seed
from logitleak.models.loading import load_model


@pytest.fixture(scope="module")
def adapter(organism_dir):
    return load_model(organism_dir, device="cpu")


@pytest.fixture(scope="module")
def stored(adapter, tmp_path_factory):
    ps = make_shapes(50, questions="color", seed=3)
    store = ActivationStore(tmp_path_factory.mktemp("store"))
    return ps, store, store.extract(adapter, ps, shard_size=16, batch_size=8, progress=False, vision_pool=None)


def test_views_equal_the_output_defence_per_shard(stored, tmp_path):
    _, _, cap = stored
    logits = torch.from_numpy(cap.logits())
    # Deterministic defences: exactly the defence applied to all logits at once.
    for defense in parse_defenses("none;topk:2;round:1;values_only;ranks_only;temperature:2+round:0"):
        out = defended_output(cap, defense, k=4, seed=0, root=tmp_path)
        ref = apply_output_defense(logits, defense, k=4, seed=0)
        torch.testing.assert_close(out.view.logprobs, ref.logprobs.float(), equal_nan=True, rtol=0, atol=0)
        assert torch.equal(out.view.ids, ref.ids)
        assert torch.equal(out.answers, apply_output_defense(logits, Defense(), k=4).top1())
    # Noise: each shard drawn from its own seed; different shards, different draws.
    gauss = parse_defenses("gauss:1")[0]
    out = defended_output(cap, gauss, k=4, seed=5, root=tmp_path)
    for sh in cap.manifest["shards"]:
        a, b = sh["start"], sh["stop"]
        ref = apply_output_defense(logits[a:b], gauss, k=4, seed=shard_seed(5, sh["index"]))
        assert torch.equal(out.view.logprobs[a:b], ref.logprobs.float()) and torch.equal(out.view.ids[a:b], ref.ids)
    assert len({shard_seed(5, i) for i in range(4)}) == 4 and shard_seed(5, 0) != shard_seed(6, 0)
    again = defended_output(cap, gauss, k=4, seed=6, root=tmp_path)
    assert not torch.equal(again.view.logprobs, out.view.logprobs)  # the seed is part of the key


def test_views_are_reused_and_a_damaged_one_is_recomputed(stored, tmp_path):
    _, _, cap = stored
    gauss = parse_defenses("gauss:0.5")[0]
    first = defended_output(cap, gauss, k=3, seed=1, root=tmp_path)
    files = sorted(first.path.glob("view-*.safetensors"))
    assert len(files) == len(cap.manifest["shards"]) == 4
    stamps = [f.stat().st_mtime_ns for f in files]
    data = bytearray(files[1].read_bytes())
    data[-3] ^= 0xFF  # a flipped bit in one view file
    files[1].write_bytes(bytes(data))
    second = defended_output(cap, gauss, k=3, seed=1, root=tmp_path)
    assert torch.equal(first.view.logprobs, second.view.logprobs) and torch.equal(first.answers, second.answers)
    assert files[0].stat().st_mtime_ns == stamps[0] and files[2].stat().st_mtime_ns == stamps[2]  # reused
    assert files[1].read_bytes() != bytes(data)  # rewritten


def test_eraser_from_the_store_equals_concept_erasure_fit(stored):
    ps, _, cap = stored
    labels = {"shape": ps.labels("shape"), "size": ps.labels("size")}
    from logitleak.defenses.erasure import one_hot_concepts

    x = torch.from_numpy(cap.layer(2)).double()
    ref = LeaceFitter.fit(x, one_hot_concepts(labels).double()).eraser
    mine = fit_eraser_stored(cap, 2, labels, chunk=7)  # streamed in chunks that straddle shards
    # The factors of a low-rank projection are unique only up to the sign of each singular pair (a
    # different summation order may flip one), so compare the projection itself and what it does.
    torch.testing.assert_close(mine.proj_left @ mine.proj_right, ref.proj_left @ ref.proj_right, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(mine.bias, ref.bias, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(mine(x), ref(x), rtol=1e-6, atol=1e-8)
    # The guarantee on the states it was fitted on: no linear correlation with the concept is left.
    erased = eraser_hook(mine)(x.float()).double()
    z = one_hot_concepts(labels).double()
    cov = (erased - erased.mean(0)).T @ (z - z.mean(0)) / len(z)
    assert float(cov.abs().max()) < 1e-4


def test_the_hook_is_concept_erasures_call_in_float32(stored):
    """The capture hook applies LeaceEraser.__call__ once converted (float32, the states' device),
    exactly: the projection is never rewritten, and half-precision states come back in their dtype."""
    from logitleak.defenses.erasure import eraser_to

    ps, _, cap = stored
    eraser = fit_eraser_stored(cap, 2, {"shape": ps.labels("shape")})
    h = torch.from_numpy(cap.layer(2)).float().reshape(len(cap), 1, -1).repeat(1, 3, 1)   # (B, T, D)
    moved = eraser_to(eraser, "cpu")
    assert moved.proj_left.dtype == torch.float32 and eraser.proj_left.dtype == torch.float64
    hook = eraser_hook(eraser)
    assert torch.equal(hook(h), moved(h))
    assert torch.equal(hook(h), moved(h))   # the converted eraser is reused
    half = hook(h.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16 and torch.equal(half, moved(h.to(torch.bfloat16).float()).to(torch.bfloat16))


def test_sequential_fit_from_the_store_keys_each_pass_by_the_erasers(adapter, stored):
    ps, store, _ = stored
    labels = {"shape": ps.labels("shape")}
    seen = []

    def extract(hooks, key):
        seen.append(key)
        return store.extract(adapter, ps, shard_size=16, batch_size=8, progress=False, vision_pool=None,
                             edit_hooks=hooks or None, edit_key=key if hooks else None)

    erasers = fit_erasers_from_store(extract, [3, 1], labels)
    assert sorted(erasers) == [1, 3]
    assert seen[0] is None and seen[1] == erasers_key({1: erasers[1]}) and len(seen) == 2
    assert erasers_key(erasers).startswith("leace:1,3:")
    # Refitting from the same stored shards gives the same erasers, hence the same key.
    assert erasers_key(fit_erasers_from_store(extract, [1, 3], labels)) == erasers_key(erasers)
    other = {1: erasers[1], 3: erasers[1]}
    assert erasers_key(other) != erasers_key(erasers)


def test_without_redaction_keeps_the_value_transforms():
    d = parse_defenses("round:1+values_only")[0]
    assert d.without_redaction().label() == "round:1"
    assert parse_defenses("ranks_only")[0].without_redaction() == Defense()
    assert np.all([t.name != "ranks_only" for t in parse_defenses("gauss:1+ranks_only")[0].without_redaction().transforms])


def test_erasers_from_a_float32_store_equal_the_in_memory_sequential_fit(adapter, tmp_path):
    """What `defend` stores for the fit split (float32) gives the erasers of the in-memory path."""
    from logitleak.capture.forward import capture
    from logitleak.defenses.erasure import fit_erasers_sequentially

    ps = make_shapes(48, questions="color", seed=4)
    labels = {"shape": ps.labels("shape"), "position": ps.labels("position")}
    store = ActivationStore(tmp_path)
    stored = fit_erasers_from_store(
        lambda hooks, key: store.extract(adapter, ps, shard_size=16, batch_size=8, progress=False, vision_pool=None,
                                         hidden_dtype="float32", edit_hooks=hooks or None,
                                         edit_key=key if hooks else None), [1, 2], labels)
    memory = fit_erasers_sequentially(
        lambda hooks: capture(adapter, ps, batch_size=8, edit_hooks=hooks or None, progress=False).hidden, [1, 2], labels)
    for layer in (1, 2):
        torch.testing.assert_close(stored[layer].proj_left, memory[layer].proj_left, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(stored[layer].proj_right, memory[layer].proj_right, rtol=1e-5, atol=1e-7)
