"""`logitleak defend`: sweep defences and measure leakage at the API level against answer accuracy."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from logitleak.audit import (_Timer, audit_identity, package_versions, prepare_out_dir, probe_params,
                             resolve_model_path)
from logitleak.capture import Capture
from logitleak.config import AuditConfig
from logitleak.data.probeset import ProbeSet
from logitleak.defenses.erasure import eraser_hook, fit_erasers_sequentially, resolve_erasure_layers
from logitleak.defenses.output import apply_output_defense
from logitleak.defenses.spec import Defense
from logitleak.errors import LogitleakError
from logitleak.probeset_loading import load_probe_set
from logitleak.results import write_json, write_results

TRADEOFF_COLUMNS = ("defense", "strength", "layer", "attribute", "level", "k", "probe", "task_relevant",
                    "accuracy", "baseline_accuracy", "ci_low", "ci_high", "p_value", "v_info_bits",
                    "utility_accuracy", "utility_loss")


@dataclass
class DefendResult:
    """The trade-off table, the recommendation, and where they were written."""

    tradeoff: pd.DataFrame
    recommendation: str
    out_dir: Path
    report_path: Path | None


def split_fit_eval(probeset: ProbeSet, seed: int, fit_fraction: float = 0.5) -> tuple[ProbeSet, ProbeSet]:
    """A grouped split: erasers are fitted on one part, every defence is measured on the other."""
    groups = np.unique(probeset.groups)
    rng = np.random.default_rng(seed + 7919)
    fit_groups = set(rng.permutation(groups)[: int(round(len(groups) * fit_fraction))].tolist())
    in_fit = np.array([g in fit_groups for g in probeset.groups])
    return probeset.subset(np.flatnonzero(in_fit)), probeset.subset(np.flatnonzero(~in_fit))


def api_features(view_logprobs: torch.Tensor, view_ids: torch.Tensor, k: int) -> dict:
    """The API levels of one defended output, skipping levels the defence removed."""
    from logitleak.levels import build_features

    values_gone = torch.isnan(view_logprobs).all()
    ids_gone = bool((view_ids < 0).all())
    levels = [lv for lv, ok in (("topk_ids", not ids_gone), ("topk_logprobs", not values_gone),
                                ("top1_prob", not values_gone)) if ok]
    if values_gone:  # ranks only: the attacker still sees the order, so encode the rank as the value
        view_logprobs = -torch.arange(view_ids.shape[1], dtype=torch.float32).expand(view_ids.shape).clone()
    cap = Capture(topk_logprobs=view_logprobs, topk_ids=view_ids)
    return build_features(cap, None, levels=levels, layers=[], ks=[k])


def recommend(tradeoff: pd.DataFrame, max_loss: float, alpha: float = 0.05) -> str:
    """The recommendation's sentence: the audit's decisions per defence (:func:`logitleak.decisions.recommend_defence`)."""
    from logitleak.decisions import recommend_defence

    return recommend_defence(tradeoff, max_loss, alpha).text


def run_defend(cfg: AuditConfig, grid: list[Defense], *, max_loss: float = 0.05, progress: bool = True) -> DefendResult:
    """Measure every defence in ``grid`` with the same probes as the audit, from one pass per model-side setting."""
    from logitleak.capture import capture
    from logitleak.evaluate import evaluate_sweep
    from logitleak.models.loading import load_model
    from logitleak.models.safety import check_model_source

    if cfg.endpoint:
        raise LogitleakError("`defend` needs a local model (--model); a black-box endpoint cannot be scrubbed. "
                             "Audit an endpoint's output-side defences by serving it with `logitleak serve --defense`.")
    timer = _Timer()
    out = prepare_out_dir(cfg)
    with timer("load"):
        model_path = resolve_model_path(cfg, progress=progress)
        check_model_source(model_path, allow_pickle=cfg.allow_pickle)  # cheap checks before any work
        probeset = load_probe_set(cfg)  # then the data: a bad label file fails before a model is loaded
        adapter = load_model(model_path, device=cfg.device, dtype=cfg.dtype, allow_pickle=cfg.allow_pickle)
    fit_set, eval_set = split_fit_eval(probeset, cfg.seed)
    k_api = max(cfg.k)
    if k_api > adapter.vocab_size:
        raise LogitleakError(f"k={k_api} is larger than the vocabulary ({adapter.vocab_size}); pass --k values up to {adapter.vocab_size}.")
    for d in grid:  # validate the whole grid before any work
        for t in d.output_side:
            if t.name == "topk" and int(t.value) > adapter.vocab_size:
                raise LogitleakError(f"Defence topk:{t.value} asks for more alternatives than the vocabulary has "
                                     f"({adapter.vocab_size}); use k <= {adapter.vocab_size}.")
        if d.erasure_layers:
            resolve_erasure_layers(d.erasure_layers, adapter.n_layers)
    attributes = probeset.categorical_attributes  # the trade-off is measured on the class attributes
    irrelevant = [a for a in attributes if a != cfg.task]
    labels = {a: eval_set.labels(a) for a in attributes}
    answer_ids = torch.tensor([_first_token(adapter, w) for w in eval_set.answers])
    n_layers = adapter.n_layers

    def run_pass(ps: ProbeSet, hooks: dict | None) -> Capture:
        return capture(adapter, ps, batch_size=cfg.batch_size, edit_hooks=hooks or None, progress=False)

    captures: dict[tuple[int, ...], Capture] = {}
    rows: list[pd.DataFrame] = []
    base_utility = None
    for defense in grid:
        layers = tuple(resolve_erasure_layers(defense.erasure_layers, n_layers)) if defense.erasure_layers else ()
        with timer("capture"):
            if layers not in captures:
                hooks = None
                if layers:
                    erasers = fit_erasers_sequentially(
                        lambda h: run_pass(fit_set, h).hidden, layers, {a: fit_set.labels(a) for a in irrelevant})
                    hooks = {l_: eraser_hook(e) for l_, e in erasers.items()}
                captures[layers] = run_pass(eval_set, hooks)
        cap = captures[layers]
        view = apply_output_defense(cap.logits, defense, k=k_api, seed=cfg.seed)
        # Dropping ids or values changes what the API reports, not the answer it generates: utility is
        # measured on the ranking the defence leaves before those two transforms.
        answer_view = apply_output_defense(cap.logits, _without_redaction(defense), k=k_api, seed=cfg.seed)
        utility = float((answer_view.top1() == answer_ids).float().mean())
        if base_utility is None and not defense.transforms:
            base_utility = utility
        features = api_features(view.logprobs, view.ids, view.k)
        if layers:  # the guarantee, measured: the residual stream at each erased layer
            for l_ in layers:
                features[("residual", l_, None)] = cap.hidden[:, l_].float().numpy()
        with timer("probes"):
            parts = []
            for level_keys, families in _family_groups(features, cfg):
                parts.append(evaluate_sweep({k: features[k] for k in level_keys}, labels, groups=eval_set.groups,
                                            task_attribute=cfg.task, probes=families, n_folds=cfg.probes.folds,
                                            n_permutations=cfg.probes.permutations,
                                            n_bootstrap=cfg.probes.bootstrap, seed=cfg.seed, device=cfg.device,
                                            progress=progress, probe_params=probe_params(cfg)))
            df = pd.concat(parts, ignore_index=True)
        df["defense"], df["strength"], df["defense_label"] = defense.name, defense.strength, defense.label()
        df["utility_accuracy"] = utility
        df["erased_layers"] = ",".join(map(str, layers)) if layers else None
        rows.append(df)
    tradeoff = pd.concat(rows, ignore_index=True)
    if base_utility is None:  # no 'none' in the grid: measure the undefended model for the loss
        base_cap = captures.get(()) or run_pass(eval_set, None)
        base_view = apply_output_defense(base_cap.logits, Defense(), k=k_api)
        base_utility = float((base_view.top1() == answer_ids).float().mean())
    tradeoff["utility_loss"] = base_utility - tradeoff["utility_accuracy"]
    tradeoff = tradeoff[list(TRADEOFF_COLUMNS) + [c for c in tradeoff.columns if c not in TRADEOFF_COLUMNS]]
    text = recommend(tradeoff, max_loss)
    write_results(tradeoff, out, stem="tradeoff")
    (out / "tradeoff.parquet").unlink(missing_ok=True)
    (out / "recommendation.txt").write_text(text + "\n")
    undefended = tradeoff[tradeoff["defense"] == "none"]
    run_info = {
        "identity": json.loads(json.dumps(audit_identity(cfg))), "config": cfg.model_dump(),
        "model": "organism" if cfg.model == "organism" else str(model_path),
        "model_fingerprint": adapter.fingerprint(), "data": cfg.data,
        "data_fingerprint": probeset.fingerprint(), "task": cfg.task, "attributes": attributes,
        "n_samples": len(eval_set), "n_fit_samples": len(fit_set), "seed": cfg.seed,
        "defenses": [d.label() for d in grid], "max_utility_loss": max_loss, "recommendation": text,
        "versions": package_versions(), "timings": timer.timings, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    from logitleak.report import build_report

    report = build_report(write_results(undefended, out / "cache", stem="undefended"), run_info, out / "report.html",
                          tradeoff=tradeoff, recommendation=text)
    write_json(out / "run.json", run_info)
    return DefendResult(tradeoff=tradeoff, recommendation=text, out_dir=out, report_path=report)


def _family_groups(features: dict, cfg: AuditConfig) -> list[tuple[list, list[str]]]:
    """Feature keys split by the probe families they get: the MLP only on ``cfg.probes.mlp_levels``
    (the audit's rule), so the erased layers' residual streams get the linear probe by default."""
    mlp_levels = cfg.probes.mlp_levels
    groups: dict[tuple, list] = {}
    for key in features:
        fams = tuple(f for f in cfg.probes.families if f != "mlp" or mlp_levels is None or key[0] in mlp_levels)
        groups.setdefault(fams, []).append(key)
    return [(keys, list(fams)) for fams, keys in groups.items() if fams]


def _without_redaction(defense: Defense) -> Defense:
    return Defense(tuple(t for t in defense.transforms if t.name not in ("values_only", "ranks_only")))


def _first_token(adapter, word: str) -> int:
    ids = adapter.answer_token_ids([word])
    if not ids:
        raise LogitleakError(f"The answer word {word!r} has no token in this model's vocabulary; check the task attribute's values.")
    return int(ids[0])
