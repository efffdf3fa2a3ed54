"""Each probe family declares its options once: unknown ones and values outside their constraint are
one sentence, unset ones keep the fitting function's default, and every sweep reads them the same way."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from logitleak.errors import LogitleakError
from logitleak.probing.families import OPTIONS, PROBE_FAMILIES, check_probe_params, fit_family
from logitleak.probing.linear import fit_linear_grid_batched
from logitleak.probing.mlp import fit_mlp_batched
from logitleak.probing.regression import evaluate_regression
from logitleak.probing.sweep import evaluate_sweep


def test_every_family_declares_its_options():
    assert set(OPTIONS) == set(PROBE_FAMILIES)
    assert set(OPTIONS["linear"].model_fields) == {"C", "Cs", "max_iter", "tol", "history"}
    assert set(OPTIONS["mlp"].model_fields) == {"hidden", "alpha", "lr", "max_epochs", "patience", "min_delta",
                                                "lr_scale_dim"}


def test_options_the_caller_set_pass_through_unchanged():
    got = check_probe_params({"linear": {"C": 0.5, "max_iter": 50}, "mlp": {"hidden": 8}}, ("linear", "mlp"))
    assert got == {"linear": {"C": 0.5, "max_iter": 50}, "mlp": {"hidden": 8}}
    assert check_probe_params(None, ("linear",)) == {"linear": {}}
    assert check_probe_params({"linear": {"C": None}}, ("linear",)) == {"linear": {}}   # None: chosen


@pytest.mark.parametrize("params, message", [
    ({"linear": {"c": 1.0}}, "Unknown linear probe option(s) c; use some of C, Cs, history, max_iter, tol."),
    ({"mlp": {"hiden": 8}}, "Unknown mlp probe option(s) hiden; use some of alpha, hidden, lr, lr_scale_dim, "
                            "max_epochs, min_delta, patience."),
    ({"linear": {"C": -1.0}}, "The linear probe option C=-1.0 is not valid: input should be greater than 0; "
                              "pass a value that is."),
    ({"mlp": {"max_epochs": 0}}, "The mlp probe option max_epochs=0 is not valid: input should be greater than or "
                                 "equal to 1; pass a value that is."),
    ({"mlp": {"hidden": 2.5}}, "The mlp probe option hidden=2.5 is not valid: input should be a valid integer, got "
                               "a number with a fractional part; pass a value that is."),
])
def test_bad_options_are_one_sentence(params, message):
    with pytest.raises(LogitleakError) as err:
        check_probe_params(params, ("linear", "mlp"))
    assert str(err.value) == message


def test_unknown_family_is_one_sentence():
    with pytest.raises(LogitleakError, match=r"^Unknown probe family 'svm'; use one of: linear, mlp\.$"):
        check_probe_params(None, ("svm",))


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    n, d = 120, 5
    y = rng.integers(0, 3, n)
    X = torch.as_tensor(rng.normal(size=(1, n, d)) + y[None, :, None] * 0.8, dtype=torch.float32)
    train = np.ones((1, n), bool)
    train[0, :20] = False
    fit, val = train.copy(), np.zeros((1, n), bool)
    fit[0, 20:40], val[0, 20:40] = False, True
    return X, y[None], train, fit, val


def test_unset_options_are_the_fitting_functions_defaults():
    X, y, train, fit, val = _problem()
    logp, C, _ = fit_family("linear", X, y, train, fit, val, 3, {}, seed=0)
    ref = fit_linear_grid_batched(X, y, train, fit, val, n_classes=3)
    torch.testing.assert_close(logp, ref.log_proba(X), rtol=0, atol=0)
    torch.testing.assert_close(C, ref.C, rtol=0, atol=0)
    logp, _, _ = fit_family("mlp", X, y, train, fit, val, 3, {"hidden": 8}, seed=3)
    ref = fit_mlp_batched(X, y, fit, val, n_classes=3, seed=3, hidden=8)
    torch.testing.assert_close(logp, ref.log_proba(X), rtol=0, atol=0)


def test_classifier_and_regression_sweeps_refuse_the_same_bad_option():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 3))
    feats = {("residual", 1, None): X}
    for run, labels in ((evaluate_sweep, {"a": rng.integers(0, 2, 60).astype(str)}),
                        (evaluate_regression, {"a": rng.normal(size=60)})):
        with pytest.raises(LogitleakError, match=r"^The mlp probe option lr=0 is not valid"):
            run(feats, labels, probes=("mlp",), probe_params={"mlp": {"lr": 0}}, n_bootstrap=0, progress=False)
