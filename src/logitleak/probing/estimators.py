"""Probe estimators, implemented in torch and batched.

Two families:

* ``linear``: multinomial logistic regression with an L2 penalty (scikit-learn's ``C``
  convention: minimise ``C * sum_i loss_i + 1/2 ||W||^2``; binary problems are penalised the
  way scikit-learn's binary logistic regression is), fitted by full-batch L-BFGS.
* ``mlp``: one hidden ReLU layer, full-batch Adam, early stopping on an inner validation split.

The functional core (:func:`fit_linear_batched`, :func:`fit_mlp_batched`) fits many problems at
once: ``F`` feature matrices that share a feature dimension, stacked into ``X`` of shape
``(F, n, d)``, times ``P`` problems (fold x label variant x regularisation value) that share the
sample axis and differ in their labels and in which rows they train on. Every (feature set,
problem) pair is an independent optimisation; they are only stacked so that one matrix product
serves them all. Standardisation is fitted per problem on its own training rows and folded into
the weights, so the features are never copied per fold.

The scikit-learn-style estimators :class:`LinearProbe` and :class:`MLPProbe` wrap the core for a
single data set.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning

from logitleak.errors import LogitleakError
from logitleak.probing.linear import DEFAULT_CS, LinearFit, fit_linear_batched, fit_linear_grid_batched
from logitleak.probing.mlp import MLPFit, fit_mlp_batched
from logitleak.probing.splits import stratified_holdout
from logitleak.probing.tensors import (
    LOG_PROB_FLOOR,
    masked_standardisation,
    prepare_features,
    present_classes,
    resolve_device,
)

__all__ = ["DEFAULT_CS", "LOG_PROB_FLOOR", "LinearFit", "LinearProbe", "MLPFit", "MLPProbe", "fit_linear_batched",
           "fit_linear_grid_batched", "fit_mlp_batched", "masked_standardisation", "prepare_features",
           "present_classes", "resolve_device", "stratified_holdout"]


class _TorchProbe(ClassifierMixin, BaseEstimator):
    def _prepare_fit(self, X, y):
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X[:, None]
        if X.ndim != 2:
            raise LogitleakError(f"Probe features must be a 2-D array (samples x features), got shape {X.shape}; reshape them.")
        if not np.isfinite(X).all():
            raise LogitleakError("Probe features contain NaN or infinite values; fill or drop them before fitting.")
        y = np.asarray(y)
        if len(y) != len(X):
            raise LogitleakError(f"Probe got {len(X)} feature rows but {len(y)} labels; pass one label per row.")
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise LogitleakError("Probe labels have a single class; a probe needs at least two classes.")
        self.n_features_in_ = X.shape[1]
        self._device = resolve_device(self.device)
        self._dtype = self.dtype or torch.float32
        Xt, shift, scale = prepare_features([X], self._device, self._dtype)
        self._shift, self._scale = shift[0], scale[0]
        return Xt, codes

    def _inner_split(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(fit, validation)`` row masks ``(1, n)``: a stratified ``val_fraction`` of the training rows."""
        inner_fit, inner_val = stratified_holdout(codes, self.val_fraction, np.random.default_rng(self.random_state))
        fm = np.zeros((1, len(codes)), dtype=bool)
        fm[0, inner_fit] = True
        vm = np.zeros_like(fm)
        vm[0, inner_val] = True
        return fm, vm

    def _warn_unless_converged(self, what: str) -> None:
        """scikit-learn's ConvergenceWarning when the fit stopped before converging."""
        if not bool(self.fit_.converged.all()):
            warnings.warn(f"{type(self).__name__} stopped before converging ({what}); its scores may be "
                          "understated.", ConvergenceWarning, stacklevel=3)

    def _transform(self, X) -> torch.Tensor:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X[:, None]
        if X.shape[1] != self.n_features_in_:
            raise LogitleakError(
                f"Probe was fitted on {self.n_features_in_} features but got {X.shape[1]}; pass the same feature columns.")
        Xs = (X - self._shift) / self._scale
        return torch.as_tensor(Xs, dtype=self._dtype, device=self._device).unsqueeze(0)

    def predict_log_proba(self, X) -> np.ndarray:
        lp = self.fit_.log_proba(self._transform(X))[0, :, 0, :]
        return lp.double().cpu().numpy()

    def predict_proba(self, X) -> np.ndarray:
        p = np.exp(self.predict_log_proba(X))
        p[:, ~self.fit_.class_mask[0].cpu().numpy()] = 0.0
        return p / p.sum(1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.predict_log_proba(X).argmax(1)]


