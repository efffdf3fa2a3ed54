"""The settings one probing sweep runs under, held in one object instead of beside every call's labels."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Sweep:
    """How to probe: the design (folds or one held-out split, permutations, bootstrap, groups, the
    task attribute), the probe families and their options, and where to compute (device, dtype,
    memory budget, progress). See :func:`logitleak.probing.sweep.evaluate_sweep` for each field."""

    groups: np.ndarray | None = None
    task_attribute: str | None = None
    probes: Sequence[str] = ("linear", "mlp")
    n_folds: int = 5
    n_permutations: int = 0
    n_bootstrap: int = 1000
    seed: int = 0
    device: str | None = None
    progress: bool = True
    test_size: float | None = None
    val_fraction: float = 0.2
    probe_params: Mapping[str, Mapping] | None = None
    dtype: torch.dtype = torch.float32
    memory_budget: int | None = None
    attack_levels: Collection[str] | None = None
    """Levels whose rows get the attacker's view (:mod:`logitleak.probing.attack_view`; None: none)."""
    attack_sizes: Sequence[int] = ()
    """Attacker training-set sizes of the cost curves at ``attack_levels`` (:mod:`logitleak.probing.attack_cost`)."""
    attack_k: int | None = None
    """Cost curves only for the attacked feature sets of this k (and those without one); None: every one."""
    eval_features: Mapping | None = None
    """A shadow attack: the probes fitted on the features are scored on these (same keys and shapes)."""
    shadow: str | None = None
    """The shadow model whose outputs trained the probes (the rows' ``shadow`` column)."""

    def attacked(self, level: str) -> bool:
        """Whether rows of ``level`` get the attacker's view."""
        return self.attack_levels is not None and level in self.attack_levels

    def costed(self, key: tuple) -> bool:
        """Whether the feature set ``key`` gets attack-cost curves."""
        return bool(self.attack_sizes) and self.attacked(key[0]) and (self.attack_k is None
                                                                      or key[2] in (None, self.attack_k))

    @property
    def group_array(self) -> np.ndarray | None:
        """The group ids as an array (``None``: every sample its own group)."""
        return None if self.groups is None else np.asarray(self.groups)

    @property
    def n_folds_eff(self) -> int:
        """Folds of the design: 1 for one held-out split."""
        return 1 if self.test_size is not None else self.n_folds

    def design(self) -> dict:
        """The keyword arguments the regression and fold-projected sweeps take (their own signatures)."""
        keys = ("groups", "task_attribute", "probes", "n_folds", "n_permutations", "n_bootstrap", "seed",
                "probe_params")
        return {k: getattr(self, k) for k in keys}
