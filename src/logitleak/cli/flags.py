"""The command-line flags of the audit configuration, generated from one list.

Every key of :class:`~logitleak.config.AuditConfig` (nested ``probes.*`` / ``lens.*`` ones too) has
one :class:`Flag` in :data:`CONFIG_FLAGS`; :func:`config_command` adds them to a command, parses
the values and hands the command a dict of overrides (``None`` = not given) for
:func:`~logitleak.config.resolve_config`. A new config key needs one new line here (a test checks).
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Optional

import typer

from logitleak.errors import LogitleakError

_KINDS = ("str", "int", "float", "bool", "ints", "strs", "layers")


@dataclass(frozen=True)
class Flag:
    """One config key on the command line: ``key`` (dotted for nested), its help, how to parse it."""

    key: str
    help: str
    kind: str = "str"
    name: str | None = None
    """The flag, e.g. ``--probes``; default ``--`` + the last part of the key with ``-`` for ``_``."""

    @property
    def flag(self) -> str:
        return self.name or "--" + self.key.split(".")[-1].replace("_", "-")

    @property
    def param(self) -> str:
        return "cfg__" + self.key.replace(".", "__")


CONFIG_FLAGS: tuple[Flag, ...] = (
    Flag("model", "Local Hugging Face model directory, a .gguf file, 'organism' or 'smollm2'."),
    Flag("data", "'shapes', 'personas', a prompt file (prompt/messages column), an image folder (with labels.csv), "
                 "a label file, or a saved `datasets` directory."),
    Flag("labels", "Label file for an image folder (CSV/JSONL/parquet)."),
    Flag("path_column", "Label-file column holding each image's path, relative to the data folder."),
    Flag("group_column", "Label-file column of group ids: samples of one group never straddle train and test."),
    Flag("allow_outside_data", "Allow label-file paths outside the data folder ('../', absolute paths).", "bool"),
    Flag("question", "Prompt text asked of every sample."),
    Flag("task", "The attribute the question asks about (task-relevant)."),
    Flag("attributes", "Comma-separated attributes to probe (default: all).", "strs"),
    Flag("levels", "Comma-separated levels (default: all).", "strs"),
    Flag("layers", "Comma-separated hidden-state indices, or 'all'.", "layers"),
    Flag("k", "Comma-separated k values, e.g. 1,2,5,10,20.", "ints"),
    Flag("pca_dims", "Dimensions of the pca level, e.g. 1,4,16,64.", "ints"),
    Flag("vision_pool", "Vision levels: 'mean' of the image tokens or 'cls'."),
    Flag("generate", "Generate N tokens (greedy) and read every one: residual and top-k at each generated "
                     "position, whole-response levels.", "int"),
    Flag("samples", "Number of probe samples.", "int"),
    Flag("seed", "Random seed (data, splits, probes).", "int"),
    Flag("out", "Output directory."),
    Flag("force", "Replace a different audit's results in --out.", "bool"),
    Flag("batch_size", "Capture batch size.", "int"),
    Flag("shard_size", "Samples per activation-store shard (memory holds one shard).", "int"),
    Flag("device", "torch device: cpu, cuda, cuda:N, mps, or auto (the model placed across the visible GPUs and CPU "
                   "memory; lens and probes on the first GPU) (default: cuda if available, else cpu)."),
    Flag("dtype", "Model dtype, e.g. float32, bfloat16."),
    Flag("store_dtype", "Activation store dtype: float16, bfloat16 or float32 (default: float16 on a GPU, float32 "
                        "on the CPU)."),
    Flag("ray", "Ray cluster for data-parallel capture (one model replica per GPU) and the probe stages: auto "
                "(the running cluster), local (start one here), HOST:PORT or ray://HOST:PORT (default: no Ray)."),
    Flag("allow_pickle", "Also load pickle checkpoints (pytorch_model.bin) with torch's weights-only loader; "
                         "by default only safetensors load.", "bool"),
    Flag("probes.families", "Probe families: linear,mlp.", "strs", name="--probes"),
    Flag("probes.folds", "Cross-validation folds.", "int"),
    Flag("probes.permutations", "Label permutations with a refit each: the exact but costly check "
                                "(default 0: the held-out test).", "int"),
    Flag("probes.bootstrap", "Bootstrap resamples for the intervals.", "int"),
    Flag("probes.C", "Fixed inverse L2 strength of the linear probe (default: chosen by inner validation).", "float",
         name="--probe-c"),
    Flag("probes.mlp_levels", "Run the MLP probe only on these comma-separated levels.", "strs"),
    Flag("probes.workers", "Processes probing independent stages side by side (0: this process only; default: one "
                           "per CPU core, up to 4, on the CPU).", "int", name="--probe-workers"),
    Flag("probes.attack_sizes", "Attacker sample counts of the attack-cost curves at the API levels, e.g. "
                                "25,50,100,200,500,1000 (0: none).", "ints", name="--attack-sizes"),
    Flag("lens.steps", "Tuned-lens training steps.", "int", name="--lens-steps"),
    Flag("lens.lr", "Tuned-lens learning rate.", "float", name="--lens-lr"),
    Flag("endpoint", "OpenAI-compatible base URL for a black-box audit."),
    Flag("served_model", "Model name at the endpoint."),
    Flag("api_key_env", "Environment variable holding the endpoint's API key."),
    Flag("concurrency", "Concurrent requests to the endpoint.", "int"),
    Flag("max_requests", "Request budget for the endpoint.", "int"),
)

_TYPES = {"int": int, "float": float, "bool": bool}


def flags_by_key() -> dict[str, Flag]:
    return {f.key: f for f in CONFIG_FLAGS}


def flag_names() -> dict[str, str]:
    """Config key -> its flag (for error messages that name what the user typed)."""
    return {f.key: f.flag for f in CONFIG_FLAGS}


def _parse(flag: Flag, value: Any) -> Any:
    if value is None or flag.kind in ("str", "int", "float", "bool"):
        return value
    parts = [x.strip() for x in str(value).split(",") if x.strip()]
    if flag.kind == "strs":
        return parts
    if flag.kind == "layers" and str(value).strip() == "all":
        return "all"
    try:
        return [int(x) for x in parts]
    except ValueError:
        extra = " or 'all'" if flag.kind == "layers" else ""
        raise LogitleakError(f"{flag.flag} {value!r} is not a comma-separated list of integers{extra}, "
                             "e.g. 1,2,5.") from None


def _option(flag: Flag, help_text: str | None) -> tuple[Any, inspect.Parameter]:
    annotation: Any = Optional[_TYPES.get(flag.kind, str)]
    default = typer.Option(None, flag.flag, help=help_text or flag.help, show_default=False)
    return annotation, inspect.Parameter(flag.param, inspect.Parameter.KEYWORD_ONLY, default=default,
                                         annotation=annotation)


def config_command(exclude: Iterable[str] = (), helps: Mapping[str, str] | None = None) -> Callable:
    """Decorate ``func(overrides: dict, **own_options)``: the command gets its own options plus one
    flag per config key (minus ``exclude``), and ``func`` receives the parsed overrides."""
    skip = set(exclude)
    helps = dict(helps or {})
    unknown = (skip | set(helps)) - set(flags_by_key())
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}")
    flags = [f for f in CONFIG_FLAGS if f.key not in skip]

    def decorate(func: Callable) -> Callable:
        hints = typing.get_type_hints(func, include_extras=True)
        own = list(inspect.signature(func).parameters.values())[1:]
        params = [p.replace(annotation=hints.get(p.name, p.annotation), kind=inspect.Parameter.KEYWORD_ONLY)
                  for p in own]
        taken = {p.name for p in params}
        annotations = {p.name: p.annotation for p in params}
        for flag in flags:
            if flag.param in taken:
                raise ValueError(f"{func.__name__} already has a parameter {flag.param}")
            annotations[flag.param], param = _option(flag, helps.get(flag.key))
            params.append(param)

        @functools.wraps(func)
        def wrapper(**kwargs):
            overrides = {f.key: _parse(f, kwargs.pop(f.param, None)) for f in flags}
            return func(overrides, **kwargs)

        del wrapper.__wrapped__  # typer must read the generated signature, not func's
        wrapper.__signature__ = inspect.Signature(params)
        wrapper.__annotations__ = annotations
        return wrapper

    return decorate


FAIL_ON_HELP = ("CI gate: exit with code 3 when the condition holds -- 'leak': a task-irrelevant attribute is readable "
                "at an API level; 'readable': any attribute is (the task's included); 'none' (default): never. "
                "verdict.json beside the results holds the decisions.")


def fail_on_option(help_text: str = FAIL_ON_HELP) -> Any:
    """The ``--fail-on leak|readable|none`` option of audit, demo, defend and probe."""
    return typer.Option("none", "--fail-on", help=help_text, show_default=False)


def check_fail_on(value: str) -> str:
    """``--fail-on``'s value, lower-cased, or an error naming the choices (before any work)."""
    from logitleak.report.gate import FAIL_ON

    v = str(value).strip().lower()
    if v not in FAIL_ON:
        raise LogitleakError(f"--fail-on {value!r} is not a gate condition; pass one of {', '.join(FAIL_ON)}.")
    return v


def exit_on_gate(console, fail_on: str, names: list[str]) -> None:
    """After everything is written and printed: when the gate's condition holds for some attribute
    (``names``), say so and exit with code 3."""
    if not names:
        return
    from logitleak.report.gate import GATE_EXIT_CODE, gate_message

    console.print(gate_message(fail_on, names), style="bold red", highlight=False, soft_wrap=True)
    raise typer.Exit(GATE_EXIT_CODE)
