"""The audit configuration: one validated object for the CLI, config files and the Python API.

Config files are read within bounds (size, nesting, integer digits, no key given twice) that label
files share.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from logitleak.errors import LogitleakError
from logitleak.levels.table import API_LEVELS, DEFAULT_PCA_DIMS, LEVELS, unknown_level
from logitleak.userpaths import existing_file

DEFAULT_KS: tuple[int, ...] = (1, 2, 5, 10, 20)
ATTACK_SIZES: tuple[int, ...] = (25, 50, 100, 200, 500, 1000)
"""The attacker training-set sizes of the default attack-cost curves (sizes above a training fold are left out)."""
MAX_SAMPLES = 10_000_000
MAX_GENERATE = 512
"""The most tokens ``--generate`` reads (the generate pass refuses more)."""
DTYPES = ("auto", "float32", "fp32", "float16", "fp16", "half", "bfloat16", "bf16")
_RAY = re.compile(r"^(auto|local|(ray://)?[\w.\-]+:\d+)$")
_DEVICE = re.compile(r"^(auto|(cpu|cuda|mps|xpu|meta|hpu|npu)(:\d+)?)$")


# ----------------------------------------------------------------------------- bounds on structured files
# A config file or a JSON record is parsed by libraries that recurse on nesting (a RecursionError),
# convert integers of any length (a ValueError past 4,300 digits, then slow arithmetic), and let the
# last of two equal keys win silently. These refuse such input in one sentence naming the file, where
# in it, and the limit (label files read them too: logitleak.data.labelfile).

MAX_CONFIG_BYTES = 1 << 20
"""A config file is a few dozen keys; anything over 1 MiB is not one."""
MAX_DEPTH = 16
"""Nesting of mappings and lists (a config file needs 3)."""
MAX_INT = 2**63
"""Integers must lie in (-2**63, 2**63): every count, seed and size fits in 64 bits."""
MAX_INT_DIGITS = 19


def check_size(path: Path, limit: int, what: str) -> None:
    """Refuse a file larger than ``limit`` bytes before reading it."""
    size = path.stat().st_size
    if size > limit:
        raise LogitleakError(f"{what} {path} is {size:,} bytes, more than the {limit:,} a {what.lower()} may hold; "
                             "pass the intended file.")


def check_tree(value, source: str) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH` and integers outside 64 bits in a parsed value,
    naming the key path (``probes.folds``) where it is."""
    stack: list[tuple[object, int, str]] = [(value, 0, "")]
    while stack:
        v, depth, where = stack.pop()
        if depth > MAX_DEPTH:
            raise LogitleakError(f"{source} nests values deeper than {MAX_DEPTH} levels (at {where or 'the top'}); "
                                 "write a flat mapping of keys to values.")
        if isinstance(v, bool):
            continue
        if isinstance(v, int) and not -MAX_INT < v < MAX_INT:
            raise LogitleakError(f"{source} holds an integer of {len(str(abs(v)))} digits at {where or 'the top'}; "
                                 f"integers may have at most {MAX_INT_DIGITS} digits (below 2**63).")
        if isinstance(v, dict):
            stack.extend((x, depth + 1, f"{where}.{k}" if where else str(k)) for k, x in v.items())
        elif isinstance(v, (list, tuple)):
            stack.extend((x, depth + 1, f"{where}[{i}]") for i, x in enumerate(v))


