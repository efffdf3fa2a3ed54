"""Any Hugging Face VLM or causal LM opened from a local directory as a ModelAdapter.

A local directory or the local HF cache, never a download; the result is a
:class:`~logitleak.models.adapter.ModelAdapter`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from logitleak.errors import LogitleakError, first_line
from logitleak.models.adapter import ModelAdapter
from logitleak.models.families import read_mapping
from logitleak.models.gguf import read_source
from logitleak.models.quiet import quiet_transformers
from logitleak.models.safety import check_model_source

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def _resolve_dtype(dtype: str | torch.dtype | None, device: str):
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        return torch.float32 if device == "cpu" else "auto"
    if dtype == "auto":
        return "auto"
    if dtype not in _DTYPES:
        raise LogitleakError(f"Unknown dtype {dtype!r}; use one of: auto, {', '.join(sorted(_DTYPES))}.")
    return _DTYPES[dtype]


def _model_class(config):
    """The Auto class that opens this config: image-text-to-text first, then causal LM."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    mt = getattr(config, "model_type", None)
    if mt in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return AutoModelForImageTextToText
    if mt in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return AutoModelForCausalLM
    return None


def load_model(path_or_name: str | Path, *, device: str | None = None, dtype: str | torch.dtype | None = None,
               mapping: Mapping | str | Path | None = None, padding_side: str | None = None,
               allow_pickle: bool = False, max_memory: Mapping[int | str, int | str] | None = None) -> ModelAdapter:
    """Load a VLM (with its processor) or a causal LM (with its tokenizer) from a local directory
    or a name already in the local Hugging Face cache, and resolve its components.

    ``device``: ``"cpu"``, ``"cuda"``, ... (default: CUDA when available), or ``"auto"``: the blocks
    placed across the visible GPUs and CPU memory (:func:`~logitleak.models.devices.placement`,
    within ``max_memory``, default most of each GPU's free memory). ``dtype``: ``"float32"``,
    ``"bfloat16"``, ``"float16"``, ``"auto"`` (the checkpoint's) or a ``torch.dtype`` (default:
    float32 on CPU, the checkpoint's elsewhere). ``mapping``: component paths for architectures the
    family table and generic search cannot map (dict or JSON/YAML file; see
    :mod:`logitleak.models.families`). ``padding_side``: override the tokenizer's.
    ``allow_pickle``: also load a pickle checkpoint (weights-only); by default only safetensors
    (see :mod:`logitleak.models.safety`). Code in the model folder is never run.
    """
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer

    from logitleak.models.devices import check_device

    src, local, use_safetensors = check_model_source(path_or_name, allow_pickle=allow_pickle)
    device = check_device(device)
    torch_dtype = _resolve_dtype(dtype, device)
    user_mapping = read_mapping(mapping, local if local.is_dir() else None)

    with quiet_transformers():
        try:
            config = AutoConfig.from_pretrained(src, local_files_only=True, trust_remote_code=False)
        except OSError:
            raise LogitleakError(f"Model {src!r} is neither a local directory nor in the local Hugging Face cache; "
                                 "nothing is downloaded — save it locally and pass its directory.") from None
        except (ValueError, KeyError) as exc:
            raise LogitleakError(f"Model {src!r} has a config transformers cannot read ({str(exc).splitlines()[0]}); "
                                 "upgrade transformers or fix config.json.") from None
        cls = _model_class(config)
        if cls is None:
            raise LogitleakError(f"Model {src!r} (model_type {config.model_type!r}) is not a causal LM or an "
                                 "image-text-to-text model; logitleak audits models that predict next tokens.")
        try:
            load_kw = {"local_files_only": True, "dtype": torch_dtype, "trust_remote_code": False,
                       "use_safetensors": use_safetensors}
            if device == "auto":
                load_kw["device_map"] = _auto_map(cls, config, torch_dtype, max_memory)
            elif device != "cpu":
                load_kw["device_map"] = device
            model = cls.from_pretrained(src, **load_kw)
        except OSError as exc:
            raise LogitleakError(f"Could not load the weights of {src!r} ({str(exc).splitlines()[0]}); "
                                 "check the directory holds model.safetensors.") from None
        except Exception as exc:  # noqa: BLE001 - classified below; anything else is a bug and re-raised
            raise _weights_error(src, exc, use_safetensors) from None
        if device == "cpu":
            model = model.to("cpu")
        model.eval()

        processor = tokenizer = None
        if cls.__name__ == "AutoModelForImageTextToText":
            try:
                processor = AutoProcessor.from_pretrained(src, local_files_only=True, trust_remote_code=False)
            except Exception as exc:  # noqa: BLE001 - any failure means no usable processor was saved
                processor = _assemble_processor(src, config)
                if processor is None:
                    first = first_line(exc, None)
                    raise LogitleakError(f"Vision-language model {src!r} has no loadable processor ({first}); "
                                         "save it beside the weights with processor.save_pretrained(model_dir).") from None
            tokenizer = getattr(processor, "tokenizer", None)
        else:
            try:
                tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True, trust_remote_code=False)
            except Exception as exc:  # noqa: BLE001
                raise LogitleakError(f"Language model {src!r} has no loadable tokenizer ({str(exc).splitlines()[0]}); "
                                     "save it beside the weights with tokenizer.save_pretrained(model_dir).") from None
    if tokenizer is not None and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    gguf_source = read_source(local) if local.is_dir() else None
    adapter = ModelAdapter(model, tokenizer=tokenizer, processor=processor, mapping=user_mapping,
                           name=gguf_source["file"] if gguf_source else src, padding_side=padding_side)
    adapter.gguf_source = gguf_source
    return adapter


