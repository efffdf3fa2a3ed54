"""Declarative per-family component mapping: where each supported architecture keeps its parts.

Where the decoder blocks, the final norm and the unembedding of each supported architecture
live, and the quirks the readout must reproduce.

A family is data, not code: attribute paths relative to the top-level model, looked up by the
config's ``model_type``. Anything not in the table is found by a generic search by common names
(:func:`resolve_components`), and anything the search cannot find can be supplied by the user as
a ``mapping`` (a dict, or a JSON/YAML file with the same keys, or ``logitleak_mapping.json``
saved beside the weights)::

    {"layers": "model.language_model.layers", "final_norm": "model.language_model.norm",
     "unembed": "lm_head"}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from torch import nn

from logitleak.errors import LogitleakError

MAPPING_KEYS: tuple[str, ...] = ("layers", "final_norm", "unembed")
MAPPING_FILE = "logitleak_mapping.json"

# Generic fallbacks, tried in order under the decoder (``model.get_decoder()``) and then the model.
LAYER_NAMES: tuple[str, ...] = ("layers", "h", "blocks", "layer", "decoder_layers")
NORM_NAMES: tuple[str, ...] = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "final_norm", "norm_f")


@dataclass(frozen=True)
class Family:
    """One architecture family.

    - ``layers`` / ``final_norm`` / ``unembed``: attribute paths from the top-level model
      (``None``: found by the generic search / ``get_output_embeddings()``).
    - ``vision``: whether the family takes images (a processor with an image token).
    - ``positions``: how position ids follow the attention mask under left padding:
      ``"mask"`` (``cumsum(mask) - 1 + position_offset`` is passed), or ``"model"`` (the model
      derives them itself, e.g. Qwen2-VL's multimodal RoPE; nothing is passed).
    - ``image_prefix``: how a plain prompt (no chat template) carries the image placeholder.
    - ``logit_softcap`` / ``logit_scale``: text-config attributes the readout applies to the
      logits (``tanh(x / c) * c``; ``x * s``) when the config sets them.
    - ``vision_layers``: path(s) of the vision tower's blocks (several lists joined with ``+`` run
      one after the other, e.g. Mllama's local then global encoder); ``projector``: the module
      that maps vision features into the decoder's space. Both optional: without them there are
      no vision-tower / projector levels.
    - ``cross_attention``: text-config attribute listing the decoder blocks that cross-attend to
      the image (Mllama); every other block is a self-attention block.
    - ``nested_images``: the processor takes images as one list per sample (Mllama).
    - ``quirks``: informational notes (e.g. Gemma's embedding scaling happens before block 0, so
      it is inside ``hidden[0]`` and needs nothing from the readout).
    """

    name: str
    model_types: tuple[str, ...]
    layers: str | None = None
    final_norm: str | None = None
    unembed: str | None = None
    vision: bool = False
    positions: str = "mask"
    position_offset: int = 0
    image_prefix: str = "{image}\n"
    logit_softcap: str | None = "final_logit_softcapping"
    logit_scale: str | None = None
    vision_layers: str | None = None
    projector: str | None = None
    cross_attention: str | None = None
    nested_images: bool = False
    quirks: tuple[str, ...] = field(default_factory=tuple)


_LLAVA_TEXT = dict(layers="model.language_model.layers", final_norm="model.language_model.norm", unembed="lm_head")
_CLIP_TOWER = dict(vision_layers="model.vision_tower.encoder.layers", projector="model.multi_modal_projector")
_QWEN_TOWER = dict(vision_layers="model.visual.blocks", projector="model.visual.merger")

FAMILIES: tuple[Family, ...] = (
    Family("llava", ("llava",), vision=True, **_LLAVA_TEXT, **_CLIP_TOWER),
    Family("llava_next", ("llava_next",), vision=True, **_LLAVA_TEXT, **_CLIP_TOWER),
    Family("qwen2_vl", ("qwen2_vl",), vision=True, positions="model", **_LLAVA_TEXT, **_QWEN_TOWER,
           quirks=("multimodal RoPE: position ids derived by the model from the attention mask",)),
    Family("qwen2_5_vl", ("qwen2_5_vl",), vision=True, positions="model", **_LLAVA_TEXT, **_QWEN_TOWER,
           quirks=("multimodal RoPE: position ids derived by the model from the attention mask",)),
    Family("paligemma", ("paligemma",), vision=True, position_offset=1, image_prefix="{image}", **_LLAVA_TEXT,
           **_CLIP_TOWER, quirks=("1-indexed positions", "Gemma embedding scaling (inside hidden[0])",
                                  "prefix-LM attention over image + prompt (token_type_ids)")),
    Family("idefics3", ("idefics3", "smolvlm"), vision=True, layers="model.text_model.layers",
           final_norm="model.text_model.norm", unembed="lm_head", vision_layers="model.vision_model.encoder.layers",
           projector="model.connector"),
    Family("mllama", ("mllama",), vision=True, image_prefix="{image}", **_LLAVA_TEXT,
           vision_layers="model.vision_model.transformer.layers+model.vision_model.global_transformer.layers",
           projector="model.multi_modal_projector", cross_attention="cross_attention_layers", nested_images=True,
           quirks=("image features enter through cross-attention blocks (text_config.cross_attention_layers)",
                   "one <|image|> token in the text; the vision tower runs on tiles")),
    Family("gpt2", ("gpt2",), layers="transformer.h", final_norm="transformer.ln_f", unembed="lm_head",
           quirks=("absolute position embeddings: left padding needs position ids",)),
    Family("llama", ("llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2", "phi3", "smollm3"),
           layers="model.layers", final_norm="model.norm", unembed="lm_head"),
    Family("gemma", ("gemma", "gemma2"), layers="model.layers", final_norm="model.norm", unembed="lm_head",
           quirks=("embeddings scaled by sqrt(d_model) before block 0 (inside hidden[0])",
                   "RMSNorm with (1 + weight)", "gemma2: final_logit_softcapping (tanh) on the logits")),
)


def family_for(model_type: str | None) -> Family | None:
    """The table entry for a config ``model_type``, or ``None`` (generic search then applies)."""
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    return None


def read_mapping(mapping: Mapping | str | Path | None, model_dir: Path | None = None) -> dict[str, str]:
    """A user mapping as a dict: given directly, as a JSON/YAML file, or ``logitleak_mapping.json``
    beside the weights. Unknown keys are an error (a typo would otherwise be silently ignored)."""
    if mapping is None and model_dir is not None and (model_dir / MAPPING_FILE).is_file():
        mapping = model_dir / MAPPING_FILE
    if mapping is None:
        return {}
    if isinstance(mapping, (str, Path)):
        path = Path(mapping)
        if not path.is_file():
            raise LogitleakError(f"Mapping file {str(path)!r} does not exist; pass a dict or an existing JSON/YAML file.")
        text = path.read_text()
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                mapping = yaml.safe_load(text)
            else:
                mapping = json.loads(text)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
            raise LogitleakError(f"Mapping file {str(path)!r} is not valid JSON/YAML ({exc}); fix its syntax.") from None
    if not isinstance(mapping, Mapping):
        raise LogitleakError("The component mapping must be a dict such as {'layers': 'model.layers'}; got "
                             f"{type(mapping).__name__}.")
    unknown = set(mapping) - set(MAPPING_KEYS) - {"positions", "position_offset"}
    if unknown:
        raise LogitleakError(f"Unknown key(s) {sorted(unknown)} in the component mapping; use only: "
                             f"{', '.join(MAPPING_KEYS + ('positions', 'position_offset'))}.")
    return dict(mapping)


def get_path(root: nn.Module, path: str):
    """``root.a.b.0.c`` by a dotted path (integers index module lists); ``None`` when absent."""
    obj = root
    for part in path.split("."):
        if part == "":
            continue
        if isinstance(obj, (nn.ModuleList, nn.Sequential)) and part.isdigit():
            idx = int(part)
            if idx >= len(obj):
                return None
            obj = obj[idx]
        else:
            obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def module_path(root: nn.Module, target: nn.Module) -> str | None:
    """Dotted path of ``target`` inside ``root`` (first match), for messages and manifests."""
    for name, mod in root.named_modules():
        if mod is target:
            return name
    return None


@dataclass
class Components:
    """The resolved components, with the dotted path each came from (``vision_layers`` /
    ``projector``: ``None`` / empty for a text-only model or a family that does not declare them)."""

    layers: nn.ModuleList
    final_norm: nn.Module
    unembed: nn.Module
    paths: dict[str, str]
    family: Family
    vision_layers: list[nn.Module] = field(default_factory=list)
    projector: nn.Module | None = None


def resolve_vision(model: nn.Module, fam: Family) -> tuple[list[nn.Module], nn.Module | None, dict[str, str]]:
    """The vision tower's blocks (in execution order) and the projector declared by ``fam``;
    empty / ``None`` when the family declares none or a path is absent (never an error: vision
    levels are then simply not available)."""
    blocks: list[nn.Module] = []
    paths: dict[str, str] = {}
    if fam.vision_layers:
        for part in fam.vision_layers.split("+"):
            mod = get_path(model, part)
            if not isinstance(mod, (nn.ModuleList, nn.Sequential)) or len(mod) == 0:
                blocks = []
                break
            blocks.extend(mod)
        if blocks:
            paths["vision_layers"] = fam.vision_layers
    proj = get_path(model, fam.projector) if fam.projector else None
    if isinstance(proj, nn.Module):
        paths["projector"] = fam.projector
    else:
        proj = None
    return blocks, proj, paths


def _fix_hint(component: str, model_type: str | None) -> str:
    example = {"layers": "model.layers", "final_norm": "model.norm", "unembed": "lm_head"}[component]
    return (f"pass mapping={{'{component}': '<dotted.path>'}} to load_model (e.g. '{example}'), or save "
            f"{{\"{component}\": \"<dotted.path>\"}} as {MAPPING_FILE} beside the weights"
            + (f" (model_type {model_type!r})" if model_type else ""))


def _search(model: nn.Module, names: tuple[str, ...], want_list: bool):
    roots = []
    try:
        dec = model.get_decoder() if hasattr(model, "get_decoder") else None
    except Exception:  # noqa: BLE001 - some wrappers raise; fall back to the model itself
        dec = None
    if isinstance(dec, nn.Module):
        roots.append(dec)
    roots.append(model)
    base = getattr(model, "base_model", None)
    if isinstance(base, nn.Module) and base is not model:
        roots.append(base)
    for root in roots:
        for name in names:
            cand = getattr(root, name, None)
            if want_list and isinstance(cand, nn.ModuleList) and len(cand) > 0:
                return cand
            if not want_list and isinstance(cand, nn.Module) and not isinstance(cand, nn.ModuleList):
                return cand
    return None


def resolve_components(model: nn.Module, mapping: Mapping | None = None) -> Components:
    """Find the decoder blocks, final norm and unembedding: user mapping first, then the family
    table (by ``config.model_type``), then a generic search (``get_decoder()`` and common names;
    ``get_output_embeddings()`` for the unembedding). Raises a one-line error naming what is missing."""
    mapping = dict(mapping or {})
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    fam = family_for(model_type) or Family(name=model_type or "generic", model_types=(model_type or "",))
    if "positions" in mapping or "position_offset" in mapping:
        fam = replace(fam, positions=mapping.get("positions", fam.positions),
                      position_offset=int(mapping.get("position_offset", fam.position_offset)))
    found: dict[str, nn.Module] = {}
    for comp in MAPPING_KEYS:
        path = mapping.get(comp) or getattr(fam, comp)
        if path:
            mod = get_path(model, path)
            if mod is not None:
                found[comp] = mod
                continue
            if comp in mapping:  # the user named it: say that exact path is wrong
                raise LogitleakError(f"The mapping path {path!r} for {comp!r} does not exist in "
                                     f"{type(model).__name__}; {_fix_hint(comp, model_type)}.")
        if comp == "layers":
            mod = _search(model, LAYER_NAMES, want_list=True)
        elif comp == "final_norm":
            mod = _search(model, NORM_NAMES, want_list=False)
        else:
            mod = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if mod is None:
            what = {"layers": "decoder layers", "final_norm": "final norm", "unembed": "unembedding (output embeddings)"}[comp]
            raise LogitleakError(f"Could not find the {what} of {type(model).__name__}; {_fix_hint(comp, model_type)}.")
        found[comp] = mod
    layers = found["layers"]
    if not isinstance(layers, (nn.ModuleList, nn.Sequential)) or len(layers) == 0:
        raise LogitleakError(f"The decoder layers of {type(model).__name__} are not a non-empty module list; "
                             f"{_fix_hint('layers', model_type)}.")
    if not hasattr(found["unembed"], "weight"):
        raise LogitleakError(f"The unembedding of {type(model).__name__} has no weight matrix; "
                             f"{_fix_hint('unembed', model_type)}.")
    paths = {comp: module_path(model, mod) or "?" for comp, mod in found.items()}
    vision_blocks, projector, _ = resolve_vision(model, fam)
    return Components(layers=layers, final_norm=found["final_norm"], unembed=found["unembed"], paths=paths, family=fam,
                      vision_layers=vision_blocks, projector=projector)