def unique_keys(pairs: Iterable[tuple[str, object]], source: str) -> dict:
    """A JSON object's ``(key, value)`` pairs as a dict, refusing a key given twice
    (``json.loads(..., object_pairs_hook=...)``)."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise LogitleakError(f"{source} gives the key {key!r} twice in one object; keep one of them.")
        out[key] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that repeats a key (PyYAML keeps the last one)."""

    source = "The YAML file"

    def construct_mapping(self, node, deep=False):  # noqa: D102 - PyYAML's hook
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise LogitleakError(f"{self.source} uses a {type(key).__name__} as a key on line {line}; keys are "
                                     "plain names.")
            if key in seen:
                raise LogitleakError(f"{self.source} gives the key {key!r} twice (lines {seen[key]} and {line}); "
                                     "keep one of them.")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _scan_yaml(text: str, source: str) -> None:
    """Walk the YAML's events (PyYAML parses them without recursion) before anything recursive
    builds them: refuse deep nesting, aliases, and integer literals too long to be a count."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        line = event.start_mark.line + 1
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise LogitleakError(f"{source} nests values deeper than {MAX_DEPTH} levels (line {line}); write a "
                                     "flat mapping of keys to values.")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent):
            raise LogitleakError(f"{source} uses an alias (*{event.anchor}) on line {line}; config files take no "
                                 "anchors or aliases, so write the value out.")
        elif isinstance(event, yaml.ScalarEvent) and event.style is None:
            digits = sum(c.isdigit() for c in event.value)
            if digits > MAX_INT_DIGITS and event.value.lstrip("+-").replace("_", "").isdigit():
                raise LogitleakError(f"{source} holds an integer of {digits} digits on line {line}; integers may have "
                                     f"at most {MAX_INT_DIGITS} digits (below 2**63).")


def load_yaml(text: str, source: str):
    """Parse YAML text safely and within the bounds above (``source`` names the file in errors)."""
    _scan_yaml(text, source)
    loader = type("_Loader", (_UniqueKeyLoader,), {"source": source})
    return yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass


def load_toml(text: str, source: str) -> dict:
    """Parse TOML text within the bounds above; duplicate keys are already an error in TOML."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        if str(err).startswith("Cannot overwrite a value"):
            where = str(err).partition("(")[2].rstrip(")") or "in the file"
            raise LogitleakError(f"{source} gives a key twice ({where}); keep one of them.") from None
        raise
    except RecursionError:
        raise LogitleakError(f"{source} nests values deeper than Python can parse; write a flat mapping of keys to "
                             "values.") from None
    except ValueError as err:  # Python's own bound on integer literals (4,300 digits)
        raise LogitleakError(f"{source} holds an integer literal too long to read ({str(err).split(':')[0]}); "
                             f"integers may have at most {MAX_INT_DIGITS} digits.") from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ProbeSettings(_Strict):
    """Probe families and the statistics around them."""

    families: list[Literal["linear", "mlp"]] = ["linear", "mlp"]
    folds: int = Field(5, ge=2)
    permutations: int = Field(0, ge=0)
    """Label permutations with a refit each (the exact, costly check); 0: the held-out gain test."""
    bootstrap: int = Field(1000, ge=0)
    C: float | None = Field(None, gt=0)
    """Fixed inverse L2 strength for the linear probe; ``None`` chooses it by inner validation."""
    mlp_levels: list[str] | None = list(API_LEVELS)
    """Run the MLP only on these levels (default: the API levels, where leak claims are made and
    the linear probe reads least; ``None``: every level). It is the expensive family."""
    workers: int | None = Field(None, ge=0, le=256)
    """Processes that probe independent stages side by side (0: this process only); ``None``: one
    per CPU core, up to 4, when probing on the CPU. Results do not depend on the count."""
    attack_sizes: list[int] = list(ATTACK_SIZES)
    """Attacker training-set sizes of the attack-cost curves at the API levels (the linear probe refitted on
    nested subsets of the training folds; :mod:`logitleak.probing.attack_cost`); ``[0]`` or ``[]``: none."""

    @field_validator("attack_sizes")
    @classmethod
    def _attack_sizes(cls, v: list[int]) -> list[int]:
        if v == [0]:
            return []
        if any(x < 1 for x in v):
            raise ValueError("attacker sample counts are positive integers, e.g. 25,50,100,200,500,1000 (0: no "
                             "attack-cost curves)")
        return sorted(set(v))

    @field_validator("mlp_levels")
    @classmethod
    def _known_mlp_levels(cls, v: list[str] | None) -> list[str] | None:
        if problem := unknown_level(v or []):
            raise ValueError(problem)
        return v


class LensSettings(_Strict):
    """Tuned-lens training (the logit lens needs none)."""

    steps: int = Field(300, ge=1)
    lr: float = Field(1e-3, gt=0)


