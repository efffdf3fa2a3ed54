"""How a sweep's problems are grouped and sized: class-count buckets, problem lists, chunk sizes."""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from logitleak.probing.linear import DEFAULT_CS
from logitleak.probing.plans import AttributePlan

CPU_BUDGET = 1 << 30
CUDA_BUDGET = 4 << 30
"""Fixed working-memory budgets (bytes) for one chunk of problems. Fixed rather than read from
the free memory, so the chunking -- and with it every float of the results -- is the same on
every run of the same inputs on the same device."""


def memory_budget(device: torch.device) -> int:
    """The chunk budget for ``device`` (CUDA: the fixed budget or half the free memory if less)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(min(CUDA_BUDGET, free * 0.5))
    return CPU_BUDGET


def pair_bytes(family: str, n: int, d: int, K: int, itemsize: int, params: Mapping) -> int:
    """Rough peak bytes per (feature set, problem) pair while fitting."""
    if family == "linear":
        G = 1 if params.get("C") is not None else len(params.get("Cs", DEFAULT_CS))
        m = params.get("history", 6)
        per = n * K * 7 + (d + 1) * K * (2 * m + 9) + 2 * d + 3 * n
        return per * itemsize * max(G, 1)
    h = params.get("hidden", 64)
    per = n * h * 5 + n * K * 6 + (d * h + h * K) * 8 + 2 * d + 3 * n
    return per * itemsize


def k_buckets(plans: Sequence[AttributePlan]) -> list[list[AttributePlan]]:
    """Attributes whose class counts are close share batches (padding to the largest)."""
    out: list[list[AttributePlan]] = []
    for p in sorted(plans, key=lambda p: p.n_classes):
        if out and p.n_classes <= max(2 * out[-1][0].n_classes, out[-1][0].n_classes + 2):
            out[-1].append(p)
        else:
            out.append([p])
    return out


@dataclass
class Problems:
    """The problems of one bucket of attributes, flattened: (attribute, variant, split). Variant
    ``-1`` marks the forward-chained fits of the held-out test (``split`` = their index);
    ``block[j]`` is the block problem ``j`` scores for that test (-1: none)."""

    plans: list[AttributePlan]
    attr: np.ndarray
    variant: np.ndarray
    split: np.ndarray
    block: np.ndarray
    K: int

    @classmethod
    def build(cls, plans):
        a, v, s, b = [], [], [], []
        for i, p in enumerate(plans):
            V, S, Q = p.n_variants, p.n_splits, len(p.seq_train)
            a.append(np.full(V * S + Q, i))
            v.append(np.concatenate([np.repeat(np.arange(V), S), np.full(Q, -1)]))
            s.append(np.concatenate([np.tile(np.arange(S), V), np.arange(Q)]))
            blk = np.full(V * S + Q, -1)
            for bid, (kind, idx) in p.block_source.items():
                blk[idx if kind == "cv" else V * S + idx] = bid
            b.append(blk)
        return cls(list(plans), *(np.concatenate(x) for x in (a, v, s, b)), max(p.n_classes for p in plans))

    def __len__(self):
        return len(self.attr)

    def seeds(self, idx: np.ndarray, seed: int) -> np.ndarray:
        """One seed per problem, from (seed, attribute, variant, split) only, so a problem's MLP
        initialisation does not depend on how the sweep was chunked."""
        return np.array([zlib.crc32(f"{seed}|{self.plans[self.attr[j]].name}|{self.variant[j]}|{self.split[j]}".encode())
                         for j in idx], dtype=np.int64)

    def arrays(self, idx: np.ndarray):
        """(labels, train, test, inner_fit, inner_val, class_mask) for problems ``idx``."""
        ys, tr, te, fi, va, cm = [], [], [], [], [], []
        for j in idx:
            p = self.plans[self.attr[j]]
            v, s = self.variant[j], self.split[j]
            if v < 0:
                ys.append(p.labels[0])
                tr.append(p.seq_train[s])
                te.append(p.seq_test[s])
                fi.append(p.seq_inner_fit[s])
                va.append(p.seq_inner_val[s])
            else:
                ys.append(p.labels[v])
                tr.append(p.train[v, s])
                te.append(p.test[v, s])
                fi.append(p.inner_fit[v, s])
                va.append(p.inner_val[v, s])
            row = np.zeros(self.K, bool)
            row[: p.n_classes] = True
            cm.append(row)
        return tuple(np.stack(x) for x in (ys, tr, te, fi, va, cm))


def chunk_size(n_problems: int, per_pair: int, budget: int, x_bytes: int) -> int:
    """Problems per chunk for one feature set: as many as the budget holds, evened out."""
    room = max(budget - x_bytes, per_pair)
    p_chunk = int(max(1, min(n_problems, room // per_pair)))
    n_chunks = -(-n_problems // p_chunk)
    return -(-n_problems // n_chunks)
