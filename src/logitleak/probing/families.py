"""The probe families: each one's declared options, and the one call that fits a chunk of problems with it.

Each family declares its options once, as a frozen pydantic model with the constraints of every
value (the role scikit-learn's ``_parameter_constraints`` plays for an estimator):
:func:`check_probe_params` refuses an unknown option or a value outside its constraint in one
sentence, and hands the fitting code only the options the caller set, so every unset option keeps
the fitting function's own default (the models declare no default of their own). The classifier sweep, the fold-projected (``pca``) levels and
the regression probes all read the options through it; regression's MLP takes the subset
:data:`REGRESSION_MLP_OPTIONS`, its ridge strength is chosen on the inner split.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from logitleak.errors import LogitleakError
from logitleak.probing.linear import DEFAULT_CS, fit_linear_batched, fit_linear_grid_batched
from logitleak.probing.mlp import fit_mlp_batched

PROBE_FAMILIES: tuple[str, ...] = ("linear", "mlp")


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LinearOptions(_Options):
    """The linear probe's options (:func:`~logitleak.probing.linear.fit_linear_batched`; unset: its defaults)."""

    C: float | None = Field(None, gt=0)
    """A fixed inverse L2 strength; unset or ``None``: chosen from ``Cs`` on the inner split."""
    Cs: tuple[float, ...] | None = Field(None, min_length=1)
    max_iter: int | None = Field(None, ge=1)
    tol: float | None = Field(None, gt=0)
    history: int | None = Field(None, ge=1)


class MLPOptions(_Options):
    """The MLP probe's options (:func:`~logitleak.probing.mlp.fit_mlp_batched`; unset: its defaults)."""

    hidden: int | None = Field(None, ge=1)
    alpha: float | None = Field(None, ge=0)
    lr: float | None = Field(None, gt=0)
    max_epochs: int | None = Field(None, ge=1)
    patience: int | None = Field(None, ge=1)
    min_delta: float | None = Field(None, ge=0)
    lr_scale_dim: float | None = Field(None, gt=0)


OPTIONS: dict[str, type[_Options]] = {"linear": LinearOptions, "mlp": MLPOptions}
REGRESSION_MLP_OPTIONS: tuple[str, ...] = ("hidden", "alpha", "lr", "max_epochs", "patience")
"""The MLP options the regression MLP (:mod:`logitleak.probing.regression_mlp`) takes."""


def check_families(probes: Sequence[str]) -> tuple[str, ...]:
    """``probes`` as a tuple, or one sentence naming an unknown family."""
    for fam in probes:
        if fam not in PROBE_FAMILIES:
            raise LogitleakError(f"Unknown probe family '{fam}'; use one of: {', '.join(PROBE_FAMILIES)}.")
    return tuple(probes)


def check_probe_params(probe_params: Mapping[str, Mapping] | None, probes: Sequence[str]) -> dict[str, dict]:
    """``{family: the options the caller set}`` for every family in ``probes``, each checked against
    its declaration: an unknown option or a value outside its constraint is one sentence. An option
    given as ``None`` is left unset (the fitting function's default; for ``C``, chosen)."""
    out = {}
    for fam in check_families(probes):
        given = dict((probe_params or {}).get(fam, {}))
        declared = OPTIONS[fam]
        unknown = sorted(set(given) - set(declared.model_fields))
        if unknown:
            raise LogitleakError(f"Unknown {fam} probe option(s) {', '.join(unknown)}; use some of "
                                 f"{', '.join(sorted(declared.model_fields))}.")
        try:
            declared(**given)
        except ValidationError as err:
            first = err.errors()[0]
            name = first["loc"][0] if first["loc"] else "?"
            raise LogitleakError(f"The {fam} probe option {name}={given.get(name)!r} is not valid: "
                                 f"{first['msg'].lower()}; pass a value that is.") from None
        out[fam] = {k: v for k, v in given.items() if v is not None}
    return out


def families_for(level: str, families: Sequence[str], mlp_levels: Collection[str] | None) -> tuple[str, ...]:
    """The probe families a level gets: the MLP, the costly family, only on ``mlp_levels`` (None: every level)."""
    return tuple(f for f in families if f != "mlp" or mlp_levels is None or level in mlp_levels)


def control_reuses_c(family: str, params: Mapping) -> bool:
    """Whether the control task takes the linear probe's C from the real labels' fit of the same
    fold: the control task is the same probe on other labels (Hewitt & Liang), so when C is chosen
    on inner splits, the control problem reuses the real labels' choice rather than making its own."""
    return family == "linear" and params.get("C") is None and len(params.get("Cs", DEFAULT_CS)) > 1


def fit_family(family: str, X: torch.Tensor, y, train, inner_fit, inner_val, K: int, params: Mapping, seed,
               C_fixed: torch.Tensor | None = None, X_eval: torch.Tensor | None = None):
    """Fit one chunk; returns (log-probabilities (F, n, P, K), chosen C (F, P) or None, converged (F, P)).
    ``params``: the family's options (:func:`check_probe_params`). ``C_fixed`` (F, P): the linear
    probe's C given per problem instead of chosen on the inner split. ``X_eval``: the rows the
    log-probabilities are given for (default ``X``; a shadow attack fits on one model's outputs and
    scores another's)."""
    X_out = X if X_eval is None else X_eval
    if family == "linear":
        lin = dict(params)
        C = lin.pop("C", None)
        Cs = lin.pop("Cs", DEFAULT_CS)
        if C_fixed is not None or C is not None:
            fit = fit_linear_batched(X, y, train, C=C_fixed if C_fixed is not None else C, n_classes=K, **lin)
        else:
            fit = fit_linear_grid_batched(X, y, train, inner_fit, inner_val, Cs=Cs, n_classes=K, **lin)
        return fit.log_proba(X_out), fit.C, fit.converged
    if family == "mlp":
        fit = fit_mlp_batched(X, y, inner_fit, inner_val, n_classes=K, seed=seed, **params)
        return fit.log_proba(X_out), None, fit.converged
    check_families([family])
