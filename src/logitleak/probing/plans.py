"""Per-attribute plans: every labelling (real, control, permutations) and every split a sweep fits.

The permutations are the run's shared ones (:mod:`logitleak.probing.permutations`): permutation
``b`` relabels the samples the same way for every attribute, so the family of tests can be
adjusted jointly (Westfall–Young)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from logitleak.errors import LogitleakError
from logitleak.probing import metrics as M
from logitleak.probing.heldout import forward_chain
from logitleak.probing.permutations import permutation_index, permutation_key, permuted
from logitleak.probing.splits import check_attribute, cv_splits, encode_labels, seeded_rng, stratified_holdout

# --------------------------------------------------------------------------------------------
# plans


@dataclass
class AttributePlan:
    """All labellings and splits of one attribute. Variant 0 holds the real labels, 1 the control
    task, 2.. the permutations; ``S`` splits per variant. The held-out test
    (:mod:`logitleak.probing.heldout`) scores folds ``1..S-1`` of the real labels with probes trained on
    the folds before them: the last is cross-validation split ``S-1``, the others are the
    ``Q = S-2`` extra fits ``seq_*`` (one held-out split: its test part is the only block)."""

    name: str
    classes: np.ndarray
    codes: np.ndarray
    labels: np.ndarray       # (V, n) int64
    train: np.ndarray        # (V, S, n) bool
    test: np.ndarray         # (V, S, n) bool
    inner_fit: np.ndarray    # (V, S, n) bool
    inner_val: np.ndarray    # (V, S, n) bool
    prior_loss: np.ndarray   # (V, n) bits of the training-fold prior at each tested row (NaN: untested)
    tested: np.ndarray       # (V, n) bool
    majority: np.ndarray     # (n,) correctness of the training-fold majority class (real labels)
    boot: np.ndarray         # (B, n_tested_real) resampling weights over the real variant's tested rows
    seq_train: np.ndarray    # (Q, n) bool: forward-chained fits that are not a cross-validation split
    seq_test: np.ndarray     # (Q, n) bool
    seq_inner_fit: np.ndarray
    seq_inner_val: np.ndarray
    block: np.ndarray        # (n,) block scored by the held-out test (-1: never scored)
    block_source: dict       # block id -> ("cv", split) or ("seq", q): the fit whose predictions score it
    permutation_key: str | None = None   # names the shared permutations of variants 2.. (None: none)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def n_variants(self) -> int:
        return self.labels.shape[0]

    @property
    def n_splits(self) -> int:
        return self.train.shape[1]


def plan_attribute(name: str, values, *, groups: np.ndarray | None = None, n_folds: int = 5,
                   test_size: float | None = None, n_permutations: int = 0, n_bootstrap: int = 1000,
                   val_fraction: float = 0.2, seed: int = 0) -> AttributePlan:
    """Labels, control task, permutations and every split for one attribute (validates it)."""
    classes, codes = encode_labels(name, values)
    n = len(codes)
    check_attribute(name, classes, codes, groups, n_folds, test_size)
    K = len(classes)
    groups = None if groups is None else np.asarray(groups)
    shared = permuted(name, codes, permutation_index(n, n_permutations, seed, groups), groups)
    labels = np.concatenate([np.stack([codes, M.control_labels(codes, seeded_rng(seed, name, "control"), groups)]), shared])
    V = len(labels)
    S = 1 if test_size is not None else n_folds
    train = np.zeros((V, S, n), bool)
    test = np.zeros((V, S, n), bool)
    inner_fit = np.zeros((V, S, n), bool)
    inner_val = np.zeros((V, S, n), bool)
    inner_rng = seeded_rng(seed, name, "inner")
    for v in range(V):
        splits = cv_splits(labels[v], groups, n_folds, test_size, seed)
        for s, (tr, te) in enumerate(splits):
            if len(te) == 0 or len(tr) == 0:
                raise LogitleakError(
                    f"Attribute '{name}': a split came out empty (too few samples or groups for {S} folds); "
                    f"use fewer folds.")
            train[v, s, tr] = True
            test[v, s, te] = True
            fi, va = stratified_holdout(labels[v], val_fraction, inner_rng, groups, rows=tr)
            if len(va) == 0:      # tiny folds: validate on the training rows rather than on nothing
                fi, va = tr, tr
            inner_fit[v, s, fi] = True
            inner_val[v, s, va] = True
    tested = test.any(1)
    prior_loss = np.stack([M.prior_loss_bits(labels[v], train[v], test[v], K) for v in range(V)])
    majority = M.majority_baseline(codes, train[0], test[0], K)
    t0 = tested[0]
    boot = M.bootstrap_weights(int(t0.sum()), n_bootstrap, seeded_rng(seed, name, "bootstrap"),
                               None if groups is None else np.asarray(groups)[t0])
    block = np.full(n, -1, dtype=np.int64)
    seq = [], [], [], []
    source: dict = {}
    if S == 1:
        block[test[0, 0]] = 0
        source[0] = ("cv", 0)
    else:
        fold = np.argmax(test[0], axis=0)              # the fold of every sample (real labels)
        seq_rng = seeded_rng(seed, name, "forward")
        for b, (tr, te) in enumerate(forward_chain(fold, S), start=1):
            block[te] = b
            if b == S - 1:                                 # trained on folds 0..S-2: CV split S-1
                source[b] = ("cv", S - 1)
                continue
            fi, va = stratified_holdout(codes, val_fraction, seq_rng, groups, rows=np.flatnonzero(tr))
            if len(va) == 0:
                fi = va = np.flatnonzero(tr)
            source[b] = ("seq", len(seq[0]))
            for lst, rows in zip(seq, (np.flatnonzero(tr), np.flatnonzero(te), fi, va)):
                m = np.zeros(n, bool)
                m[rows] = True
                lst.append(m)
    seq_arrays = [np.stack(x) if x else np.zeros((0, n), bool) for x in seq]
    return AttributePlan(name, classes, codes, labels, train, test, inner_fit, inner_val, prior_loss, tested,
                         majority, boot, *seq_arrays, block, source,
                         permutation_key(seed, n, n_permutations, groups) if n_permutations else None)
