"""The built-in model organism: a tiny LLaVA (CLIP vision tower + Llama text model) trained here.

Everything is a stock Hugging Face class, so the saved directory opens with
``LlavaForConditionalGeneration.from_pretrained`` and ``AutoProcessor.from_pretrained`` alone:

- tokenizer: a ``tokenizers`` WordLevel model (words only, no byte tokens) wrapped in
  ``PreTrainedTokenizerFast``, special tokens ``<pad> <unk> <s> </s> <image>``, left padding, and
  a jinja chat template (``<s>user : <image> QUESTION`` newline ``assistant :``);
- processor: ``LlavaProcessor`` with a CLIP image processor sized to the image size (square
  images of that size pass through unresized and uncropped), which expands ``<image>`` into
  ``image_seq_length`` placeholder tokens;
- model: ``LlavaForConditionalGeneration`` (CLIP vision 128 wide x 3 layers, patch 8, 32 px
  images -> 16 image tokens; Llama 128 wide x 4 layers, 2 heads of 64, SwiGLU 352, untied
  embeddings), features from the last vision layer (``vision_feature_layer=-1``) with CLS
  dropped (``'default'``), so ``image_seq_length`` = (32 / 8)^2.

The standard path is the training path: the question goes through
``processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
"text": prompt}]}], add_generation_prompt=True)`` and ``processor(images=..., text=...,
padding=True, return_tensors="pt")``, and the answer is the next token after the last prompt
position (``logits[:, -1]``), one word: the value of the attribute asked.
"""

from __future__ import annotations

import importlib.util
import operator
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from logitleak.data.shapes import ATTRIBUTES, QUESTIONS
from logitleak.errors import LogitleakError

if TYPE_CHECKING:  # heavy imports stay lazy so `logitleak --help` is fast
    from transformers import LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast

ORGANISM_VERSION = "v1"
IMAGE_SIZE = 32
PATCH_SIZE = 8

PAD, UNK, BOS, EOS, IMAGE = "<pad>", "<unk>", "<s>", "</s>", "<image>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, IMAGE)
# Words of the chat template besides the questions and answers.
_TEMPLATE_WORDS = ("user", "assistant", "system", ":")

CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}"
    "{{- message['role'] + ' :' -}}"
    "{%- for part in parts -%}"
    "{%- if part['type'] == 'image' -%}{{- ' <image>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- ' ' + part['text'] -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if message['role'] == 'assistant' -%}{{- ' ' + eos_token -}}{%- endif -%}"
    "{{- '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'assistant :' -}}{%- endif -%}"
)

# Tiny but shaped like a real model (head dim 64, RoPE, SwiGLU, RMSNorm; CLIP pre-norm ViT).
TEXT_DIMS = {"hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 4,
             "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 64}
VISION_DIMS = {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 3,
               "num_attention_heads": 4}

_WORD = re.compile(r"\w+|[^\w\s]+")


def organism_answer_words() -> dict[str, list[str]]:
    """Attribute -> its one-word answers (each one token of the organism's vocabulary)."""
    return {attr: list(values) for attr, values in ATTRIBUTES.items()}


def organism_answer_token_ids(tokenizer) -> dict[str, list[int]]:
    """Attribute -> the token ids of its answers under ``tokenizer`` (the organism's, or any
    tokenizer where each answer word is one token)."""
    out = {}
    for attr, words in organism_answer_words().items():
        ids = []
        for w in words:
            enc = tokenizer(w, add_special_tokens=False)["input_ids"]
            if len(enc) != 1 or enc[0] == tokenizer.unk_token_id:
                raise LogitleakError(f"Answer word {w!r} is not one known token of this tokenizer; "
                                     "use the organism's tokenizer or map answers to token ids yourself.")
            ids.append(int(enc[0]))
        out[attr] = ids
    return out


def organism_vocabulary() -> list[str]:
    """The organism's token strings in id order: special tokens, then every word, sorted."""
    words: set[str] = set(_TEMPLATE_WORDS)
    for values in ATTRIBUTES.values():
        words.update(values)
    for templates in QUESTIONS.values():
        for q in templates:
            words.update(_WORD.findall(q.lower()))
    return list(SPECIAL_TOKENS) + sorted(words)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The word-level tokenizer (lower-cases, splits words from punctuation, left padding)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(organism_vocabulary())}
    backend = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE},
        padding_side="left", add_bos_token=False, add_eos_token=False,
        model_max_length=512, clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )
    return tok


