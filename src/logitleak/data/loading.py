"""Turn an audit configuration's `data` entry into a ProbeSet."""

from __future__ import annotations

from pathlib import Path

from logitleak.config import AuditConfig
from logitleak.data.folder import load_datasets_dir, load_image_folder
from logitleak.data.probeset import ProbeSet
from logitleak.data.shapes import ATTRIBUTES, QUESTIONS, make_shapes
from logitleak.errors import LogitleakError


def load_probe_set(cfg: AuditConfig) -> ProbeSet:
    """``shapes`` or ``personas`` (generated, seeded), a text prompt file (``prompt`` / ``messages``
    column), an image folder / label file, or a local `datasets` directory."""
    if cfg.data == "personas":
        from logitleak.data.personas import make_personas

        return _keep_attributes(make_personas(cfg.samples, task=cfg.task, seed=cfg.seed), cfg)
    if cfg.data == "shapes":
        if cfg.task not in ATTRIBUTES:
            raise LogitleakError(f"Task attribute {cfg.task!r} is not a shapes attribute; choose one of: {', '.join(ATTRIBUTES)}.")
        ps = make_shapes(cfg.samples, questions=cfg.task, seed=cfg.seed)
        if cfg.question:
            ps.prompts = [cfg.question] * len(ps)
        if cfg.attributes:
            for a in cfg.attributes:
                ps.labels(a)  # clear error for an unknown attribute
            keep = list(dict.fromkeys([cfg.task, *cfg.attributes]))
            ps.attributes = ps.attributes[keep]
        return ps
    path = Path(cfg.data)
    if not path.exists():
        raise LogitleakError(f"Probe set {cfg.data!r} is neither 'shapes', 'personas' nor an existing folder, prompt file or label file; pass one of those.")
    question = cfg.question or _default_question(cfg.task)
    common = dict(question=question, task=cfg.task, group_column=cfg.group_column, attributes=cfg.attributes,
                  samples=cfg.samples, seed=cfg.seed)
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        return load_datasets_dir(path, **common)
    if path.is_file() and not cfg.labels:
        from logitleak.data.labelfile import read_records
        from logitleak.data.text import has_text_column, load_text_file

        columns = [str(c) for c in read_records(path).columns]
        if has_text_column(columns) and cfg.path_column not in columns:
            return load_text_file(path, task=cfg.task, group_column=cfg.group_column, attributes=cfg.attributes,
                                  samples=cfg.samples, seed=cfg.seed)
        if cfg.path_column not in columns:
            raise LogitleakError(f"Label file {path} has no 'prompt' or 'messages' column (a text probe set) and no "
                                 f"{cfg.path_column!r} column (an image probe set); add one of them "
                                 f"(columns now: {', '.join(columns)}).")
    return load_image_folder(path, labels=cfg.labels, path_column=cfg.path_column,
                             allow_outside=cfg.allow_outside_data, **common)


def _keep_attributes(ps: ProbeSet, cfg: AuditConfig) -> ProbeSet:
    """Keep only the task and ``cfg.attributes`` (when given), with a clear error for an unknown one."""
    if cfg.attributes:
        for a in cfg.attributes:
            ps.labels(a)
        ps.attributes = ps.attributes[list(dict.fromkeys([cfg.task, *cfg.attributes]))]
    return ps


def _default_question(task: str) -> str:
    if task in QUESTIONS:
        return QUESTIONS[task][0]
    return f"what is the {task.replace('_', ' ')} ?"
