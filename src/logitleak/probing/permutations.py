"""Shared label permutations: one relabelling of the samples per permutation, the same for every attribute.

Permutation ``b`` of a run is an index array ``index[b]`` ``(n,)``: sample ``i`` takes the label
that sample ``index[b, i]`` has, for every attribute (categorical or numeric) and every probe
family of the run. It depends only on the seed, the number of samples and the groups, so the
statistics of all API-level tests under permutation ``b`` come from one relabelling, and the
family can be adjusted jointly by Westfall–Young (:mod:`logitleak.decisions.multiplicity`),
whichever process or stage probed each feature set.

* Without groups: a uniform permutation of the samples.
* With groups, when every group size occurs at least twice: whole label blocks move between
  groups of the same size (order within a group kept), valid for any labels.
* With groups of unrepeated sizes: whole groups swap labels (a uniform permutation of the groups;
  each sample takes the label of the first member of its new group), valid only for labels that
  are constant within every group; other labels are refused, because leaving such groups in place
  would keep their real labels in every permuted fit and hide a leak.
"""

from __future__ import annotations

import hashlib
import zlib

import numpy as np

from logitleak.errors import LogitleakError


def group_blocks(groups: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """``(group index of each sample, [sample indices of each group])``, groups in sorted id order."""
    _, inv = np.unique(np.asarray(groups), return_inverse=True)
    order = np.argsort(inv, kind="stable")
    bounds = np.flatnonzero(np.diff(inv[order])) + 1
    return inv, np.split(order, bounds)


def _sizes_repeat(blocks: list[np.ndarray]) -> bool:
    _, counts = np.unique([len(b) for b in blocks], return_counts=True)
    return bool((counts >= 2).all())


def permutation_index(n: int, n_permutations: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """``(n_permutations, n)`` int64: the run's shared relabellings (see the module docstring)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(b"shared-permutations")]))
    out = np.empty((n_permutations, n), dtype=np.int64)
    if groups is None:
        for b in range(n_permutations):
            out[b] = rng.permutation(n)
        return out
    inv, blocks = group_blocks(groups)
    if _sizes_repeat(blocks):
        sizes = np.array([len(b) for b in blocks])
        classes = [np.flatnonzero(sizes == s) for s in np.unique(sizes)]
        for b in range(n_permutations):
            for same in classes:
                for dst, src in zip(same, same[rng.permutation(len(same))]):
                    out[b, blocks[dst]] = blocks[src]
        return out
    first = np.array([blk[0] for blk in blocks])
    for b in range(n_permutations):
        out[b] = first[rng.permutation(len(blocks))][inv]
    return out


def unmovable_groups(values: np.ndarray, groups: np.ndarray) -> int:
    """How many groups the shared permutations cannot relabel for these values: 0 when the
    values are constant within every group or every group size repeats; otherwise the number of
    groups whose size no other group has."""
    values = np.asarray(values)
    inv, blocks = group_blocks(groups)
    first = np.array([blk[0] for blk in blocks])
    if np.array_equal(values, values[first][inv]) or _sizes_repeat(blocks):
        return 0
    sizes = np.array([len(b) for b in blocks])
    _, size_inv, size_count = np.unique(sizes, return_inverse=True, return_counts=True)
    return int((size_count[size_inv] == 1).sum())


def permuted(name: str, values: np.ndarray, index: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """``(N, n)``: ``values`` under each shared permutation; refuses values that vary within
    groups the permutations cannot move (one sentence naming the attribute and the fix)."""
    values = np.asarray(values)
    if len(index) and groups is not None:
        stuck = unmovable_groups(values, groups)
        if stuck:
            raise LogitleakError(
                f"Attribute '{name}': its labels vary within groups and {stuck} groups have a size no other group "
                f"has, so a label permutation cannot move them and would hide a leak; use the default held-out "
                f"test (no --permutations) or groups of repeated sizes.")
    return values[index]


def permutation_key(seed: int, n: int, n_permutations: int, groups: np.ndarray | None = None) -> str:
    """A short digest naming the shared permutations (rows with one key were permuted alike)."""
    g = "" if groups is None else "\x1f".join(map(str, np.asarray(groups).tolist()))
    return hashlib.sha256(f"{int(seed)}|{n}|{n_permutations}|{g}".encode()).hexdigest()[:16]
