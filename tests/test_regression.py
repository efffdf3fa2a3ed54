"""Regression probes: the shapes geometry is exact, ridge matches scikit-learn, R² and bits match
ground truth, nulls are calibrated, numeric attributes are dispatched and validated."""

import numpy as np
import pandas as pd
import pytest

from logitleak.data import make_shapes
from logitleak.data.probeset import is_numeric_column
from logitleak.data.shapes import NUMERIC_ATTRIBUTES, render_shapes
from logitleak.errors import LogitleakError
from logitleak.probing import metrics as M
from logitleak.probing.regression import evaluate_regression, fit_ridge_cv, shared_splits
from logitleak.probing.sweep import evaluate_sweep

pytestmark = pytest.mark.usefixtures("one_thread")


def test_shapes_geometry_is_read_from_the_drawing():
    attrs = pd.DataFrame({"color": ["red", "blue", "green"], "shape": ["square", "circle", "triangle"],
                          "size": ["small", "small", "medium"], "position": ["left", "top", "right"],
                          "background": ["black", "white", "gray"]})
    images, masks, centres = render_shapes(attrs, noise=0.0, seed=3, return_centres=True)
    ps = make_shapes(40, seed=1, noise=0.0)
    assert set(NUMERIC_ATTRIBUTES) <= set(ps.attributes.columns)
    assert ps.numeric_attributes == list(NUMERIC_ATTRIBUTES)
    assert "color" in ps.categorical_attributes and "area" not in ps.categorical_attributes
    for i in range(len(ps)):  # the box is the extent of the object's pixels, the area their count
        px = np.asarray(ps.images[i]).astype(int)
        bg = px[0, 0] if not ps.attributes.at[i, "position"] == "top" else px[-1, -1]
        obj = (np.abs(px - bg).sum(-1) > 0)
        ys, xs = np.nonzero(obj)
        row = ps.attributes.iloc[i]
        assert (row.box_x0, row.box_x1, row.box_y0, row.box_y1) == (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1)
        assert row.area == obj.sum()
        assert row.box_x0 <= row.center_x <= row.box_x1 and row.box_y0 <= row.center_y <= row.box_y1
    # centre: where the shape is drawn; an unclipped square of half-side r around it is symmetric
    sq = masks[0]
    ys, xs = np.nonzero(sq)
    assert abs((xs.min() + xs.max() + 1) / 2 - centres[0, 0]) <= 0.5
    assert abs((ys.min() + ys.max() + 1) / 2 - centres[0, 1]) <= 0.5
    assert centres[0, 0] < 16 < centres[2, 0]                    # left vs right
    assert ps.labels("center_x").dtype == np.float64 and ps.labels("color").dtype.kind in "OU"


def test_numeric_inference():
    assert is_numeric_column([0.5, 1.25, 3.0])
    assert is_numeric_column(["1.5", "2", "7.25"])                # numbers written as text
    assert not is_numeric_column([0, 1, 1, 0])                    # a 0/1 flag is a class label
    assert is_numeric_column(list(range(50)))                     # many whole numbers: a count
    assert not is_numeric_column(["red", "1.0"])
    assert not is_numeric_column([1.0, float("nan")])


def test_ridge_matches_scikit_learn():
    import torch
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    n, d = 60, 4
    X = rng.normal(size=(n, d)) * [1, 3, 0.2, 5] + 2
    y = X @ [1.0, -0.5, 2.0, 0.1] + rng.normal(size=n)
    train, test, fit, val = shared_splits(n, None, 3, seed=0)
    pred, _, alpha = fit_ridge_cv(torch.as_tensor(X[None]), torch.as_tensor(y[:, None]), train, test, fit, val,
                                  alphas=(0.1,))
    for s in range(3):
        sc = StandardScaler().fit(X[train[s]])
        m = Ridge(alpha=0.1 * train[s].sum()).fit(sc.transform(X[train[s]]), y[train[s]])
        np.testing.assert_allclose(pred[0, 0, test[s]], m.predict(sc.transform(X[test[s]])), rtol=1e-8, atol=1e-8)
    # wide features (d > n): the dual form gives the same answer as scikit-learn
    Xw = rng.normal(size=(n, 90))
    pred_w, _, _ = fit_ridge_cv(torch.as_tensor(Xw[None]), torch.as_tensor(y[:, None]), train, test, fit, val,
                                alphas=(0.5,))
    sc = StandardScaler().fit(Xw[train[0]])
    m = Ridge(alpha=0.5 * train[0].sum()).fit(sc.transform(Xw[train[0]]), y[train[0]])
    np.testing.assert_allclose(pred_w[0, 0, test[0]], m.predict(sc.transform(Xw[test[0]])), rtol=1e-6, atol=1e-6)


