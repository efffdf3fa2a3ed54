"""ModelAdapter: one Hugging Face VLM or causal LM behind the few things every audit needs.

The adapter knows how to turn a batch of (prompt, image) into model inputs (the model's own
processor and chat template: :class:`~logitleak.models.inputs.InputBuilder`, the one input path), where the decoder blocks, final norm and unembedding are, and how
to read the final logits out of a raw residual (:meth:`ModelAdapter.readout`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from logitleak.errors import LogitleakError
from logitleak.models.families import Components, resolve_components
from logitleak.models.inputs import InputBuilder, chat_template_of
from logitleak.models.readout import Readout


class ModelAdapter(InputBuilder):
    """A loaded model plus its processor/tokenizer and resolved components.

    Attributes: ``model``, ``processor`` (``None`` for a text-only LM), ``tokenizer``, ``config``
    (the top-level config), ``text_config``, ``components`` (layers / final norm / unembedding
    and the paths they came from), ``family`` (the table entry), ``name``.
    """

    def __init__(self, model: nn.Module, *, tokenizer=None, processor=None, mapping: Mapping | None = None,
                 name: str | None = None, padding_side: str | None = None) -> None:
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = tokenizer if tokenizer is not None else getattr(processor, "tokenizer", None)
        if self.tokenizer is None:
            raise LogitleakError(f"Model {name or type(model).__name__!r} has no tokenizer; save it with "
                                 "tokenizer.save_pretrained(model_dir).")
        self.config = model.config
        self.text_config = self.config.get_text_config() if hasattr(self.config, "get_text_config") else self.config
        self.components: Components = resolve_components(model, mapping)
        self.family = self.components.family
        self.name = name or getattr(self.config, "_name_or_path", "") or type(model).__name__
        if padding_side is not None:
            self.set_padding_side(padding_side)
        self._forward_params = set(inspect.signature(model.forward).parameters)
        self._fingerprint: str | None = None
        n_cfg = getattr(self.text_config, "num_hidden_layers", None)
        if n_cfg is not None and n_cfg != self.n_layers:
            raise LogitleakError(f"Model {self.name!r} declares {n_cfg} layers but {self.components.paths['layers']!r} "
                                 f"holds {self.n_layers}; pass mapping={{'layers': ...}} naming the decoder blocks.")

    # ------------------------------------------------------------------ shape facts
    @property
    def layers(self) -> nn.ModuleList:
        return self.components.layers

    @property
    def final_norm(self) -> nn.Module:
        return self.components.final_norm

    @property
    def unembed(self) -> nn.Module:
        return self.components.unembed

    @property
    def n_layers(self) -> int:
        return len(self.components.layers)

    @property
    def vision_layers(self) -> list[nn.Module]:
        """The vision tower's blocks in execution order (empty: no vision-tower levels)."""
        return self.components.vision_layers

    @property
    def projector(self) -> nn.Module | None:
        """The module mapping vision features into the decoder's space, or ``None``."""
        return self.components.projector

    @property
    def n_vision_layers(self) -> int:
        return len(self.components.vision_layers)

    @property
    def layer_types(self) -> list[str]:
        """Kind of each hidden state ``0..L``: ``"embedding"``, then per decoder block ``"self"``
        (self-attention) or ``"cross"`` (cross-attention to the image, e.g. Mllama)."""
        attr = self.family.cross_attention
        cross = set(getattr(self.text_config, attr, None) or []) if attr else set()
        return ["embedding"] + ["cross" if i in cross else "self" for i in range(self.n_layers)]

    @property
    def d_model(self) -> int:
        return int(self.unembed.weight.shape[1])

    @property
    def vocab_size(self) -> int:
        return int(self.unembed.weight.shape[0])

    @property
    def is_vlm(self) -> bool:
        """Takes images: it has a processor with an image processor (and an image token)."""
        return self.processor is not None and getattr(self.processor, "image_processor", None) is not None

    @property
    def image_size(self) -> int | None:
        """The square side images are processed at (so probe images can be drawn at that size):
        the image processor's crop / fixed size, else the vision config's; ``None`` for an LM or a
        processor that resizes freely."""
        if not self.is_vlm:
            return None
        ip = self.processor.image_processor
        for attr in ("crop_size", "size"):
            val = getattr(ip, attr, None)
            if isinstance(val, Mapping) or hasattr(val, "get"):
                h, w = val.get("height"), val.get("width")
                if isinstance(h, int) and h == w:
                    return h
                if attr == "crop_size":
                    continue
        vc = getattr(self.config, "vision_config", None)
        size = getattr(vc, "image_size", None)
        return int(size) if isinstance(size, int) else None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.unembed.weight.dtype

    @property
    def chat_template(self) -> str | None:
        return chat_template_of(self.processor) or chat_template_of(self.tokenizer)

    @property
    def image_token_id(self) -> int | None:
        for obj, attr in ((self.config, "image_token_id"), (self.config, "image_token_index"),
                          (self.processor, "image_token_id"), (self.tokenizer, "image_token_id")):
            val = getattr(obj, attr, None) if obj is not None else None
            if isinstance(val, int):
                return val
        return None

    @property
    def image_token(self) -> str | None:
        for obj in (self.processor, self.tokenizer):
            tok = getattr(obj, "image_token", None) if obj is not None else None
            if isinstance(tok, str):
                return tok
        tid = self.image_token_id
        return self.tokenizer.convert_ids_to_tokens(tid) if tid is not None else None

    @property
    def padding_side(self) -> str:
        return getattr(self.tokenizer, "padding_side", "right")

    def set_padding_side(self, side: str) -> None:
        if side not in ("left", "right"):
            raise LogitleakError(f"Padding side {side!r} is not valid; use 'left' or 'right'.")
        self.tokenizer.padding_side = side

    def __repr__(self) -> str:
        kind = "VLM" if self.is_vlm else "LM"
        return (f"ModelAdapter({self.name!r}, {kind}, family={self.family.name}, layers={self.n_layers}, "
                f"d_model={self.d_model}, vocab={self.vocab_size})")

    def position_ids(self, attention_mask: torch.Tensor) -> torch.Tensor | None:
        """Position ids that follow the attention mask (so left padding gives the same result as
        none), or ``None`` where the model derives its own or no padding is on the left."""
        if self.family.positions != "mask" or "position_ids" not in self._forward_params:
            return None
        if bool((attention_mask[:, 0] == 1).all()):  # no left padding: the model's default is right
            return None
        pos = attention_mask.long().cumsum(-1) - 1
        return pos.clamp(min=0) + self.family.position_offset

    def forward_kwargs(self, inputs: Mapping[str, torch.Tensor], read_pos: torch.Tensor | None = None) -> dict:
        """Keyword arguments for ``model(**...)``: inputs, position ids under left padding, no
        cache, and only the read positions' logits when the model supports ``logits_to_keep``."""
        kw = dict(inputs)
        pos = self.position_ids(kw["attention_mask"])
        if pos is not None:
            kw["position_ids"] = pos
        kw["use_cache"] = False
        if read_pos is not None and "logits_to_keep" in self._forward_params:
            kw["logits_to_keep"] = read_pos.view(-1, 1)
        return kw

    # ------------------------------------------------------------------ answers
    def answer_token_ids(self, words: Sequence[str]) -> list[int]:
        """Id of the first token of each answer word *as it follows the prompt*: the word is
        tokenised after the rendered prompt (its chat template's generation prompt), preceded by a
        space unless the prompt ends in whitespace ("ASSISTANT:" + " red", "assistant\n" + "red"),
        and the first new token is taken. Order follows ``words`` (duplicates kept)."""
        ctx = self.format_prompt("?", with_image=False)
        base = self.tokenizer.encode(ctx, add_special_tokens=False)
        sep = "" if not ctx or ctx[-1].isspace() else " "
        ids = []
        for w in words:
            full = self.tokenizer.encode(ctx + sep + w, add_special_tokens=False)
            k = 0
            while k < min(len(base), len(full)) and base[k] == full[k]:
                k += 1
            new = full[k:] or self.tokenizer.encode(sep + w, add_special_tokens=False)
            if not new:
                raise LogitleakError(f"Answer word {w!r} encodes to no token for {self.name!r}; choose words the tokenizer knows.")
            ids.append(int(new[0]))
        return ids

    # ------------------------------------------------------------------ readout
    def readout(self) -> Readout:
        """The final norm + unembedding (+ soft-cap / scale) as a standalone :class:`Readout`."""
        return Readout.from_adapter(self)

    def fingerprint(self) -> str:
        """A short hash of the architecture (config), chat template and a strided sample of every
        weight: different weights give a different key without hashing gigabytes. A model converted
        from a GGUF file is named by that file's hash: ``gguf-<sha256[:16]>``."""
        source = getattr(self, "gguf_source", None)
        if self._fingerprint is None and source and source.get("sha256"):
            self._fingerprint = f"gguf-{source['sha256'][:16]}"
        if self._fingerprint is None:
            h = hashlib.sha256()
            cfg = self.config.to_dict()
            cfg.pop("_name_or_path", None)
            cfg.pop("transformers_version", None)
            h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
            h.update((self.chat_template or "").encode())
            h.update(json.dumps(self.components.paths, sort_keys=True).encode())
            from logitleak.models.devices import weights_loaded

            with torch.no_grad(), weights_loaded(self.model):  # offloaded blocks too (--device auto)
                for name, p in self.model.state_dict().items():
                    flat = p.detach().reshape(-1)
                    step = max(1, flat.numel() // 256)
                    sample = flat[::step][:256].float().cpu().contiguous()
                    h.update(name.encode())
                    h.update(str(tuple(p.shape)).encode())
                    h.update(sample.numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    @classmethod
    def from_model(cls, model: nn.Module, *, tokenizer=None, processor=None, mapping: Mapping | str | Path | None = None,
                   name: str | None = None, padding_side: str | None = None) -> ModelAdapter:
        """Wrap an already-built model (e.g. in memory) the same way :func:`load_model` does."""
        from logitleak.models.families import read_mapping

        return cls(model, tokenizer=tokenizer, processor=processor, mapping=read_mapping(mapping), name=name,
                   padding_side=padding_side)
