"""The probes' cache key: one digest per feature set, each distinct array hashed once."""

from __future__ import annotations

import numpy as np

import logitleak.probing.resume as resume


def test_an_array_shared_by_several_feature_sets_is_hashed_once(monkeypatch):
    res = np.arange(12, dtype=np.float32).reshape(4, 3)
    other = np.ones((4, 2), dtype=np.float32)
    feats = {("pca", 1, d): res for d in (1, 2, 3)} | {("residual", 1, None): res, ("logits", None, None): other}
    calls = []
    real = np.ascontiguousarray
    monkeypatch.setattr(resume.np, "ascontiguousarray", lambda x, *a, **k: calls.append(x) or real(x, *a, **k))
    digests = resume.features_digests(feats)
    assert len(calls) == 2                                   # res once, other once
    assert len(set(digests.values())) == len(feats)          # every key its own digest
    monkeypatch.setattr(resume.np, "ascontiguousarray", real)
    copy = {key: np.array(x) for key, x in feats.items()}    # the same bytes in other arrays: the same digests
    assert resume.features_digests(copy) == digests
    changed = {**copy, ("logits", None, None): other + 1}
    assert resume.features_digests(changed)[("logits", None, None)] != digests[("logits", None, None)]
