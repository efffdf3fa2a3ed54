"""What a model folder may make logitleak do: read safe formats only and never run the folder's code.

Checked before transformers touches the folder, so a refused model never executes anything:

* ``config.json`` must be JSON naming an architecture transformers ships; a folder that needs its own
  Python (``auto_map`` for an unknown ``model_type``) is refused. Every loader is called with
  ``trust_remote_code=False``, so transformers never asks on the terminal either.
* Weights must be safetensors (every file's header is read and its size checked); a pickle
  checkpoint (``pytorch_model.bin``) loads only with ``allow_pickle`` and then only through torch's
  weights-only unpickler.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from logitleak.errors import LogitleakError, first_line

PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
SAFETENSORS_PATTERN = "*.safetensors"


def read_model_config(folder: Path) -> dict:
    """``config.json`` of a local model folder as a dict, or one sentence on what is wrong with it."""
    path = folder / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise LogitleakError(f"{path} is not UTF-8 text; re-save the model with save_pretrained.") from None
    except ValueError as err:
        raise LogitleakError(f"{path} is not valid JSON ({err}); re-save the model with save_pretrained.") from None
    if not isinstance(data, dict):
        raise LogitleakError(f"{path} must hold a JSON object; re-save the model with save_pretrained.")
    return data


def check_no_custom_code(folder: Path, config: dict) -> None:
    """Refuse a folder whose architecture exists only as Python code inside it."""
    py_files = sorted(p.name for p in folder.glob("*.py"))
    if not (config.get("auto_map") or py_files):
        return  # nothing to run; an unknown model_type is named when transformers reads the config
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = config.get("model_type")
    if model_type in CONFIG_MAPPING_NAMES:
        return  # transformers' own class is used; any auto_map is ignored (trust_remote_code=False)
    what = "auto_map in config.json" if config.get("auto_map") else py_files[0]
    raise LogitleakError(
        f"Model {str(folder)!r} (model_type {model_type!r}) needs its own Python code ({what}) to load, and "
        "logitleak never runs code from a model folder; use a model whose architecture transformers ships.")


def _check_safetensors_file(path: Path) -> None:
    """Header readable and the file as long as the header says (a truncated or garbage file fails)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ValueError("shorter than a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100_000_000):
                raise ValueError("header length beyond the end of the file")
            header = json.loads(fh.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        if 8 + n + max(ends, default=0) > size:
            raise ValueError(f"truncated: {size} bytes, {8 + n + max(ends)} expected")
    except (ValueError, KeyError, TypeError, IndexError, struct.error) as err:
        raise LogitleakError(f"Weights file {path} is damaged or not a safetensors file ({err}); re-save the model "
                             "with save_pretrained.") from None


def check_weights(folder: Path, allow_pickle: bool = False) -> bool:
    """Validate the weight files; return whether safetensors are used (``False``: weights-only pickle)."""
    safetensors = sorted(folder.glob(SAFETENSORS_PATTERN))
    pickles = sorted({p for pattern in PICKLE_PATTERNS for p in folder.glob(pattern)})
    if safetensors:
        for path in safetensors:
            _check_safetensors_file(path)
        return True
    if pickles:
        if not allow_pickle:
            raise LogitleakError(
                f"Model {str(folder)!r} has only a pickle checkpoint ({pickles[0].name}), a format that can run code "
                "when loaded; convert it to safetensors (model.save_pretrained(dir)) or pass --allow-pickle to load "
                "it with torch's weights-only loader.")
        return False
    others = sorted(p.name for p in folder.iterdir() if p.suffix in (".h5", ".msgpack", ".gguf", ".onnx"))
    hint = f" (found {others[0]}, a format logitleak does not load)" if others else ""
    raise LogitleakError(f"Model directory {str(folder)!r} has no weights{hint}; it needs model.safetensors "
                         "(save the model there with save_pretrained).")


def pickle_error_message(folder: Path, err: BaseException) -> str:
    """One sentence for a pickle checkpoint torch's weights-only loader refused."""
    first = first_line(err)
    return (f"The pickle checkpoint in {str(folder)!r} was refused by torch's weights-only loader ({first}); it may "
            "hold code. Convert a trusted copy to safetensors instead.")


def check_model_source(path_or_name: str | Path, allow_pickle: bool = False) -> tuple[str, Path, bool | None]:
    """The cheap checks of :func:`load_model`, run before anything is loaded: a local folder has a
    readable config.json, no custom code and safe, intact weights. Returns ``(src, local path,
    use_safetensors)``; raises one clear error otherwise."""
    src = str(path_or_name)
    local = Path(src).expanduser()
    if local.exists() and not local.is_dir():
        raise LogitleakError(f"Model path {src!r} is a file; pass the directory holding config.json and the weights.")
    use_safetensors = None if allow_pickle else True  # a cached hub name: safetensors only
    if local.is_dir():
        src = str(local)
        if not (local / "config.json").is_file():
            raise LogitleakError(f"Model directory {src!r} has no config.json; pass a directory saved with "
                                 "save_pretrained (model + processor or tokenizer).")
        check_no_custom_code(local, read_model_config(local))
        use_safetensors = check_weights(local, allow_pickle=allow_pickle)
    elif not _in_hf_cache(src):
        raise LogitleakError(f"Model {src!r} is neither a local directory nor in the local Hugging Face cache; "
                             "nothing is downloaded — save it locally and pass its directory.")
    return src, local, use_safetensors


def _in_hf_cache(name: str) -> bool:
    """Whether ``name`` (a hub id) has a config.json in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # noqa: BLE001 - not a valid hub id either
        return False