class AuditConfig(_Strict):
    """Everything an audit needs; every field has a CLI flag of the same name."""

    model: str = "organism"
    data: str = "shapes"
    labels: str | None = None
    path_column: str = "path"
    group_column: str | None = None
    allow_outside_data: bool = False
    """Label-file paths may point outside the data folder (``../``, absolute paths) only when set."""
    question: str | None = None
    task: str = "color"
    attributes: list[str] | None = None
    levels: list[str] = list(LEVELS)
    layers: list[int] | Literal["all"] = "all"
    k: list[int] = list(DEFAULT_KS)
    pca_dims: list[int] = list(DEFAULT_PCA_DIMS)
    """Dimensions d of the ``pca`` level (top-d principal components, fitted per training fold)."""
    vision_pool: Literal["mean", "cls"] = "mean"
    """How the vision levels pool a sample's image tokens: their mean, or the first (CLS) token."""
    samples: int = Field(2000, ge=10, le=MAX_SAMPLES)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    out: str = "logitleak-audit"
    force: bool = False
    batch_size: int = Field(32, ge=1, le=65536)
    shard_size: int = Field(1024, ge=1, le=1_000_000)
    device: str | None = None
    """torch device; ``auto``: accelerate places the model across the visible GPUs and CPU memory."""
    dtype: str | None = None
    store_dtype: Literal["float16", "bfloat16", "float32"] | None = None
    """The activation store's dtype for hidden states; ``None``: float16 on a GPU, float32 on the CPU."""
    ray: str | None = None
    """A Ray cluster (``auto``, ``local``, ``host:port`` or ``ray://host:port``) for data-parallel capture and
    the probe stages; ``None``: this machine's own worker processes."""
    allow_pickle: bool = False
    """Load pickle checkpoints (``pytorch_model.bin``, weights-only) too; by default only safetensors."""
    probes: ProbeSettings = ProbeSettings()
    lens: LensSettings = LensSettings()
    endpoint: str | None = None
    served_model: str | None = None
    api_key_env: str | None = None
    concurrency: int = Field(8, ge=1)
    max_requests: int | None = Field(None, ge=1)
    generate: int | None = None
    """Generated tokens to read (greedy, as an API at temperature 0): residual and top-k at every
    generated position plus the whole-response levels; ``None`` reads only the first token."""

    @field_validator("generate")
    @classmethod
    def _generate_positive(cls, v: int | None) -> int | None:
        if v is not None:
            if isinstance(v, bool) or v < 1 or v > MAX_GENERATE:
                raise ValueError(f"generate={v} is not a number of generated tokens; pass a whole number from 1 to "
                                 f"{MAX_GENERATE} (e.g. --generate 8), or leave it out to read only the first token")
        return v

    @field_validator("levels")
    @classmethod
    def _known_levels(cls, v: list[str]) -> list[str]:
        if problem := unknown_level(v):
            raise ValueError(problem)
        if not v:
            raise ValueError("give at least one level")
        return v

    @field_validator("k", "pca_dims")
    @classmethod
    def _positive_sizes(cls, v: list[int], info: ValidationInfo) -> list[int]:
        if not v or any(x < 1 for x in v):
            what, e_g = {"k": ("k values", "1,2,5,10,20"), "pca_dims": ("PCA dimensions", "1,4,16,64")}[info.field_name]
            raise ValueError(f"{what} must be positive integers, e.g. {e_g}")
        return sorted(set(v))

    @field_validator("dtype")
    @classmethod
    def _dtype_name(cls, v: str | None) -> str | None:
        if v is not None and v not in DTYPES:
            raise ValueError(f"{v!r} is not a model dtype; use one of {', '.join(DTYPES)}")
        return v

    @field_validator("endpoint")
    @classmethod
    def _endpoint_url(cls, v: str | None) -> str | None:
        from urllib.parse import urlparse

        if v is None:
            return v
        u = urlparse(v.strip())
        if u.scheme not in ("http", "https") or not u.netloc:
            raise ValueError(f"{v!r} is not an http(s) URL; pass the API base, e.g. http://127.0.0.1:8000/v1")
        return v.strip()

    @field_validator("device", "ray")
    @classmethod
    def _named_place(cls, v: str | None, info: ValidationInfo) -> str | None:
        """A device name (auto, cpu, cuda, cuda:N, ...) or a Ray address, stripped."""
        pattern, what = {"device": (_DEVICE, "a torch device; use auto, cpu, cuda, cuda:N or mps"),
                         "ray": (_RAY, "a Ray address; use auto, local, HOST:PORT or ray://HOST:PORT")}[info.field_name]
        if v is not None and not pattern.match(v.strip()):
            raise ValueError(f"{v!r} is not {what}")
        return None if v is None else v.strip()

    @field_validator("layers")
    @classmethod
    def _nonneg_layers(cls, v):
        if isinstance(v, list) and any(x < 0 for x in v):
            raise ValueError("layers are hidden-state indices >= 0 (0 = embeddings)")
        return v