def _auto_map(cls, config, torch_dtype, max_memory) -> dict:
    """The ``auto`` device map, planned on an empty (meta-device) copy of the model: no weights read."""
    from accelerate import init_empty_weights

    from logitleak.models.devices import placement

    sizing = torch_dtype if isinstance(torch_dtype, torch.dtype) else getattr(config, "dtype", None) or torch.float32
    if isinstance(sizing, str):
        sizing = getattr(torch, sizing, torch.float32)
    with init_empty_weights():
        empty = cls.from_config(config)
    return placement(empty, max_memory, dtype=sizing)


def _weights_error(src: str, exc: BaseException, use_safetensors: bool | None) -> BaseException:
    """A load failure the user's files caused -> one sentence; any other exception is returned unchanged."""
    import pickle

    from logitleak.models.safety import pickle_error_message

    name = type(exc).__name__
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc) or "Weights only load" in str(exc):
        return LogitleakError(pickle_error_message(Path(src), exc))
    if name == "SafetensorError" or "safetensors" in type(exc).__module__:
        return LogitleakError(f"The safetensors weights of {src!r} are damaged ({str(exc).splitlines()[0]}); "
                              "re-save the model with save_pretrained.")
    if isinstance(exc, (RuntimeError, ValueError)) and ("size mismatch" in str(exc) or "shape" in str(exc)):
        return LogitleakError(f"The weights of {src!r} do not fit its config.json ({str(exc).splitlines()[0][:200]}); "
                              "re-save the model and its config together.")
    return exc


def _assemble_processor(src: str, config):
    """Build the processor from its image processor, tokenizer and chat template when
    ``AutoProcessor`` cannot: e.g. Qwen2-VL's processor also loads a video processor that needs
    torchvision, which image-only audits never use. ``None`` when that fails too."""
    import json

    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES
    from transformers.processing_utils import ProcessorMixin

    path = Path(src)
    name = None
    for fname in ("processor_config.json", "preprocessor_config.json"):
        if (path / fname).is_file():
            try:
                name = json.loads((path / fname).read_text()).get("processor_class") or name
            except (OSError, ValueError):
                pass
        if name:
            break
    name = name or PROCESSOR_MAPPING_NAMES.get(getattr(config, "model_type", None))
    proc_cls = getattr(transformers, name, None) if name else None
    if proc_cls is None:
        return None
    try:
        image_processor = AutoImageProcessor.from_pretrained(src, local_files_only=True, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True, trust_remote_code=False)
        template = None
        if (path / "chat_template.jinja").is_file():
            template = (path / "chat_template.jinja").read_text()
        elif (path / "chat_template.json").is_file():
            template = json.loads((path / "chat_template.json").read_text()).get("chat_template")
        template = template or getattr(tokenizer, "chat_template", None)
        extra = {}
        if (path / "processor_config.json").is_file():
            extra = {k: v for k, v in json.loads((path / "processor_config.json").read_text()).items()
                     if k not in ("processor_class", "chat_template") and not isinstance(v, dict)}
        # The optional sub-processors (video, audio) are left out; skip the class check that demands them.
        check = ProcessorMixin.check_argument_for_proper_class
        ProcessorMixin.check_argument_for_proper_class = lambda self, attribute_name, arg: None
        try:
            kwargs = {"image_processor": image_processor, "tokenizer": tokenizer, "chat_template": template, **extra}
            return proc_cls(**kwargs)
        finally:
            ProcessorMixin.check_argument_for_proper_class = check
    except Exception:  # noqa: BLE001 - the caller reports the original failure
        return None
