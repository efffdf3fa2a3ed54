"""The bottleneck's parts: grid syntax, places and protected attributes, gradient reversal, the
adversaries' reading and both objectives, and the decisions about where information is gone."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from logitleak.decisions.bottleneck import bottleneck_sentences, information_gone_from
from logitleak.defenses import parse_defenses
from logitleak.defenses.bottleneck import (
    AdversaryBank,
    BottleneckSettings,
    check_place,
    encode_labels,
    entropy_nats,
    grad_reverse,
    make_target,
    parse_place,
    resolve_protect,
)
from logitleak.defenses.spec import parse_single_defense
from logitleak.errors import LogitleakError


def test_grid_sweeps_lambda_and_refuses_two_model_side_defences():
    grid = parse_defenses("none;bottleneck:0.1,1,10;bottleneck:1+topk:5")
    assert [d.label() for d in grid] == ["none", "bottleneck:0.1", "bottleneck:1", "bottleneck:10",
                                         "bottleneck:1+topk:5"]
    assert [d.bottleneck for d in grid] == [None, 0.1, 1.0, 10.0, 1.0]
    assert grid[1].model_side and not grid[0].model_side and grid[4].output_side[0].name == "topk"
    with pytest.raises(LogitleakError, match="combines a trained bottleneck with another model-side defence"):
        parse_defenses("bottleneck:1+leace:2")
    with pytest.raises(LogitleakError, match="the weight lambda must be a number of 0 or more"):
        parse_defenses("bottleneck:-1")
    with pytest.raises(LogitleakError, match="includes bottleneck, which acts inside the model"):
        parse_single_defense("bottleneck:1")
    from logitleak.guard.defender import check_guard_defense

    with pytest.raises(LogitleakError, match="'bottleneck:1' acts inside the model; the guard applies output-side"):
        check_guard_defense(grid[2])


def test_places_and_protected_attributes_are_checked_with_one_sentence():
    assert parse_place("output") is None and parse_place("layer:3") == 3
    assert check_place(None, 4) == [] and check_place(2, 4) == [2, 3, 4]
    for bad in ("layer:0", "layer:x", "middle"):
        with pytest.raises(LogitleakError, match=r"--bottleneck-at .* is not a place; write 'output' or 'layer:L'"):
            parse_place(bad)
    with pytest.raises(LogitleakError, match=r"layer:9 does not exist: block outputs are layers 1..4"):
        check_place(9, 4)
    cats = ["color", "shape", "size"]
    assert resolve_protect(None, cats, "color") == ["shape", "size"]
    assert resolve_protect(["size", " size"], cats, "color") == ["size"]
    with pytest.raises(LogitleakError, match="--protect names the task attribute 'color'"):
        resolve_protect(["color"], cats, "color")
    with pytest.raises(LogitleakError, match="--protect names 'area', which is not a class attribute"):
        resolve_protect(["area"], cats, "color")
    with pytest.raises(LogitleakError, match="has none besides the task 'color'"):
        resolve_protect(None, ["color"], "color")
    with pytest.raises(LogitleakError, match="--bottleneck-tune 'half' is not a way to fine-tune"):
        BottleneckSettings(tune="half")


def test_gradient_reversal_flips_and_scales_the_gradient_set_after_the_forward_pass():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    scale = torch.zeros(())
    y = grad_reverse(x, scale)
    assert torch.equal(y, x)
    scale.fill_(2.5)  # set after the forward pass, read by backward
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-2.5, -5.0, -7.5]))


def test_entropy_and_labels():
    classes, codes = encode_labels(np.array(["b", "a", "b", "c"]))
    assert list(classes) == ["a", "b", "c"] and codes.tolist() == [1, 0, 1, 2]
    assert math.isclose(entropy_nats(codes, 3), -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    t = make_target("x", codes, 3)
    assert t.prior == (0.25, 0.5, 0.25) and math.isclose(t.entropy, entropy_nats(codes, 3))


def _bank(d=6, objective_targets=None):
    torch.manual_seed(0)
    codes = torch.arange(400) % 2
    bank = AdversaryBank({"output": d}, [make_target("a", codes, 2)], ("linear", "mlp"), hidden=16)
    return bank, codes


@pytest.mark.parametrize("objective", ["confusion", "reversal"])
def test_adversaries_read_a_planted_attribute_and_the_model_gradient_hides_it(objective, one_thread):
    """Ground truth: feature 0 carries the label, the others are noise. Adversaries trained with
    lambda=0 read nearly all of H(Y)=1 bit; with lambda>0 the gradient reaching the features points
    against the informative coordinate (descending it lowers the reading)."""
    bank, y = _bank()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 6, generator=g)
    x[:, 0] += 3.0 * (2 * y.float() - 1)
    opt = torch.optim.Adam(bank.parameters(), lr=1e-2)
    for _ in range(150):
        loss, readings = bank.loss({"output": x}, {"a": y}, 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert readings["a"] > 0.8
    xr = x.clone().requires_grad_(True)
    loss, _ = bank.loss({"output": xr}, {"a": y}, 1.0, objective)
    bank.zero_grad()
    loss.backward()
    sign = (2 * y.float() - 1)
    # gradient descent on xr moves feature 0 towards the other class (the separation shrinks)
    assert float((xr.grad[:, 0] * sign).mean()) > 0
    # and descending it (the adversaries frozen) takes the reading down
    bank.eval()
    for p in bank.parameters():
        p.requires_grad_(False)
    step = torch.optim.SGD([xr], lr=200.0)
    before = bank.loss({"output": xr}, {"a": y}, 0.0)[1]["a"]
    for _ in range(20):
        loss, _ = bank.loss({"output": xr}, {"a": y}, 1.0, objective)
        step.zero_grad()
        loss.backward()
        step.step()
    assert bank.loss({"output": xr}, {"a": y}, 0.0)[1]["a"] < before / 2


def test_no_reading_on_random_labels(one_thread):
    """A reading is H(Y) - CE on the batch: adversaries fitted to labels independent of the features
    read (close to) nothing on fresh samples, so a random label never looks protected-and-leaking."""
    bank, _ = _bank()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(400, 6, generator=g), torch.randint(0, 2, (400,), generator=g)
    opt = torch.optim.Adam(bank.parameters(), lr=1e-2)
    for _ in range(100):
        loss, _ = bank.loss({"output": x[:200]}, {"a": y[:200]}, 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    bank.eval()
    _, readings = bank.loss({"output": x[200:]}, {"a": y[200:]}, 0.0)
    assert readings["a"] < 0.05


def _rows(label, readable_layers, n_layers=4, attr="shape"):
    rows = []
    for layer in range(1, n_layers + 1):
        ok = layer in readable_layers
        rows.append({"defense_label": label, "attribute": attr, "level": "residual", "layer": layer, "k": None,
                     "probe": "linear", "task_relevant": False, "accuracy": 0.9 if ok else 0.3,
                     "baseline_accuracy": 0.3, "ci_low": 0.85 if ok else 0.25, "ci_high": 0.95 if ok else 0.35,
                     "p_value": 1e-9 if ok else 0.5, "v_info_bits": 1.0 if ok else 0.0, "utility_accuracy": 0.99})
    return rows


def test_information_gone_from_the_first_layer_after_the_last_readable_one():
    df = pd.DataFrame(_rows("b", {1, 2}))
    assert information_gone_from(df, ["shape"], 4) == {"shape": 3}
    assert information_gone_from(pd.DataFrame(_rows("b", set())), ["shape"], 4) == {"shape": 1}
    assert information_gone_from(pd.DataFrame(_rows("b", {1, 4})), ["shape"], 4) == {"shape": None}
    # a readable middle layer: only the layers after it count as clean
    assert information_gone_from(pd.DataFrame(_rows("b", {2})), ["shape"], 4) == {"shape": 3}


def _api(label, leak, utility):
    return {"defense_label": label, "defense": label.split(":")[0], "attribute": "shape", "level": "topk_ids",
            "layer": None, "k": 20, "probe": "mlp", "task_relevant": False, "accuracy": 0.9 if leak else 0.3,
            "baseline_accuracy": 0.3, "ci_low": 0.85 if leak else 0.25, "ci_high": 0.95 if leak else 0.35,
            "p_value": 1e-9 if leak else 0.5, "v_info_bits": 1.0 if leak else 0.0, "utility_accuracy": utility,
            "utility_loss": 1.0 - utility}


def test_the_sentences_say_whether_the_bottleneck_beats_inference_time_defences():
    info = {"bottleneck:1": {"at": "output", "gone_from_layer": {"shape": None}}}
    table = pd.DataFrame([_api("none", True, 1.0), _api("bottleneck:1", False, 0.99), _api("gauss:8", False, 0.60),
                          _api("leace:all", True, 0.99)])
    text = " ".join(bottleneck_sentences(table, info, 4))
    assert "bottleneck:1 (output) stops every API-level leak at answer accuracy 0.990" in text
    assert "shape is still read at the last layer" in text
    assert "bottleneck:1 beats every inference-time defence in the grid at equal answer accuracy" in text
    table = pd.DataFrame([_api("none", True, 1.0), _api("bottleneck:1", False, 0.99), _api("round:0", False, 0.995)])
    text = " ".join(bottleneck_sentences(table, info, 4))
    assert "It does not beat the inference-time defences: round:0 also stops every leak" in text
    table = pd.DataFrame([_api("none", True, 1.0), _api("bottleneck:1", True, 0.99)])
    assert "still leaks shape" in " ".join(bottleneck_sentences(table, info, 4))
