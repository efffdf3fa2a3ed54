"""Transfer (shadow) scoring in the sweep: probes fitted on one model's outputs, scored on another's."""

import numpy as np
import pytest

from logitleak.errors import LogitleakError
from logitleak.probing.sweep import evaluate_sweep

KEY = ("topk_ids", None, 5)


def data(seed=0, n=300):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = rng.normal(size=(n, 6))
    X[:, 0] += 1.5 * y
    return X, y


def sweep(X, y, **kw):
    return evaluate_sweep({KEY: X}, {"a": y}, probes=("linear",), n_bootstrap=100, progress=False, **kw).iloc[0]


def test_scoring_the_training_outputs_themselves_is_the_plain_sweep(one_thread):
    X, y = data()
    plain, shadow = sweep(X, y), sweep(X, y, eval_features={KEY: X.copy()}, shadow="organism:1")
    assert shadow["shadow"] == "organism:1" and "shadow" not in plain.index
    for col in ("accuracy", "ci_low", "ci_high", "p_value", "v_info_bits", "baseline_accuracy"):
        assert shadow[col] == pytest.approx(plain[col], abs=1e-6), col


def test_a_shadow_transfers_only_what_the_victim_shares(one_thread):
    X, y = data()
    noise = np.random.default_rng(5).normal(scale=0.3, size=X.shape)
    near = sweep(X + noise, y, eval_features={KEY: X})                     # same numerics up to noise: transfers
    assert near.accuracy > near.baseline_accuracy + 0.2 and near.p_value < 1e-3
    moved = sweep(X[:, ::-1].copy(), y, eval_features={KEY: X})           # the shadow reads the signal elsewhere
    assert moved.ci_low <= moved.baseline_accuracy + 0.05


def test_shadow_inputs_are_checked():
    X, y = data()
    with pytest.raises(LogitleakError) as err:
        sweep(X, y, eval_features={KEY: X[:, :4]})
    assert str(err.value) == ("Feature set 'topk_ids' k=5 has shape (300, 6) to train on but (300, 4) to score; give "
                              "both the same columns.")
    with pytest.raises(LogitleakError) as err:
        evaluate_sweep({KEY: X}, {"a": y, "c": np.linspace(0, 1, 300)}, probes=("linear",), progress=False,
                       eval_features={KEY: X})
    assert str(err.value) == ("A shadow attack (eval_features) scores class attributes of plain feature sets, not "
                              "the numeric attribute 'c'; leave it out of this sweep.")
