"""Probing with resume: one cached, checksummed table per feature set, so a rerun reuses finished work.

Feature sets are probed in stages (:mod:`logitleak.probing.stages`): the sets (of any level) that
share a width and their probe families form one stage, probed by one call, so they batch
together; a stage with any set missing is probed whole again, so a resumed run batches exactly as
an uninterrupted one and reproduces it bit for bit.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from logitleak.config import AuditConfig
from logitleak.data.probeset import ProbeSet
from logitleak.integrity import atomic_write, verified
from logitleak.levels.table import API_LEVELS
from logitleak.models.devices import compute_device
from logitleak.probing.families import families_for
from logitleak.probing.ray_stages import run_stages_with
from logitleak.probing.stages import split_stage, stage_workers


def features_digests(features: dict) -> dict:
    """``{key: digest}`` of every feature set: its key and its array's bytes. An array that several
    sets share (the residual behind every ``pca`` dimension) is hashed once."""
    by_array: dict[int, str] = {}
    out = {}
    for key, x in features.items():
        if id(x) not in by_array:
            by_array[id(x)] = hashlib.sha256(np.ascontiguousarray(x).view(np.uint8)).hexdigest()
        out[key] = hashlib.sha256((repr(key) + by_array[id(x)]).encode()).hexdigest()
    return out


MLP_STAGE_COST = 250
"""What the MLP adds to a feature set's probing cost, in units of one input dimension of the linear
probe (measured on the organism: about 250x one dimension, whatever the width), for ordering stages."""


def probe_with_resume(features: dict, probeset: ProbeSet, cfg: AuditConfig, cache_dir: Path,
                      attributes: list[str], progress: bool = True, problems: list[str] | None = None,
                      attack: bool = False) -> pd.DataFrame:
    """Probe every feature set, one cached parquet per feature set, so a rerun reuses finished work;
    independent stages run side by side in worker processes (:mod:`logitleak.probing.stages`; a note
    joins ``problems`` when they could not start and this process probed instead). ``attack``: the
    API levels' class rows get the attacker's view, and the largest k's cost curves
    (``cfg.probes.attack_sizes``; :mod:`logitleak.probing.attack_files` splits them off)."""
    labels = {a: probeset.labels(a) for a in attributes}
    device = compute_device(cfg.device)  # under --device auto: the first GPU
    workers = stage_workers(cfg.probes.workers, device)
    # the worker count does not change results (every worker is single-threaded); probing in this
    # process (0) runs torch's own threads, which round differently
    attack_kw = dict(attack_levels=list(API_LEVELS), attack_sizes=cfg.probes.attack_sizes,
                     attack_k=max(cfg.k)) if attack else {}
    probe_settings = {**cfg.probes.model_dump(exclude={"workers", "attack_sizes"}),
                      "in_process": workers == 0 and not cfg.ray, **attack_kw}
    settings = json.dumps([probe_settings, cfg.seed, cfg.task, attributes,
                           [hashlib.sha256("\x1f".join(map(str, v)).encode()).hexdigest() for v in labels.values()],
                           hashlib.sha256(np.asarray(probeset.groups).tobytes()).hexdigest()])
    cache_dir.mkdir(parents=True, exist_ok=True)
    done: dict = {}
    todo: dict = {}
    paths = {key: cache_dir / f"{hashlib.sha256((settings + d).encode()).hexdigest()[:20]}.parquet"
             for key, d in features_digests(features).items()}
    for key, x in features.items():
        cached = _read_verified_parquet(paths[key])
        if cached is not None:
            done[key] = cached
        else:
            todo[key] = (x, paths[key])
    # Probe in stages: the feature sets (of any level) that share a width and their probe families
    # form one stage, probed by one call, so they batch together (at audit sizes a sweep's cost is
    # mostly per call: the lens and API top-k sets of one k share one fit); a wide stage is split
    # into even chunks by size alone (split_stage). A stage with any set missing is probed whole
    # again, so a resumed run batches exactly as an uninterrupted one and reproduces it bit for bit.
    # The costliest stages go first, so the workers finish together.
    stages: dict[tuple, list] = {}
    for key, x in features.items():
        families = families_for(key[0], cfg.probes.families, cfg.probes.mlp_levels)
        stages.setdefault((families, np.shape(x)[1] if np.ndim(x) > 1 else 1), []).append(key)
    n = len(probeset)
    chunks = [(families, chunk, len(chunk) * (d + MLP_STAGE_COST * ("mlp" in families)))
              for (families, d), keys in stages.items() for chunk in split_stage(keys, n, d)]
    chunks = [(families, chunk) for families, chunk, _ in sorted(chunks, key=lambda c: -c[2])]
    jobs = []
    for families, keys in chunks:
        if not families or all(key not in todo for key in keys):
            continue
        for key in keys:
            if key not in todo:
                todo[key] = (features[key], paths[key])
        jobs.append((keys, {k: todo[k][0] for k in keys},
                     dict(groups=probeset.groups, task_attribute=cfg.task, probes=list(families),
                          n_folds=cfg.probes.folds, n_permutations=cfg.probes.permutations,
                          n_bootstrap=cfg.probes.bootstrap, seed=cfg.seed, device=device,
                          probe_params=probe_params(cfg), **attack_kw)))

    def save(i: int, df: pd.DataFrame) -> None:        # each stage's sets are cached as it finishes
        for key in jobs[i][0]:
            level, layer, k = key
            part = df[(df["level"] == level) & _match(df["layer"], layer) & _match(df["k"], k)].reset_index(drop=True)
            atomic_write(todo[key][1], lambda tmp, part=part: part.to_parquet(tmp, index=False), checksum=True)
            done[key] = part

    note = run_stages_with(cfg.ray, [(feats, kw) for _, feats, kw in jobs], labels, workers=workers,
                           progress=progress, on_done=save)
    if note and problems is not None:
        problems.append(note)
    frames = [done[key] for key in features if key in done]  # always in the order the levels were built
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _read_verified_parquet(path: Path) -> pd.DataFrame | None:
    """A cached table whose bytes match its recorded checksum; ``None`` (recompute) otherwise."""
    if not path.is_file() or not verified(path):
        return None
    try:
        return pd.read_parquet(path)
    except Exception:  # noqa: BLE001 - verified but unreadable (e.g. another pyarrow): recompute it
        return None


def probe_params(cfg: AuditConfig) -> dict | None:
    """Per-family options for :func:`evaluate_sweep` from the probe settings."""
    return {"linear": {"C": cfg.probes.C}} if cfg.probes.C is not None else None


def _match(col: pd.Series, value) -> pd.Series:
    return col.isna() if value is None else (col == value)
