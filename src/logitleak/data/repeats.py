"""Repeated and clustered rows of a features file: group duplicates, suggest a group column for clusters.

``logitleak probe`` takes features as given, so the same sample listed twice would sit on both
sides of a split and make a probe that memorises look like one that reads (duplicated pairs
sharing a label made a quarter of null p-values significant at 0.05). The audit's image path
groups identical inputs (:mod:`logitleak.data.duplicates`); here the input is only its features:

* **Duplicates.** Rows whose features agree in every feature set, exactly or within a tolerance
  (every column within ``tolerance`` times that column's spread), are one sample seen more than
  once: they are grouped (merged with the user's groups, so they never straddle a split and count
  as one unit in the tests and intervals), or refused.
* **Clusters.** Rows that are not duplicates but come in tight clusters (several prompts about
  one image, several messages of one user) are just as dependent, and nothing in the features
  says which rows belong together. When the rows' nearest neighbours are much closer than they
  are once every principal-component score is shuffled on its own (which keeps the covariance and
  each component's distribution and breaks any clustering), the probe command suggests
  ``--group-column``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

DEFAULT_TOLERANCE = 1e-4
"""Rows are duplicates when every column differs by at most this times the column's spread
(float16 round trips of well-scaled features stay within it; distinct samples of continuous
features do not come that close in every column)."""
CLUSTER_RATIO = 0.5
"""Rows look clustered when their median nearest-neighbour distance is below this fraction of
the same median with every principal-component score shuffled independently."""
CLUSTER_SAMPLE = 2000
"""The clustering check looks at most at this many rows (a fixed random subset)."""


@dataclass(frozen=True)
class Repeats:
    """What the check found: ``groups`` ``(n,)`` (duplicates and the user's groups merged; ids
    0..G-1), how many rows repeat an earlier one, and the duplicate sets' first rows."""

    groups: np.ndarray
    repeated: int
    sets: int
    examples: tuple[tuple[int, int], ...]


MIN_WIDTH_FOR_NEAR = 3
"""Rows closer than the tolerance without being equal count as duplicates only when the feature
sets have at least this many columns in all (in one or two columns distinct samples of a dense
feature often come that close)."""


