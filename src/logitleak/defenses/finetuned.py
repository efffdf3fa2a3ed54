"""A bottlenecked model as a deliverable: saved, atomically, as a Hugging Face directory anyone loads.

Layout of one saved bottleneck::

    model/
        config.json, model.safetensors      the fine-tuned model (LoRA adapters merged in), which
        tokenizer / processor files          `logitleak serve`, `logitleak audit` and transformers'
        generation_config.json               `from_pretrained` open as they open any model
        bottleneck.json                      what was hidden, where, with which lambda, from which base
        adapter/                             LoRA runs only: adapter_config.json and
                                             adapter_model.safetensors (``peft``'s own format, for
                                             ``PeftModel.from_pretrained(base, ...)``)

The directory is written into a temporary sibling and renamed into place
(:func:`logitleak.integrity.atomic_directory`), so a killed save never leaves a complete-looking model.
"""

from __future__ import annotations

import json
from pathlib import Path

from logitleak.errors import LogitleakError

INFO_FILE = "bottleneck.json"
ADAPTER_DIR = "adapter"
_NEEDED = ("config.json", "model.safetensors", INFO_FILE)


def is_finished(path: str | Path) -> bool:
    """Whether ``path`` holds a completely saved bottleneck."""
    p = Path(path)
    return p.is_dir() and all((p / f).is_file() for f in _NEEDED)


def read_info(path: str | Path) -> dict:
    """The ``bottleneck.json`` of a saved bottleneck, with one sentence when it is not one."""
    f = Path(path) / INFO_FILE
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):
        raise LogitleakError(f"{path} holds no readable {INFO_FILE}; it is not a saved bottleneck (train one with "
                             "`logitleak defend --defenses bottleneck:1`).") from None


def save_finetuned(model, base, out: str | Path, info: dict) -> Path:
    """Save ``model`` (a fine-tuned ``transformers`` model, or a ``peft`` model whose adapters are
    saved first and then merged) with ``base``'s processor or tokenizer and ``info`` to ``out``."""
    from logitleak.integrity import atomic_directory
    from logitleak.models.quiet import quiet_transformers

    with quiet_transformers(), atomic_directory(out) as tmp:
        if hasattr(model, "merge_and_unload"):  # a peft model: the adapters as peft saves them, then merged
            model.save_pretrained(tmp / ADAPTER_DIR, safe_serialization=True)
            model = model.merge_and_unload()
        model.save_pretrained(tmp, safe_serialization=True)
        (base.processor if base.processor is not None else base.tokenizer).save_pretrained(tmp)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=1, default=str) + "\n")
    return Path(out)