def test_r2_and_bits_match_ground_truth():
    rng = np.random.default_rng(1)
    n = 600
    X = rng.normal(size=(n, 3))
    signal = X @ [2.0, 1.0, 0.0]                                  # variance 5
    y = signal + rng.normal(size=n)                               # noise variance 1
    df = evaluate_regression({("f", None, None): X}, {"y": y}, probes=("linear",), n_permutations=19, n_bootstrap=200)
    row = df.iloc[0]
    r2_true = 5 / 6
    assert abs(row.r2 - r2_true) < 0.03 and row.r2_ci_low < row.r2 < row.r2_ci_high
    assert abs(row.v_info_bits - 0.5 * np.log2(6)) < 0.08        # ½ log2(Var(y) / noise variance)
    assert abs(row.gauss_gain_bits - row.v_info_bits) < 0.1       # Gaussian log-likelihood gain agrees
    assert row.mae < 0.9 and abs(row.baseline_mae - np.sqrt(6 * 2 / np.pi)) < 0.15
    assert row.p_value == pytest.approx(1 / 20) and row.p_value_heldout < 1e-6
    assert abs(row.control_r2) < 0.05 and row.selectivity > 0.7
    assert row.target == "numeric" and np.isnan(row.accuracy)


def test_regression_nulls_are_calibrated():
    """100 numeric labellings independent of the features, fitted in one batched call: the number
    with p < 0.05 stays within a binomial 99% interval around 5%, and bits average at or below 0."""
    rng = np.random.default_rng(2)
    n, runs = 40, 100
    X = rng.normal(size=(n, 3))
    values = {f"v{i}": rng.normal(size=n) for i in range(runs)}
    df = evaluate_regression({("noise", None, None): X}, values, probes=("linear",), n_permutations=49, n_bootstrap=0)
    lo, hi = M.binomial_interval(runs, 0.05, 0.99)
    assert len(df) == runs
    assert lo <= int((df.p_value < 0.05).sum()) <= hi and (df.p_test == "permutation").all()
    assert df.v_info_bits.mean() <= 0.0 and df.r2.mean() <= 0.0
    # the default test (no permutations): the held-out gain test on forward-chained blocks, also calibrated
    held = evaluate_regression({("noise", None, None): X}, values, probes=("linear",), n_bootstrap=0)
    assert (held.p_test == "heldout").all() and held.p_value.equals(held.p_value_heldout)
    assert lo <= int((held.p_value < 0.05).sum()) <= hi
    np.testing.assert_allclose(held.p_value_heldout, df.p_value_heldout)   # permutations do not change it


def test_grouped_nulls_and_mlp():
    rng = np.random.default_rng(3)
    n_img, per = 60, 3
    groups = np.repeat(np.arange(n_img), per)
    X = rng.normal(size=(n_img * per, 2))
    y_img = rng.normal(size=n_img)
    y = y_img[groups]                                              # a value per image, independent of X
    df = evaluate_regression({("noise", None, None): X}, {"y": y}, groups=groups, probes=("linear",),
                             n_permutations=19, n_bootstrap=50)
    assert df.iloc[0].p_value > 0.05 and df.iloc[0].n_groups == n_img
    # a nonlinear target: the MLP reads it, the ridge cannot
    Xs = rng.normal(size=(400, 2))
    ys = Xs[:, 0] ** 2 + 0.1 * rng.normal(size=400)
    both = evaluate_regression({("f", None, None): Xs}, {"sq": ys}, probes=("linear", "mlp"), n_permutations=4,
                               n_bootstrap=0)
    lin, mlp = both.set_index("probe").r2[["linear", "mlp"]]
    assert lin < 0.1 and mlp > 0.8


def test_evaluate_sweep_dispatches_numeric_attributes():
    rng = np.random.default_rng(4)
    n = 120
    X = rng.normal(size=(n, 3))
    labels = {"cls": np.where(X[:, 0] > 0, "a", "b"), "num": X[:, 1] * 3.0 + 0.1 * rng.normal(size=n)}
    df = evaluate_sweep({("f", None, None): X}, labels, task_attribute="num", probes=("linear",), n_permutations=5,
                        n_bootstrap=0, progress=False)
    assert set(df.attribute) == {"cls", "num"}
    cls, num = df.set_index("attribute").loc["cls"], df.set_index("attribute").loc["num"]
    assert cls.accuracy > 0.9 and np.isnan(cls.r2)
    assert num.r2 > 0.95 and num.task_relevant and not cls.task_relevant


def test_numeric_errors():
    X = np.zeros((20, 2)) + np.arange(20)[:, None]
    with pytest.raises(LogitleakError, match="single value"):
        evaluate_regression({("f", None, None): X}, {"y": np.ones(20)})
    with pytest.raises(LogitleakError, match="missing or infinite"):
        evaluate_regression({("f", None, None): X}, {"y": np.r_[np.nan, np.arange(19.0)]})
    with pytest.raises(LogitleakError, match="NaN or infinite"):
        evaluate_regression({("f", None, None): np.full((20, 2), np.nan)}, {"y": np.arange(20.0)})
