"""The audit: load -> capture (one pass) -> tuned lens -> levels -> probes -> results + report."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from logitleak.config import AuditConfig
from logitleak.data.loading import load_probe_set
from logitleak.data.probeset import ProbeSet
from logitleak.decisions import Decisions, decide, decide_attack
from logitleak.errors import LogitleakError
from logitleak.levels.plan import plan_levels
from logitleak.levels.table import ANSWERS, DECODER_LAYER_LEVELS, LENS, TRANSITION_LEVELS, TUNED_LENS_LEVELS
from logitleak.models.devices import compute_device
from logitleak.probing.attack_files import split_attack, write_attack
from logitleak.results import write_results
from logitleak.timing import Timer
from logitleak.userpaths import OutDir, claim_out_dir

IDENTITY_KEYS = ("model", "data", "labels", "task", "question", "attributes", "samples", "seed", "endpoint", "served_model",
                 "generate")


@dataclass
class AuditResult:
    """An audit's table, decisions, files and run record; a notebook shows the report's first screen."""

    results: pd.DataFrame
    out_dir: Path
    run_info: dict
    report_path: Path | None = None
    problems: list[str] = field(default_factory=list)
    decisions: Decisions | None = None  # run_audit's, taken once

    def _repr_html_(self) -> str:
        from logitleak.report import first_screen_html

        return first_screen_html(self.decisions if self.decisions is not None else decide(self.results))


def audit_identity(cfg: AuditConfig) -> dict:
    """The settings that make two audits 'the same audit' (others only add or reuse work). An
    endpoint audit names no local model (``model`` is then ``None``, not the config default)."""
    identity = {k: getattr(cfg, k) for k in IDENTITY_KEYS}
    if cfg.endpoint:
        identity["model"] = None
    return identity


def prepare_out_dir(cfg: AuditConfig) -> OutDir:
    """The device checked, then the output directory claimed (:mod:`logitleak.userpaths`): refused
    when it is not logitleak's or another run holds it; :meth:`~logitleak.userpaths.OutDir.begin`
    (in :func:`start_run`) then refuses a different run's directory unless ``force``."""
    if cfg.device is not None:  # (None: resolved when the model loads, without importing torch here)
        from logitleak.models.devices import check_device

        check_device(cfg.device)
    return claim_out_dir(cfg.out, force=cfg.force)


@dataclass
class Start:
    """Where every run stands once it is loaded: its output folder, probe set and model (``None``
    for a black-box endpoint), and how the run record names that model."""

    cfg: AuditConfig
    out_dir: OutDir
    probeset: ProbeSet
    adapter: object | None = None
    model_path: Path | None = None

    @property
    def out(self) -> Path:
        """The output folder's path."""
        return self.out_dir.path

    @property
    def model_name(self) -> str:
        """The model as run.json and the report name it: ``organism``, the GGUF file a converted
        directory came from, the model directory, or the endpoint and its served model."""
        if self.adapter is None:
            return f"{self.cfg.endpoint} ({self.cfg.served_model})"
        if self.cfg.model == "organism":
            return "organism"
        return self.adapter.name if getattr(self.adapter, "gguf_source", None) else str(self.model_path)

    def model_fingerprint(self) -> str:
        """The weights' fingerprint (the served model's name for an endpoint)."""
        return self.adapter.fingerprint() if self.adapter is not None else (self.cfg.served_model or "")


def start_run(cfg: AuditConfig, out_dir: OutDir, timer: Timer, *, command: str, progress: bool = True,
              check_data: Callable[[ProbeSet], ProbeSet] | None = None) -> Start:
    """The one start of every run (audit, defend) in the output folder it holds
    (:func:`prepare_out_dir`), timed as ``load``: the cheap checks before any work — the model
    source (a local model), then the probe set (``check_data`` refuses what this run cannot use), so
    a bad label file fails before a model is loaded — then the folder (a different run's is refused)
    and last the model."""
    with timer("load"):
        model_path = None
        if not cfg.endpoint:
            from logitleak.models.safety import check_model_source

            model_path = resolve_model_path(cfg, progress=progress)
            check_model_source(model_path, allow_pickle=cfg.allow_pickle)
        probeset = load_probe_set(cfg)
        if check_data is not None:
            probeset = check_data(probeset)
        out_dir.begin(audit_identity(cfg), command)
        if model_path is None:
            return Start(cfg, out_dir, probeset)
        from logitleak.models.loading import load_model  # (imports torch: after the cheap checks)

        adapter = load_model(model_path, device=cfg.device, dtype=cfg.dtype, allow_pickle=cfg.allow_pickle)
    return Start(cfg, out_dir, probeset, adapter, model_path)