@dataclass(eq=False, repr=False)
class LinearProbe(_TorchProbe):
    """L2 multinomial logistic-regression probe (torch, L-BFGS), standardising on its training rows.

    ``C``: fixed inverse regularisation strength (scikit-learn convention); ``None`` chooses it
    from ``Cs`` by held-out cross-entropy on a stratified ``val_fraction`` split of the training
    rows, then refits on all of them. Learned: ``classes_``, ``C_``, ``coef_`` ``(K, d)`` and
    ``intercept_`` ``(K,)`` on the raw features (symmetric softmax parametrisation, also for two
    classes), ``mean_``, ``scale_``, ``n_iter_``.
    """

    C: float | None = None
    Cs: Sequence[float] = DEFAULT_CS
    val_fraction: float = 0.2
    max_iter: int = 1000
    tol: float = 1e-5
    device: str | None = None
    dtype: torch.dtype | None = None
    random_state: int = 0

    def fit(self, X, y):
        Xt, codes = self._prepare_fit(X, y)
        K = len(self.classes_)
        yt = codes[None, :]
        full = np.ones((1, len(codes)), dtype=bool)
        if self.C is not None:
            fit = fit_linear_batched(Xt, yt, full, C=float(self.C), n_classes=K, max_iter=self.max_iter, tol=self.tol)
        else:
            fm, vm = self._inner_split(codes)
            fit = fit_linear_grid_batched(Xt, yt, full, fm, vm, Cs=self.Cs, n_classes=K,
                                          max_iter=self.max_iter, tol=self.tol)
        self.fit_ = fit
        self.C_ = float(fit.C[0, 0])
        self.n_iter_ = int(fit.n_iter[0, 0])
        sd = fit.sd[0, 0].double().cpu().numpy() * self._scale
        mu = fit.mu[0, 0].double().cpu().numpy() * self._scale + self._shift
        W = fit.W[0, 0].double().cpu().numpy()
        b = fit.b[0, 0].double().cpu().numpy()
        self.mean_, self.scale_ = mu, sd
        self.coef_ = (W / sd[:, None]).T
        self.intercept_ = b - (mu / sd) @ W
        self._warn_unless_converged(f"L-BFGS reached max_iter={self.max_iter}; raise max_iter")
        return self


@dataclass(eq=False, repr=False)
class MLPProbe(_TorchProbe):
    """One-hidden-layer ReLU MLP probe (torch, full-batch Adam) with early stopping on a stratified
    ``val_fraction`` split of the training rows; standardises on the rows it trains on.
    Learned: ``classes_``, ``n_epochs_`` (epoch of the kept weights), ``best_val_loss_``."""

    hidden: int = 64
    alpha: float = 3e-3
    lr: float = 3e-2
    max_epochs: int = 1000
    patience: int = 20
    val_fraction: float = 0.2
    device: str | None = None
    dtype: torch.dtype | None = None
    random_state: int = 0

    def fit(self, X, y):
        Xt, codes = self._prepare_fit(X, y)
        fm, vm = self._inner_split(codes)
        self.fit_ = fit_mlp_batched(Xt, codes[None, :], fm, vm, hidden=self.hidden, alpha=self.alpha, lr=self.lr,
                                    max_epochs=self.max_epochs, patience=self.patience,
                                    n_classes=len(self.classes_), seed=self.random_state)
        self.n_epochs_ = int(self.fit_.n_epochs[0, 0])
        self.best_val_loss_ = float(self.fit_.best_val[0, 0])
        self._warn_unless_converged(f"early stopping never triggered in max_epochs={self.max_epochs}; raise max_epochs")
        return self