def _explain(err: ValidationError, source: str, flags: dict[str, str] | None = None) -> LogitleakError:
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"] if not isinstance(p, int)) or "(top level)"
    if e["type"] == "extra_forbidden":
        allowed = ", ".join(AuditConfig.model_fields)
        return LogitleakError(f"{source}: unknown key {key!r}; allowed keys are: {allowed}.")
    msg = e["msg"].removeprefix("Value error, ")
    if flags and key in flags:
        return LogitleakError(f"{flags[key]} {e.get('input')!r} (key {key!r}) is not valid: {msg}.")
    return LogitleakError(f"{source}: invalid value for {key!r}: {msg}.")


def make_config(values: dict[str, Any], source: str = "configuration",
                flags: dict[str, str] | None = None) -> AuditConfig:
    """Validate a plain dict into an :class:`AuditConfig`, errors naming the bad key (or the flag
    that set it: ``flags`` maps such keys to their flag)."""
    try:
        return AuditConfig(**values)
    except ValidationError as err:
        raise _explain(err, source, flags) from None


def load_config(path: str | Path, validate: bool = True) -> dict[str, Any]:
    """Read a YAML or TOML config file into a dict (validated later, after CLI overrides), within the
    bounds above (size, nesting, integer digits, no key given twice)."""
    p = existing_file(path, "Config file", ".yaml or .toml file")
    suffix = p.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise LogitleakError(f"Config file {p} must end in .yaml, .yml or .toml.")
    check_size(p, MAX_CONFIG_BYTES, "Config file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise LogitleakError(f"Config file {p} is not UTF-8 text (byte {err.start}); save it as UTF-8.") from None
    except OSError as err:
        raise LogitleakError(f"Config file {p} cannot be read ({err.strerror}); check its permissions.") from None
    source = f"Config file {p}"
    try:
        data = load_toml(text, source) if suffix == ".toml" else (load_yaml(text, source) or {})
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as err:
        raise LogitleakError(f"Config file {p} is not valid {suffix[1:].upper()}: {str(err).splitlines()[0]}.") from None
    if not isinstance(data, dict):
        raise LogitleakError(f"Config file {p} must hold a mapping of keys to values at the top level.")
    check_tree(data, source)
    if validate:
        make_config(data, source=source)  # fail early, naming the file
    return data


def resolve_config(config_file: str | Path | None = None, overrides: dict[str, Any] | None = None,
                   flags: dict[str, str] | None = None) -> AuditConfig:
    """Config file values, then CLI overrides (``None`` means 'not given'), validated once; an
    invalid override is blamed on its flag (``flags``: key -> flag) rather than the file."""
    values: dict[str, Any] = load_config(config_file, validate=False) if config_file else {}
    for key, val in (overrides or {}).items():
        if val is None:
            continue
        if "." in key:
            head, tail = key.split(".", 1)
            values.setdefault(head, {})[tail] = val
        else:
            values[key] = val
    given = {k: (flags or {}).get(k, f"--{k.split('.')[-1].replace('_', '-')}")
             for k, v in (overrides or {}).items() if v is not None}
    return make_config(values, source=f"Config file {config_file}" if config_file else "Audit options", flags=given)
