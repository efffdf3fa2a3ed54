"""`logitleak defend`: the audit once per defence, leakage at the API level against answer accuracy.

Every defence goes through the audit's own pipeline: model-side ones (LEACE erasure at layers) as
a stored capture under the activation store's edit key (the erasers' layers and weights), fitted
shard by shard from stored captures of the fit split; output-side ones as a stored view of that
capture's logits under the defence's own key (:mod:`logitleak.defenses.stored`); then the audit's
levels and its probes with their cache (:func:`~logitleak.probing.resume.probe_with_resume`). So a killed
run resumes where it stopped with identical results, and memory is bounded like the audit's: one
shard, one layer or one defence's features at a time. A trained bottleneck (``bottleneck:lambda``)
is fine-tuned on the fit split (:mod:`logitleak.defenses.bottleneck_train`), saved as a model
directory, loaded back like any model and measured by the same audit with fresh probes of every
family (the MLP included) at the API levels and at every layer of the residual stream.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from logitleak.audit import finish_run, prepare_out_dir, run_record, start_run
from logitleak.capture.source import Capture
from logitleak.config import AuditConfig
from logitleak.data.probeset import ProbeSet
from logitleak.decisions import Recommendation, recommend_defence
from logitleak.decisions.defences import UNDEFENDED
from logitleak.defenses.bottleneck import BottleneckSettings, check_place, parse_place, resolve_protect
from logitleak.defenses.erasure import eraser_hook, erasers_key, fit_erasers_from_store, resolve_erasure_layers
from logitleak.defenses.output import check_defense
from logitleak.defenses.spec import Defense
from logitleak.errors import LogitleakError
from logitleak.levels.table import API, API_IDS, RETURNED_LEVELS, computable
from logitleak.models.tokens import check_k
from logitleak.results import write_results
from logitleak.timing import Timer
from logitleak.userpaths import OutDir

TRADEOFF_COLUMNS = ("defense", "strength", "layer", "attribute", "level", "k", "probe", "task_relevant",
                    "accuracy", "baseline_accuracy", "ci_low", "ci_high", "p_value", "v_info_bits",
                    "utility_accuracy", "utility_loss")


@dataclass
class DefendResult:
    """The trade-off table, the recommendation (its sentence, and the decision with every defence's
    decisions, taken once), and where they were written."""

    tradeoff: pd.DataFrame
    recommendation: str
    out_dir: Path
    report_path: Path | None
    decision: Recommendation | None = None
    run_info: dict | None = None


def split_fit_eval(probeset: ProbeSet, seed: int, fit_fraction: float = 0.5,
                   stratify: str | None = None) -> tuple[ProbeSet, ProbeSet]:
    """A grouped split (:func:`logitleak.probing.splits.cv_splits`, stratified by the ``stratify`` attribute
    when given): erasers are fitted and bottlenecks trained on one part, every defence is measured on
    the other."""
    from logitleak.probing.splits import cv_splits

    if stratify is not None and stratify in probeset.categorical_attributes:
        _, codes = np.unique(np.asarray(probeset.labels(stratify)).astype(str), return_inverse=True)
    else:
        codes = np.zeros(len(probeset), dtype=np.int64)
    fit_idx, eval_idx = cv_splits(codes, np.asarray(probeset.groups), test_size=1.0 - fit_fraction, seed=seed + 7919)[0]
    return probeset.subset(np.sort(fit_idx)), probeset.subset(np.sort(eval_idx))


def api_features(view_logprobs: torch.Tensor, view_ids: torch.Tensor, k: int) -> dict:
    """The API levels of one defended output, skipping levels the defence removed."""
    from logitleak.levels.features import build_features

    values_gone = torch.isnan(view_logprobs).all()
    ids_gone = bool((view_ids < 0).all())
    returned = ({API} if not values_gone else set()) | ({API_IDS} if not ids_gone else set())
    levels = [lv for lv in RETURNED_LEVELS if computable(lv, returned)]
    if values_gone:  # ranks only: the attacker still sees the order, so encode the rank as the value
        view_logprobs = -torch.arange(view_ids.shape[1], dtype=torch.float32).expand(view_ids.shape).clone()
    cap = Capture(topk_logprobs=view_logprobs, topk_ids=view_ids)
    return build_features(cap, None, levels=levels, layers=[], ks=[k])


def recommend(tradeoff: pd.DataFrame, max_loss: float, alpha: float = 0.05) -> str:
    """The recommendation's sentence: the audit's decisions per defence (:func:`logitleak.decisions.recommend_defence`)."""
    return recommend_defence(tradeoff, max_loss, alpha).text


def fit_fraction_for(n: int, fit_samples: int | None) -> float:
    """The share of ``n`` samples that fits erasers and trains bottlenecks (``None``: half)."""
    if fit_samples is None:
        return 0.5
    if not 10 <= fit_samples <= n - 10:
        raise LogitleakError(f"--fit-samples {fit_samples} leaves too few samples on one side of {n}; pass a number "
                             f"from 10 to {n - 10}, or raise --samples.")
    return fit_samples / n


def with_fresh_mlp(cfg: AuditConfig) -> AuditConfig:
    """``cfg`` with the MLP among the probe families at every level: how a bottlenecked model is
    audited, since adversarial training can hide from the probes it trained against and not from a
    fresh, more flexible one."""
    families = list(dict.fromkeys([*cfg.probes.families, "mlp"]))
    return cfg.model_copy(update={"probes": cfg.probes.model_copy(update={"families": families, "mlp_levels": None})})


def check_fresh_mlp(df: pd.DataFrame, attributes: list[str], label: str) -> None:
    """The audit of a bottleneck holds a fresh MLP probe of every protected attribute at an API level."""
    from logitleak.levels.table import API_LEVELS

    api = df[df["level"].isin(API_LEVELS)]
    missing = [a for a in attributes if not ((api["attribute"] == a) & (api["probe"] == "mlp")).any()]
    if missing:
        raise RuntimeError(f"The audit of {label} has no fresh MLP probe of {', '.join(missing)} at the API level.")


def run_defend(cfg: AuditConfig, grid: list[Defense], *, max_loss: float = 0.05, progress: bool = True,
               bottleneck: BottleneckSettings | None = None, fit_samples: int | None = None) -> DefendResult:
    """Measure every defence in ``grid`` with the audit's pipeline and probes: one stored capture per
    model-side setting (erasers, or a bottleneck trained with ``bottleneck``'s settings), one stored
    view per output-side defence, the probes' cache; resumable. ``fit_samples``: the size of the
    split that fits erasers and trains bottlenecks (default: half)."""
    if cfg.endpoint:
        raise LogitleakError("`defend` needs a local model (--model); a black-box endpoint cannot be scrubbed. "
                             "Audit an endpoint's output-side defences by serving it with `logitleak serve --defense`.")
    with prepare_out_dir(cfg) as out_dir:
        return _defend(cfg, out_dir, grid, max_loss=max_loss, progress=progress, bottleneck=bottleneck,
                       fit_samples=fit_samples)


def _defend(cfg: AuditConfig, out_dir: OutDir, grid: list[Defense], *, max_loss: float, progress: bool,
            bottleneck: BottleneckSettings | None, fit_samples: int | None) -> DefendResult:
    """:func:`run_defend` in the output folder it holds."""
    from logitleak.capture.store import ActivationStore
    from logitleak.defenses.stored import defended_output

    timer = Timer(progress=progress)

    def data_checked(probeset: ProbeSet) -> ProbeSet:
        if not probeset.categorical_attributes:  # the trade-off is measured on the class attributes
            raise LogitleakError(f"Probe set {probeset.name!r} has no class attribute; `defend` measures class "
                                 "attributes, so give it one (e.g. with --attributes).")
        return probeset

    start = start_run(cfg, out_dir, timer, command="defend", progress=progress, check_data=data_checked)
    out, probeset, adapter = start.out, start.probeset, start.adapter
    attributes = probeset.categorical_attributes
    cache = out / "cache"
    fit_set, eval_set = split_fit_eval(probeset, cfg.seed, fit_fraction_for(len(probeset), fit_samples),
                                       stratify=cfg.task)
    k_api = max(cfg.k)
    check_k(k_api, adapter.vocab_size, f"--k {k_api}")
    irrelevant = [a for a in attributes if a != cfg.task]
    for d in grid:  # validate the whole grid before any work
        check_defense(d, adapter.vocab_size)
        if d.erasure_layers:
            resolve_erasure_layers(d.erasure_layers, adapter.n_layers)
            if not irrelevant:
                raise LogitleakError(f"Defence {d.label()} erases task-irrelevant attributes, and the probe set has none "
                                     f"besides the task {cfg.task!r}; add attributes or drop leace from --defenses.")
    settings = bottleneck or BottleneckSettings()
    if any(d.bottleneck is not None for d in grid):
        settings = settings.with_protect(resolve_protect(settings.protect, attributes, cfg.task))
        check_place(parse_place(settings.at), adapter.n_layers)
    answer_ids = torch.tensor([_first_token(adapter, w) for w in eval_set.answers])
    store = ActivationStore(cache / "captures")

    def extract(ps: ProbeSet, hooks: dict | None, key: str | None, hidden_dtype: str | None = cfg.store_dtype, model=None):
        return store.extract(model or adapter, ps, batch_size=cfg.batch_size, shard_size=cfg.shard_size, progress=progress,
                             edit_hooks=hooks or None, edit_key=key if hooks else None, vision_pool=None,
                             hidden_dtype=hidden_dtype)

    def capture_for(layers: tuple[int, ...]):
        """The evaluation split's stored capture with erasers at ``layers`` (none: the plain capture)."""
        if not layers:
            return extract(eval_set, None, None)
        # The fit split is stored in float32: erasers fitted on float16 states erase less exactly and
        # cost more answer accuracy (measured: 0.603 against 0.663 for leace:all on 400 organism samples).
        erasers = fit_erasers_from_store(lambda hooks, key: extract(fit_set, hooks, key, "float32"), layers,
                                         {a: fit_set.labels(a) for a in irrelevant})
        return extract(eval_set, {l_: eraser_hook(e) for l_, e in erasers.items()}, erasers_key(erasers))

    def bottleneck_for(lam: float):
        """The evaluation split's stored capture through the bottleneck trained with ``lam`` (trained,
        or reused when its directory is finished), and that model's directory."""
        from logitleak.defenses.bottleneck_train import train_bottleneck
        from logitleak.models.loading import load_model

        path = train_bottleneck(adapter, fit_set, lam=lam, settings=settings, task=cfg.task, root=cache / "bottleneck",
                                seed=cfg.seed, progress=progress)
        trained = load_model(path, device=cfg.device, dtype=cfg.dtype)
        return extract(eval_set, None, None, model=trained), path

    captures: dict[tuple, object] = {}
    rows: list[pd.DataFrame] = []
    utilities: dict[str, float] = {}
    bottlenecks: dict[str, dict] = {}
    for defense in grid:
        layers = tuple(resolve_erasure_layers(defense.erasure_layers, adapter.n_layers)) if defense.erasure_layers else ()
        lam = defense.bottleneck
        with timer("bottleneck" if lam is not None else "capture"):
            key = ("bottleneck", lam) if lam is not None else layers
            if key not in captures:
                if lam is None:
                    captures[key] = capture_for(layers)
                else:
                    captures[key], path = bottleneck_for(lam)
                    bottlenecks[defense.label()] = {"lambda": lam, "path": str(path), "protect": list(settings.protect),
                                                    "at": settings.at}
            stored = captures[key]
        with timer("defend"):
            defended = defended_output(stored, defense, k=k_api, seed=cfg.seed, root=cache / "defended")
        # The answer is the top token under the defence's value transforms: a redaction (values_only,
        # ranks_only) changes what the API reports, not the token it generates.
        utility = float((defended.answers == answer_ids).float().mean())
        utilities[defense.label()] = utility
        features = api_features(defended.view.logprobs, defended.view.ids, defended.view.k)
        # the guarantee, measured: the residual stream at each erased layer; for a bottleneck at every
        # layer, so the report can say how far back in the model the information is gone
        for l_ in (range(1, adapter.n_layers + 1) if lam is not None else layers):
            features[("residual", l_, None)] = stored.layer(l_, dtype=np.float32)
        with timer("probes"):
            from logitleak.probing.resume import probe_with_resume

            df = probe_with_resume(features, eval_set, with_fresh_mlp(cfg) if lam is not None else cfg,
                                   cache / "probes", attributes, progress=progress)
        del features
        if lam is not None:
            check_fresh_mlp(df, list(settings.protect), defense.label())
        df["defense"], df["strength"], df["defense_label"] = defense.name, defense.strength, defense.label()
        df["utility_accuracy"] = utility
        df["erased_layers"] = ",".join(map(str, layers)) if layers else None
        df["bottleneck_at"] = settings.at if lam is not None else None
        rows.append(df)
    tradeoff = pd.concat(rows, ignore_index=True)
    if "none" in utilities:
        base_utility = utilities["none"]
    else:  # no 'none' in the grid: measure the undefended model for the loss
        with timer("capture"):
            plain = captures.get(()) or capture_for(())
        base = defended_output(plain, Defense(), k=k_api, seed=cfg.seed, root=cache / "defended")
        base_utility = float((base.answers == answer_ids).float().mean())
    tradeoff["utility_loss"] = base_utility - tradeoff["utility_accuracy"]
    tradeoff = tradeoff[list(TRADEOFF_COLUMNS) + [c for c in tradeoff.columns if c not in TRADEOFF_COLUMNS]]
    decision = recommend_defence(tradeoff, max_loss)  # the audit's leak rule, once per defence (read by all below)
    text = decision.text
    if bottlenecks:
        from logitleak.decisions.bottleneck import bottleneck_sentences, information_gone_from

        for label, info in bottlenecks.items():
            info["gone_from_layer"] = information_gone_from(tradeoff[tradeoff["defense_label"] == label],
                                                            info["protect"], adapter.n_layers)
        text = " ".join([text, *bottleneck_sentences(tradeoff, bottlenecks, adapter.n_layers)])
        decision = dataclasses.replace(decision, text=text)  # the report and the CLI say it too
    write_results(tradeoff, out, stem="tradeoff")
    (out / "tradeoff.parquet").unlink(missing_ok=True)
    (out / "recommendation.txt").write_text(text + "\n")
    undefended = tradeoff[tradeoff["defense"] == "none"]
    run_info = run_record(start, timer, attributes=attributes, n_samples=len(eval_set), n_fit_samples=len(fit_set),
                          n_layers=adapter.n_layers, defenses=[d.label() for d in grid], max_utility_loss=max_loss,
                          recommendation=text, recommendation_kind=decision.kind,
                          recommended_defense=decision.label,
                          utility={"n": len(eval_set), "first_token_accuracy": base_utility}, bottlenecks=bottlenecks)
    from logitleak.report import build_report
    from logitleak.report.gate import defend_record, write_verdict

    with timer("report"):
        bare = decision.defences.get(UNDEFENDED)  # the undefended rows' decisions, already taken
        report = build_report(write_results(undefended, cache, stem="undefended"), run_info, out / "report.html",
                              tradeoff=tradeoff, recommendation=decision,
                              decisions=bare.decisions if bare is not None else None)
        write_verdict(out, defend_record(decision))
    finish_run(start, run_info, timer)
    return DefendResult(tradeoff=tradeoff, recommendation=text, out_dir=out, report_path=report, decision=decision,
                        run_info=run_info)


def _first_token(adapter, word: str) -> int:
    ids = adapter.answer_token_ids([word])
    if not ids:
        raise LogitleakError(f"The answer word {word!r} has no token in this model's vocabulary; check the task attribute's values.")
    return int(ids[0])
