"""Defence grid parsing and the output-side transforms."""

import math

import pytest
import torch

from logitleak.defenses import apply_output_defense, parse_defenses
from logitleak.defenses.spec import parse_single_defense
from logitleak.errors import LogitleakError


def test_grid_expands_values_and_compositions():
    grid = parse_defenses("none;topk:1,5;round:1+gauss:0.1,0.2;leace:all;values_only")
    labels = [d.label() for d in grid]
    assert labels == ["none", "topk:1", "topk:5", "round:1+gauss:0.1", "round:1+gauss:0.2", "leace:all", "values_only"]
    assert grid[5].erasure_layers == (-1,) and grid[0].output_side == ()


@pytest.mark.parametrize("spec, message", [
    ("gauss:-0.5", "noise scale must be 0 or more"),
    ("laplace:-1", "noise scale must be 0 or more"),
    ("topk:0", "k must be at least 1"),
    ("round:-1", "decimals"),
    ("temperature:0", "above 0"),
    ("blur:2", "Unknown defence 'blur'"),
    ("round", "needs a value"),
    ("values_only:3", "takes no value"),
    ("gauss:abc", "not a number"),
])
def test_invalid_parameters_name_the_value(spec, message):
    with pytest.raises(LogitleakError, match=message):
        parse_defenses(spec)


def test_single_defense_for_a_server():
    assert parse_single_defense("round:1").label() == "round:1"
    with pytest.raises(LogitleakError, match="expands to 2"):
        parse_single_defense("round:1,2")
    with pytest.raises(LogitleakError, match="inside the model"):
        parse_single_defense("leace:all")


def test_output_transforms_match_their_definitions():
    torch.manual_seed(0)
    logits = torch.randn(50, 40)
    exact = torch.topk(torch.log_softmax(logits, -1), 5, -1)
    none = apply_output_defense(logits, parse_defenses("none")[0], k=5)
    assert torch.allclose(none.logprobs, exact.values) and torch.equal(none.ids, exact.indices)
    top2 = apply_output_defense(logits, parse_defenses("topk:2")[0], k=5)
    assert top2.k == 2 and torch.equal(top2.ids, exact.indices[:, :2])
    r1 = apply_output_defense(logits, parse_defenses("round:1")[0], k=5)
    assert torch.allclose(r1.logprobs * 10, torch.round(r1.logprobs * 10))
    assert (r1.logprobs - exact.values).abs().max() <= 0.05 + 1e-6
    t2 = apply_output_defense(logits, parse_defenses("temperature:2")[0], k=5)
    assert torch.allclose(t2.logprobs, torch.topk(torch.log_softmax(logits / 2, -1), 5, -1).values)
    vo = apply_output_defense(logits, parse_defenses("values_only")[0], k=5)
    assert (vo.ids == -1).all() and torch.allclose(vo.logprobs, exact.values)
    ro = apply_output_defense(logits, parse_defenses("ranks_only")[0], k=5)
    assert torch.isnan(ro.logprobs).all() and torch.equal(ro.ids, exact.indices)


def test_noise_has_its_scale_and_is_seeded():
    logits = torch.zeros(4000, 30)  # uniform: every returned value is -log(30)
    for name, scale, std in (("gauss", 0.5, 0.5), ("laplace", 0.5, 0.5 * math.sqrt(2))):
        view = apply_output_defense(logits, parse_defenses(f"{name}:{scale}")[0], k=1, seed=3)
        noise = view.logprobs[:, 0] + math.log(30)
        clipped = (view.logprobs[:, 0] == 0).float().mean()
        assert clipped < 0.01
        assert abs(noise.std().item() - std) < 0.05 * std
        again = apply_output_defense(logits, parse_defenses(f"{name}:{scale}")[0], k=1, seed=3)
        assert torch.equal(view.logprobs, again.logprobs)


def test_topk_larger_than_vocabulary_is_a_clear_error():
    with pytest.raises(LogitleakError, match=r"topk:50.*vocabulary has \(40\)"):
        apply_output_defense(torch.randn(3, 40), parse_defenses("topk:50")[0], k=50)
