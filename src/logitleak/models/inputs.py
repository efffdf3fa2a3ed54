"""Prompts and images -> model inputs through the model's own processor and chat template: the one input path."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from logitleak.errors import LogitleakError, first_line


def chat_template_of(obj) -> str | None:
    """The chat template a processor or tokenizer carries (its default one when it has several), or ``None``."""
    tmpl = getattr(obj, "chat_template", None)
    if isinstance(tmpl, dict):  # several named templates: the default one
        tmpl = tmpl.get("default") or next(iter(tmpl.values()), None)
    return tmpl or None


def _as_parts(content) -> list[dict]:
    """A message's content as a list of parts (a string is one text part)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [dict(p) for p in content]


def _rgb(images: list) -> list:
    """Images (or lists of images) converted to RGB where they are not."""
    def conv(im):
        return im.convert("RGB") if getattr(im, "mode", "RGB") != "RGB" else im
    return [[conv(i) for i in im] if isinstance(im, list) else conv(im) for im in images]


class InputBuilder:
    """How a :class:`~logitleak.models.adapter.ModelAdapter` renders prompts and conversations and
    encodes them with images. Mixed into the adapter; it reads the adapter's ``tokenizer``,
    ``processor``, ``family``, ``name``, ``is_vlm``, ``chat_template``, ``image_token(_id)``,
    ``device`` and ``dtype``."""

    def format_prompt(self, prompt: str, with_image: bool) -> str:
        """The text the model sees for one question: its chat template (one user turn, an image
        part first when there is an image, generation prompt) or, without a template, the plain
        prompt (with the image token in front for a VLM when the prompt has none)."""
        if self.chat_template is None and with_image and self.image_token and self.image_token in prompt:
            return prompt
        content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": prompt}]
        return self.render_chat([{"role": "user", "content": content}])

    def render_chat(self, messages: Sequence[Mapping]) -> str:
        """The text the model sees for a conversation (Hugging Face messages whose ``content`` is a
        string or a list of ``{"type": "text", "text": ...}`` / ``{"type": "image"}`` parts), with
        the generation prompt: the processor's chat template, else the tokenizer's (text parts
        joined, the image token where an image was), else the turns' contents one per line (an
        image part as the family's image prefix)."""
        messages = [dict(m) for m in messages]
        if self.chat_template is not None:
            if self.processor is not None and hasattr(self.processor, "apply_chat_template") and chat_template_of(self.processor):
                parts = [{**m, "content": _as_parts(m.get("content"))} for m in messages]
                return self.processor.apply_chat_template(parts, add_generation_prompt=True, tokenize=False)
            flat = [{**m, "content": self._flatten(m.get("content"), self.image_token or "", " " if self.image_token else "")}
                    for m in messages]
            return self.tokenizer.apply_chat_template(flat, add_generation_prompt=True, tokenize=False)
        prefix = self.family.image_prefix.format(image=self.image_token) if self.image_token else ""
        return "\n".join(self._flatten(m.get("content"), prefix, "") for m in messages)

    @staticmethod
    def _flatten(content, image_text: str, after_image: str) -> str:
        out, last_text = "", False
        for p in _as_parts(content):
            if p.get("type") == "image":
                out, last_text = out + image_text + after_image, False
            elif p.get("text"):
                out, last_text = out + (" " if last_text else "") + p["text"], True
        return out

    def format_conversation(self, turns: Sequence[Mapping], with_image: bool) -> str:
        """The text the model sees for a whole conversation (system / user / assistant turns with
        text contents, ending with a user turn): :meth:`render_chat`, with the image part first
        in the first user turn when there is an image."""
        turns = [dict(t) for t in turns]
        if with_image:
            i = next((j for j, t in enumerate(turns) if t["role"] == "user"), None)
            if i is not None:
                turns[i]["content"] = [{"type": "image"}] + _as_parts(turns[i]["content"])
        return self.render_chat(turns)

    def build_inputs(self, prompts: Sequence[str], images: Sequence | None = None,
                     messages: Sequence[Sequence[Mapping]] | None = None) -> dict[str, torch.Tensor]:
        """Model inputs for one batch, on the model's device, padded on the tokenizer's side.
        ``messages``: whole conversations (one per prompt) instead of single user turns."""
        prompts = list(prompts)
        if messages is not None and len(messages) != len(prompts):
            raise LogitleakError(f"Got {len(messages)} conversations for {len(prompts)} prompts; give one per prompt.")
        if images is not None and not self.is_vlm:
            raise LogitleakError(f"Model {self.name!r} is a text-only language model but the probe set has images; "
                                 "use a text probe set or a vision-language model.")
        if images is not None and len(images) != len(prompts):
            raise LogitleakError(f"Got {len(images)} images for {len(prompts)} prompts; give one image per prompt.")
        if messages is not None:
            texts = [self.format_conversation(m, images is not None) for m in messages]
        else:
            texts = [self.format_prompt(p, images is not None) for p in prompts]
        return self._encode(texts, None if images is None else list(images), [f"Prompt {p!r}" for p in prompts])

    def build_chat_inputs(self, conversations: Sequence[Sequence[Mapping]], images: Sequence[Sequence] | None = None,
                          padding_side: str | None = None) -> dict[str, torch.Tensor]:
        """Model inputs for a batch of conversations (see :meth:`render_chat`), the same way
        :meth:`build_inputs` makes them: ``images[i]`` are conversation ``i``'s images in the order
        of its image parts (every conversation the same number of images); ``padding_side``
        overrides the tokenizer's for this call (``"left"`` for generation)."""
        conversations = list(conversations)
        if images is not None and len(images) != len(conversations):
            raise LogitleakError(f"Got image lists for {len(images)} conversations but {len(conversations)} "
                                 "conversations; give one list per conversation.")
        counts = {len(ims) for ims in images} if images is not None else {0}
        if len(counts) != 1:
            raise LogitleakError("The conversations of one batch carry different numbers of images; batch them apart.")
        n = counts.pop()
        if n and not self.is_vlm:
            raise LogitleakError(f"Model {self.name!r} is a text-only language model; send text only.")
        flat = None if not n else ([ims[0] for ims in images] if n == 1 else [list(ims) for ims in images])
        texts = [self.render_chat(c) for c in conversations]
        return self._encode(texts, flat, [f"Conversation {i}" for i in range(len(texts))], padding_side)

    def _encode(self, texts: list[str], images: list | None, labels: list[str],
                padding_side: str | None = None) -> dict[str, torch.Tensor]:
        """Tokenise rendered texts (and images: one per text, or a list per text) into model inputs."""
        # A template that already writes the BOS token must not get a second one.
        bos = getattr(self.tokenizer, "bos_token", None)
        add_special = not (bos and all(t.startswith(bos) for t in texts))
        kwargs: dict[str, Any] = {"padding": True, "return_tensors": "pt", "add_special_tokens": add_special}
        if padding_side is not None:
            kwargs["padding_side"] = padding_side
        try:
            if self.processor is not None and (images is not None or self.is_vlm):
                if images is not None:
                    rgb = _rgb(images)
                    if self.family.nested_images:
                        rgb = [im if isinstance(im, list) else [im] for im in rgb]
                    enc = self.processor(text=texts, images=rgb, **kwargs)
                else:
                    enc = self.processor(text=texts, **kwargs)
            else:
                enc = self.tokenizer(texts, **kwargs)
        except (ValueError, IndexError, RuntimeError, TypeError) as exc:
            msg = first_line(exc, None)
            if images is not None and ("image" in msg.lower() or "token" in msg.lower()):
                raise LogitleakError(f"The processor of {self.name!r} could not place the image ({msg}); the prompt "
                                     f"or chat template must keep an image placeholder such as {self.image_token!r}.") from None
            raise LogitleakError(f"The processor of {self.name!r} rejected the batch ({msg}); check the prompts and images.") from None
        enc = dict(enc)
        enc.pop("labels", None)  # PaliGemma's processor adds training labels
        if images is not None:
            tid = self.image_token_id
            if tid is not None:
                missing = (enc["input_ids"] == tid).sum(dim=1) == 0
                if bool(missing.any()):
                    i = int(missing.nonzero()[0, 0])
                    raise LogitleakError(f"{labels[i]} reached {self.name!r} without an image placeholder "
                                         f"({self.image_token!r}); keep the image part in the chat template or put "
                                         f"{self.image_token!r} in the prompt.")
        if "attention_mask" not in enc:
            enc["attention_mask"] = torch.ones_like(enc["input_ids"])
        dev = self.device
        dtype = self.dtype
        out = {}
        for k, v in enc.items():
            if isinstance(v, torch.Tensor):
                v = v.to(dev)
                if v.is_floating_point():
                    v = v.to(dtype)
            out[k] = v
        return out