def build_processor(image_size: int = IMAGE_SIZE) -> LlavaProcessor:
    """``LlavaProcessor`` = CLIP image processor at ``image_size`` + the word tokenizer."""
    from transformers import LlavaProcessor

    _check_image_size(image_size)
    # the torchvision backend when installed; else the PIL one (same numbers for our square images)
    if importlib.util.find_spec("torchvision") is not None:
        from transformers import CLIPImageProcessor as ImageProcessor
    else:
        from transformers import CLIPImageProcessorPil as ImageProcessor
    image_processor = ImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        do_resize=True, do_center_crop=True, do_rescale=True, do_normalize=True, do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=build_tokenizer(), patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE, image_token=IMAGE,
    )


def _check_image_size(image_size: Any) -> None:
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < PATCH_SIZE \
            or image_size % PATCH_SIZE:
        raise LogitleakError(
            f"Image size {image_size!r} is not valid for the organism; pass a positive multiple of {PATCH_SIZE} such as {IMAGE_SIZE}."
        )


def organism_config(image_size: int = IMAGE_SIZE, tokenizer: PreTrainedTokenizerFast | None = None):
    """The ``LlavaConfig`` of the organism (real-LLaVA defaults overridden where they do not fit)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    _check_image_size(image_size)
    tok = tokenizer if tokenizer is not None else build_tokenizer()
    vision = CLIPVisionConfig(image_size=image_size, patch_size=PATCH_SIZE, num_channels=3,
                              hidden_act="quick_gelu", projection_dim=VISION_DIMS["hidden_size"], **VISION_DIMS)
    text = LlamaConfig(
        vocab_size=len(tok), max_position_embeddings=256, rms_norm_eps=1e-5, hidden_act="silu",
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False, **TEXT_DIMS,
    )
    n_patches = (image_size // PATCH_SIZE) ** 2
    config = LlavaConfig(
        vision_config=vision, text_config=text,
        image_token_index=tok.convert_tokens_to_ids(IMAGE),
        image_seq_length=n_patches,  # 'default' drops CLS: one token per patch
        vision_feature_layer=-1, vision_feature_select_strategy="default",
        projector_hidden_act="gelu", multimodal_projector_bias=True, tie_word_embeddings=False,
    )
    config.pad_token_id = tok.pad_token_id
    return config


def build_organism(seed: int = 0, image_size: int = IMAGE_SIZE) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """An untrained organism (weights drawn from ``seed``) and its processor."""
    import torch
    from transformers import LlavaForConditionalGeneration

    check_seed(seed)
    processor = build_processor(image_size)
    config = organism_config(image_size, processor.tokenizer)
    with _fork_rng():
        torch.manual_seed(int(seed))
        model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.bos_token_id = processor.tokenizer.bos_token_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.eval()
    return model, processor


def _fork_rng():
    import torch

    return torch.random.fork_rng(devices=[])


def check_seed(seed: Any) -> None:
    try:
        if isinstance(seed, bool):
            raise TypeError
        operator.index(seed)
    except TypeError:
        raise LogitleakError(f"Seed {seed!r} is not an integer; pass a whole number such as 0.") from None
    if int(seed) < 0:
        raise LogitleakError(f"Seed {seed!r} is negative; pass a whole number of 0 or more.")


def chat_messages(prompt: str) -> list[dict]:
    """The one-turn conversation the organism answers: an image then the question."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def render_prompt(processor: LlavaProcessor, prompt: str) -> str:
    """The chat-template text for one question (one ``<image>`` placeholder, generation prompt)."""
    return processor.apply_chat_template(chat_messages(prompt), add_generation_prompt=True)


def organism_inputs(model: LlavaForConditionalGeneration, processor: LlavaProcessor, images, prompts: list[str]):
    """Model inputs for a batch through the one input path every command takes: the adapter's
    :meth:`~logitleak.models.adapter.ModelAdapter.build_inputs` (chat template + processor, the
    processor's left padding)."""
    from logitleak.models.adapter import ModelAdapter

    return ModelAdapter(model, processor=processor).build_inputs(list(prompts), list(images))


# ----------------------------------------------------------------------------- cache

def organism_dir(seed: int = 0) -> Path:
    """Where the organism trained from ``seed`` is cached: ``$XDG_CACHE_HOME/logitleak/organism-seed{seed}-v1``."""
    check_seed(seed)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "logitleak" / f"organism-seed{int(seed)}-{ORGANISM_VERSION}"


def is_complete(path: str | Path) -> bool:
    """Whether ``path`` holds a finished organism (training writes ``metrics.json`` last, then renames)."""
    p = Path(path)
    return p.is_dir() and all((p / f).is_file() for f in
                              ("metrics.json", "config.json", "model.safetensors", "tokenizer.json"))