def run_record(start: Start, timer: Timer, **fields) -> dict:
    """The run record every command writes to run.json: what was run on what (identity, settings,
    model and data with their fingerprints), ``fields`` of its own, versions and phase timings."""
    cfg = start.cfg
    return {
        "identity": json.loads(json.dumps(audit_identity(cfg))), "config": cfg.model_dump(),
        "model": start.model_name, "model_fingerprint": start.model_fingerprint(), "data": cfg.data,
        "data_fingerprint": start.probeset.fingerprint(), "task": cfg.task, **fields, "seed": cfg.seed,
        "versions": package_versions(), "timings": timer.timings, "cpu_timings": timer.cpu,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def finish_run(start: Start, run_info: dict, timer: Timer) -> None:
    """Write run.json last, with every phase's wall and CPU time."""
    run_info["timings"], run_info["cpu_timings"] = timer.timings, timer.cpu
    start.out_dir.finish(run_info)


def package_versions() -> dict[str, str]:
    names = ("logitleak", "torch", "transformers", "scikit-learn", "numpy", "concept-erasure", "openai")
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def resolve_model_path(cfg: AuditConfig, progress: bool = True) -> Path:
    """``organism`` -> the cached trained organism (training it once); ``smollm2`` or a GGUF file ->
    its converted directory; otherwise a local directory (see :mod:`logitleak.models.resolve`)."""
    from logitleak.models.resolve import resolve_model

    return resolve_model(cfg.model, progress=progress)


def answer_token_ids(adapter, probeset: ProbeSet) -> list[int]:
    """First token of every attribute value as it would follow the prompt (the answer words)."""
    words = sorted({str(v) for col in probeset.categorical_attributes for v in probeset.attributes[col].unique()})
    unk = getattr(adapter.tokenizer, "unk_token_id", None)
    return sorted({i for i in adapter.answer_token_ids(words) if i != unk})


def add_layer_types(results: pd.DataFrame, layer_types: list[str] | None) -> pd.DataFrame:
    """A ``layer_type`` column: for decoder-layer rows the kind of hidden state ``layer``
    (``embedding``, ``self`` or ``cross`` attention block), for vision rows ``vision``."""
    if results.empty or not layer_types:
        return results
    out = results.copy()
    types = []
    for level, layer in zip(out["level"], out["layer"]):
        if level in DECODER_LAYER_LEVELS and not pd.isna(layer) and 0 <= int(layer) < len(layer_types):
            types.append(layer_types[int(layer)])
        elif level == "vision":
            types.append("vision")
        else:
            types.append(None)
    out["layer_type"] = types
    return out


def _selected_layers(cfg: AuditConfig, n_layers: int) -> list[int]:
    if cfg.layers == "all":
        return list(range(n_layers + 1))
    from logitleak.capture.source import check_layer  # (imports torch: only once a model is loaded)

    return [check_layer(layer, n_layers, fix="pick layers in that range or 'all'") for layer in cfg.layers]


def _check_levels_fit(cfg: AuditConfig, probeset):
    """``probeset``, after refusing asked-for image levels on a text-only set (before any model work)."""
    if "levels" in cfg.model_fields_set and probeset.images is None:
        asked = [lv for lv in cfg.levels if lv in TRANSITION_LEVELS]
        if asked:
            raise LogitleakError(f"Level {asked[0]!r} needs a probe set with images, and {probeset.name!r} is text only; "
                                 "drop it from --levels.")
    return probeset


def _start_probe_workers(cfg: AuditConfig) -> None:
    """After the cheap checks: start the probe worker processes, so their imports overlap the capture."""
    from logitleak.probing.stages import stage_workers, start_workers

    start_workers(0 if cfg.ray else stage_workers(cfg.probes.workers, compute_device(cfg.device)))  # Ray: none here


def run_audit(cfg: AuditConfig, *, progress: bool = True) -> AuditResult:
    """Run one audit end to end and write results, run.json and report.html into ``cfg.out``."""
    from logitleak.probing.stages import stop_workers

    with prepare_out_dir(cfg) as out_dir:
        try:
            return _audit(cfg, out_dir, progress)
        finally:
            stop_workers()  # probe processes started early and never used (the audit failed before probing)


def _audit(cfg: AuditConfig, out_dir: OutDir, progress: bool) -> AuditResult:
    """:func:`run_audit` in the output folder it holds."""
    timer = Timer(progress=progress)

    def data_checked(probeset: ProbeSet) -> ProbeSet:
        _check_levels_fit(cfg, probeset)
        _start_probe_workers(cfg)  # their imports overlap the model load and the capture
        return probeset

    start = start_run(cfg, out_dir, timer, command="audit", progress=progress, check_data=data_checked)
    out, probeset, adapter = start.out, start.probeset, start.adapter
    if adapter is not None:
        _selected_layers(cfg, adapter.n_layers)  # a layer the model lacks fails before the capture
    cache = out / "cache"
    problems: list[str] = []
    problems.extend(probeset.meta.get("notes", []))
    attributes = list(probeset.attributes.columns)
    for a in attributes:
        if probeset.attributes[a].nunique() < 2:
            raise LogitleakError(f"Attribute {a!r} has a single class in the probe set; drop it with --attributes or add samples with other values.")
    lens = None
    with timer("capture"):
        if cfg.endpoint:
            from logitleak.endpoint.capture import blackbox_capture

            capture, endpoint_problems = blackbox_capture(cfg, probeset, cache / "responses", progress=progress)
            problems.extend(endpoint_problems)  # after the probe set's notes (duplicates), not instead of them
            readout, answer_ids, n_layers = None, None, 0
            layers: list[int] = []
        else:
            from logitleak.capture.ray_capture import audit_capture

            capture = audit_capture(cfg, cache / "captures", start.model_path, adapter, probeset, progress)  # read lazily
            readout = adapter.readout().to(compute_device(cfg.device))  # lens and lens levels: the first GPU
            answer_ids = answer_token_ids(adapter, probeset)
            n_layers = capture.n_layers
            layers = _selected_layers(cfg, n_layers)
    levels = plan_levels(cfg.levels, set(capture.contents) | ({LENS, ANSWERS} if not cfg.endpoint else set()),
                         explicit="levels" in cfg.model_fields_set or bool(cfg.endpoint),
                         generate=bool(cfg.generate), endpoint=bool(cfg.endpoint))
    if any(lv in TUNED_LENS_LEVELS for lv in levels):
        with timer("tuned_lens"):
            lens = _tuned_lens(capture, readout, cache / "lens", cfg, probeset.groups, layers=layers, progress=progress)
            taken = lens.train_info_.get("kl_steps", cfg.lens.steps)
            if taken < cfg.lens.steps:
                how = "as they are" if taken == 0 else f"refined by {taken} steps"
                problems.append(f"The tuned lens took {taken} of its {cfg.lens.steps} KL steps per layer (a vocabulary of "
                                f"{readout.vocab_size} at width {readout.d_model} costs too much per step on the CPU): its "
                                f"translators are the least-squares maps to the last layer, {how}; run.json's "
                                "tuned_lens_kl gives the held-out KL per layer.")
    with timer("levels"):
        from logitleak.levels.features import build_features

        features = build_features(capture, readout, levels=levels, layers=layers, ks=cfg.k, lens=lens,
                                  answer_token_ids=answer_ids, pca_dims=cfg.pca_dims)
    with timer("probes"):
        from logitleak.probing.resume import probe_with_resume

        results = probe_with_resume(features, probeset, cfg, cache / "probes", attributes, progress=progress,
                                    problems=problems, attack=True)
        results, attack = split_attack(results, probeset, attributes)
        if not cfg.endpoint:
            results = add_layer_types(results, adapter.layer_types)
    results = write_results(results, out)
    write_attack(attack, out)
    run_info = run_record(start, timer, attributes=attributes, n_samples=len(probeset), n_layers=n_layers,
                          problems=problems)
    from logitleak.levels.utility import answer_utility

    run_info["utility"] = answer_utility(capture, probeset, adapter=None if cfg.endpoint else adapter)
    if lens is not None and hasattr(lens, "heldout_kl_"):
        run_info["tuned_lens_kl"] = lens.heldout_kl_
    decisions = decide(results)  # once: the report, verdict.json and the summaries read these
    attack_decisions = decide_attack(attack.curve, roc=attack.roc, exposure=attack.exposure)
    with timer("report"):
        from logitleak.report import build_report
        from logitleak.report.gate import verdict_record, write_verdict

        report_path = build_report(results, run_info, out / "report.html", decisions=decisions,
                                   attack=attack_decisions)
        write_verdict(out, verdict_record(decisions))
    finish_run(start, run_info, timer)
    return AuditResult(results=results, out_dir=out, run_info=run_info, report_path=report_path, problems=problems,
                       decisions=decisions)


def _tuned_lens(capture, readout, lens_dir: Path, cfg: AuditConfig, groups: np.ndarray, layers=None,
                progress: bool = False):
    """Reuse a lens saved for this model in the output directory (only when its files match their
    checksums), else train and save one, with translators for the audited ``layers`` only (every
    layer when ``None``)."""
    from logitleak.integrity import verified
    from logitleak.levels.lens import CONFIG_FILE, LENS_VERSION, WEIGHTS_FILE, TunedLens, fit_tuned_lens

    if all(verified(lens_dir / name) for name in (CONFIG_FILE, WEIGHTS_FILE)):
        try:
            lens = TunedLens.load(lens_dir, readout=readout)
        except Exception:  # noqa: BLE001 - verified bytes that no longer load (another version): refit
            lens = None
        wanted = (lens is not None and (set(lens.layers) >= {x for x in (layers or []) if x < capture.n_layers}
                                        if layers else True))
        same = lens is not None and lens.version_ == LENS_VERSION and all(
            lens.train_info_.get(key) == value for key, value in (("steps", cfg.lens.steps), ("lr", cfg.lens.lr),
                                                                  ("seed", cfg.seed)))
        if lens is not None and lens.matches(readout) and wanted and same:
            return lens
    fit_layers = None if layers is None else [x for x in layers if x < capture.n_layers]
    lens = fit_tuned_lens(capture, readout, layers=fit_layers, steps=cfg.lens.steps, lr=cfg.lens.lr, seed=cfg.seed,
                          groups=groups, progress=progress)
    lens.save(lens_dir)
    return lens