def _standardised(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    sd = X.std(0)
    return np.where(sd > 0, (X - X.mean(0)) / np.where(sd > 0, sd, 1.0), 0.0)


def _exact_pairs(features: Mapping) -> np.ndarray:
    """``(P, 2)`` pairs (first row, later row) of rows equal in every feature set."""
    ids = np.stack([np.unique(np.asarray(X).reshape(len(X), -1), axis=0, return_inverse=True)[1].ravel()
                    for X in features.values()], 1)
    _, first, inv = np.unique(ids, axis=0, return_index=True, return_inverse=True)
    lead = first[inv.ravel()]
    rows = np.arange(len(ids))
    return np.stack([lead, rows], 1)[lead != rows]


def _near_pairs(features: Mapping, tolerance: float) -> np.ndarray:
    """``(P, 2)`` pairs of distinct rows within ``tolerance`` (in units of each column's spread) in
    every column of every set: candidates from a short window of one random projection (rows
    that close are that close along any unit direction), checked column by column."""
    rng = np.random.default_rng(0)
    n = len(next(iter(features.values())))
    proj, reach = np.zeros(n), 0.0
    for X in features.values():
        Z = _standardised(X)
        w = rng.normal(size=Z.shape[1])
        proj += Z @ (w / (np.linalg.norm(w) or 1.0))
        reach += tolerance * np.sqrt(Z.shape[1])
    order = np.argsort(proj, kind="stable")
    cand = []
    for gap in range(1, n):
        a, b = order[:-gap], order[gap:]
        near = proj[b] - proj[a] <= reach
        if not near.any():
            break
        cand.append(np.stack([a[near], b[near]], 1))
    if not cand:
        return np.zeros((0, 2), np.int64)
    pairs = np.concatenate(cand)
    for X in features.values():
        Z = _standardised(X)
        pairs = pairs[np.abs(Z[pairs[:, 0]] - Z[pairs[:, 1]]).max(1) <= tolerance]
    return pairs


def _components(pairs: np.ndarray, n: int) -> np.ndarray:
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def find_repeats(features: Mapping, groups: np.ndarray | None = None,
                 tolerance: float = DEFAULT_TOLERANCE) -> Repeats:
    """Duplicate rows across every feature set (see the module docstring), merged with ``groups``."""
    n = len(next(iter(features.values())))
    pairs = [_exact_pairs(features)]
    width = sum(int(np.prod(np.shape(X)[1:])) for X in features.values())
    if tolerance > 0 and width >= MIN_WIDTH_FOR_NEAR:
        lone = np.setdiff1d(np.arange(n), pairs[0][:, 1])       # one row per exact set: near pairs among those
        near = _near_pairs({k: np.asarray(X)[lone] for k, X in features.items()}, tolerance)
        pairs.append(lone[near])
    dup_pairs = np.concatenate(pairs).astype(np.int64)
    dup = _components(dup_pairs, n)
    links = [dup_pairs]
    if groups is not None:
        ginv = np.unique(np.asarray(groups).astype(str), return_inverse=True)[1].ravel()
        order = np.argsort(ginv, kind="stable")
        same = ginv[order][1:] == ginv[order][:-1]
        links.append(np.stack([order[:-1][same], order[1:][same]], 1))
    merged = _components(np.concatenate(links).astype(np.int64), n)
    sizes = np.bincount(dup)
    members: dict[int, list[int]] = {}
    for i, c in enumerate(dup):
        if sizes[c] > 1:
            members.setdefault(int(c), []).append(i)
    examples = tuple((rows[0], rows[1]) for rows in list(members.values())[:3])
    return Repeats(groups=merged.astype(np.int64), repeated=int(n - len(sizes)), sets=len(members),
                   examples=examples)


def clustering_ratio(features: Mapping, groups: np.ndarray | None = None, seed: int = 0) -> float:
    """Median nearest-neighbour distance of the rows (one row per group when ``groups`` are
    given) over the same median with every principal-component score shuffled on its own (the
    covariance kept, any clustering broken); well below 1 means the
    rows come in clusters. NaN with fewer than 10 rows."""
    from sklearn.neighbors import NearestNeighbors

    Z = np.concatenate([_standardised(X) / np.sqrt(max(1, np.prod(np.shape(X)[1:]))) for X in features.values()], 1)
    rng = np.random.default_rng(seed)
    if groups is not None:
        _, one = np.unique(np.asarray(groups).astype(str), return_index=True)
        Z = Z[one]
    if len(Z) > CLUSTER_SAMPLE:
        Z = Z[rng.choice(len(Z), CLUSTER_SAMPLE, replace=False)]
    if len(Z) < 10:
        return float("nan")
    # normal scores per column (heavy tails and odd marginals are no clusters), then principal-
    # component scores: shuffling each (uncorrelated) score column on its own keeps the covariance
    # and every component's distribution and breaks any clustering
    from scipy.stats import norm, rankdata

    Z = norm.ppf(rankdata(Z, axis=0) / (len(Z) + 1))
    Z = Z - Z.mean(0)
    U, S, _ = np.linalg.svd(Z, full_matrices=False)
    Z = U[:, S > S.max() * 1e-9] * S[S > S.max() * 1e-9]
    shuffled = np.stack([rng.permutation(col) for col in Z.T], 1)

    def median_nn(A: np.ndarray) -> float:
        dist, _ = NearestNeighbors(n_neighbors=2).fit(A).kneighbors(A)
        return float(np.median(dist[:, 1]))

    ref = median_nn(shuffled)
    return median_nn(Z) / ref if ref > 0 else float("nan")
