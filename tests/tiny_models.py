"""Tiny random-configuration models of real Hugging Face architectures, built offline.

``build_tiny(family, out_dir)`` saves a model with random weights plus its processor (VLMs) or
tokenizer (LMs) to ``out_dir``, so it opens through ``load_model`` exactly like a real checkpoint.
Tokenizers are word-level (``tokenizers.WordLevel``) over the shapes questions and answers, with
each family's special tokens; processors are the family's own classes with the PIL image
processor at the probe images' size. Also used by the benchmarks.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from logitleak.data.shapes import ATTRIBUTES, QUESTIONS  # noqa: F401

VLM_FAMILIES = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "paligemma", "idefics3", "mllama")
LM_FAMILIES = ("gpt2", "llama", "qwen2", "gemma", "gemma2")
FAMILIES = VLM_FAMILIES + LM_FAMILIES

D = 32  # text width
IMAGE = 32  # probe image side (make_shapes default)

_WORD = re.compile(r"\w+|[^\w\s]+")
_TEMPLATE_WORDS = ("USER", "ASSISTANT", "User", "Assistant", "user", "assistant", "model", "system", ":", "\n",
                   "answer", "en", "Question", "Answer")


def words() -> list[str]:
    out: set[str] = set(_TEMPLATE_WORDS)
    for vals in ATTRIBUTES.values():
        out.update(vals)
    for qs in QUESTIONS.values():
        for q in qs:
            out.update(_WORD.findall(q))
    out.update(["the", "a", "is", "what"])
    return sorted(out)


def word_tokenizer(specials: list[str], *, bos="<s>", eos="</s>", pad="<pad>", unk="<unk>", chat_template=None,
                   extra_special: dict | None = None, padding_side="right", add_bos=False):
    """A word-level fast tokenizer: ``specials`` first (ids 0..), then :func:`words`."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    base = [t for t in dict.fromkeys([unk, pad, bos, eos] + list(specials)) if t]
    vocab = {t: i for i, t in enumerate(base + [w for w in words() if w not in base])}
    backend = Tokenizer(WordLevel(vocab=vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    kw = dict(unk_token=unk, pad_token=pad, eos_token=eos, padding_side=padding_side, model_max_length=4096,
              clean_up_tokenization_spaces=False)
    if bos:
        kw["bos_token"] = bos
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, extra_special_tokens=extra_special or {}, **kw)
    tok.add_special_tokens({"additional_special_tokens": [t for t in specials if t not in (unk, pad, bos, eos)]})
    if chat_template:
        tok.chat_template = chat_template
    if add_bos:
        tok.add_bos_token = True
    return tok


def _parts_loop(image: str, prefix: str = "", suffix: str = "") -> str:
    """A jinja chat template body for one user turn with image/text content parts (or a string)."""
    return (
        "{% for m in messages %}"
        "{% if m['content'] is string %}{% set parts = [{'type': 'text', 'text': m['content']}] %}"
        "{% else %}{% set parts = m['content'] %}{% endif %}"
        + prefix +
        "{% for p in parts %}"
        "{% if p['type'] == 'image' %}" + image + "{% elif p['type'] == 'text' %}{{ p['text'] }}{% endif %}"
        "{% endfor %}"
        + suffix +
        "{% endfor %}"
    )


VICUNA = _parts_loop("<image>\n", prefix="USER: ", suffix=" ") + "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
CHATML_QWEN = (_parts_loop("<|vision_start|><|image_pad|><|vision_end|>", prefix="<|im_start|>user\n", suffix="<|im_end|>\n")
               + "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
IDEFICS3 = ("<|im_start|>" + _parts_loop("<image>", prefix="User:", suffix="<end_of_utterance>\n")
            + "{% if add_generation_prompt %}Assistant:{% endif %}")
GEMMA = ("{{ bos_token }}" + _parts_loop("", prefix="<start_of_turn>user\n", suffix="<end_of_turn>\n")
         + "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
LLAMA_LM = "{{ bos_token }}" + _parts_loop("", prefix="USER: ", suffix=" ") + "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
TEXT_ONLY_DROPS_IMAGE = _parts_loop("", prefix="USER: ", suffix=" ") + "{% if add_generation_prompt %}ASSISTANT:{% endif %}"


def _llama(vocab: int, n_layers: int, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=D, intermediate_size=2 * D, num_hidden_layers=n_layers,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                       pad_token_id=1, tie_word_embeddings=False, **kw)


def _clip(**kw):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                            image_size=IMAGE, patch_size=8, projection_dim=16, **kw)


def build_llava(out: Path, n_layers: int = 2, chat_template: str = VICUNA):
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = word_tokenizer(["<image>"], extra_special={"image_token": "<image>"}, add_bos=True)
    ip = CLIPImageProcessorPil(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                          chat_template=chat_template, num_additional_image_tokens=1, image_token="<image>")
    cfg = LlavaConfig(vision_config=_clip(), text_config=_llama(len(tok), n_layers),
                      image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
                      vision_feature_select_strategy="default", projector_hidden_act="gelu", tie_word_embeddings=False)
    return LlavaForConditionalGeneration(cfg), proc


def build_llava_next(out: Path, n_layers: int = 2):
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    tok = word_tokenizer(["<image>"], extra_special={"image_token": "<image>"}, add_bos=True)
    pinpoints = [[IMAGE, IMAGE], [IMAGE, 2 * IMAGE], [2 * IMAGE, IMAGE]]
    ip = LlavaNextImageProcessorPil(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE},
                                    image_grid_pinpoints=pinpoints)
    proc = LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                              chat_template=VICUNA, num_additional_image_tokens=1, image_token="<image>")
    cfg = LlavaNextConfig(vision_config=_clip(), text_config=_llama(len(tok), n_layers),
                          image_token_index=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=pinpoints,
                          vision_feature_layer=-1, vision_feature_select_strategy="default", tie_word_embeddings=False)
    return LlavaNextForConditionalGeneration(cfg), proc


def byte_level_bpe(special: list[str]):
    """A byte-level BPE (GPT-2 / Qwen style) trained here on the shapes words: ``(Tokenizer, vocab, merges)``."""
    import json as _json

    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers.models import BPE

    bpe = Tokenizer(BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [" ".join(words())] + [w for w in words()] + [" " + w for w in words()]
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=list(special), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus * 3, trainer=trainer)
    model = _json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return bpe, model["vocab"], merges


def qwen_bpe_tokenizer(specials: list[str], *, chat_template=None, extra_special: dict | None = None):
    """A real ``Qwen2Tokenizer`` (byte-level BPE), since ``AutoTokenizer`` rebuilds Qwen2
    tokenizers from vocab + merges whatever tokenizer.json says."""
    from transformers import Qwen2Tokenizer

    eot = "<|endoftext|>"
    _, vocab, merges = byte_level_bpe([eot])
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token="<|im_end|>", pad_token=eot,
                         extra_special_tokens=extra_special or {}, padding_side="right")
    tok.add_special_tokens({"additional_special_tokens": list(specials)})
    if chat_template:
        tok.chat_template = chat_template
    return tok


class _SavedParts:
    """Stands in for a processor that cannot be built without torchvision (Qwen2-VL's also holds a
    video processor): saves the image processor, tokenizer, chat template and processor class
    exactly where ``save_pretrained`` would."""

    def __init__(self, processor_class: str, image_processor, tokenizer, chat_template: str):
        self.processor_class, self.image_processor, self.tokenizer = processor_class, image_processor, tokenizer
        self.chat_template = chat_template

    def save_pretrained(self, out):
        import json as _json

        out = Path(out)
        self.image_processor.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        (out / "chat_template.jinja").write_text(self.chat_template)
        (out / "processor_config.json").write_text(_json.dumps({"processor_class": self.processor_class}))


def _qwen_vl(out: Path, n_layers: int, v25: bool):
    from transformers import Qwen2VLImageProcessorPil

    specials = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok = qwen_bpe_tokenizer(specials, extra_special={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"})
    # 32x32 images -> 28x28 -> 2x2 patches of 14 -> one token after the 2x2 merge
    ip = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56, patch_size=14, merge_size=2,
                                  temporal_patch_size=2)
    text = dict(vocab_size=len(tok), hidden_size=D, intermediate_size=2 * D, num_hidden_layers=n_layers,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                tie_word_embeddings=False, bos_token_id=None, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id)
    ids = dict(image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
               video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
               vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
               vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"))
    if v25:
        from transformers import Qwen2_5_VLConfig as Cfg
        from transformers import Qwen2_5_VLForConditionalGeneration as Model

        vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=D, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, window_size=28, fullatt_block_indexes=[0])
        proc_name = "Qwen2_5_VLProcessor"
    else:
        from transformers import Qwen2VLConfig as Cfg
        from transformers import Qwen2VLForConditionalGeneration as Model

        vision = dict(depth=1, embed_dim=16, hidden_size=D, mlp_ratio=2, num_heads=2, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2)
        proc_name = "Qwen2VLProcessor"
    cfg = Cfg(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
    try:  # with torchvision the real processor (video processor included) is built and saved
        import transformers
        from transformers import Qwen2VLVideoProcessor

        proc = getattr(transformers, proc_name)(image_processor=ip, tokenizer=tok, video_processor=Qwen2VLVideoProcessor(),
                                                chat_template=CHATML_QWEN)
    except Exception:  # noqa: BLE001 - no torchvision: save the parts the processor is made of
        proc = _SavedParts(proc_name, ip, tok, CHATML_QWEN)
    return Model(cfg), proc


def build_qwen2_vl(out: Path, n_layers: int = 2):
    return _qwen_vl(out, n_layers, v25=False)


def build_qwen2_5_vl(out: Path, n_layers: int = 2):
    return _qwen_vl(out, n_layers, v25=True)


def build_paligemma(out: Path, n_layers: int = 2):
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessorPil,
        SiglipVisionConfig,
    )

    tok = word_tokenizer(["<image>"], bos="<bos>", eos="<eos>", extra_special={"image_token": "<image>"})
    ip = SiglipImageProcessorPil(size={"height": IMAGE, "width": IMAGE})
    ip.image_seq_length = (IMAGE // 8) ** 2
    proc = PaliGemmaProcessor(image_processor=ip, tokenizer=tok)  # adds 1152 <loc>/<seg> tokens
    text = GemmaConfig(vocab_size=len(proc.tokenizer), hidden_size=D, intermediate_size=2 * D, num_hidden_layers=n_layers,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
                       pad_token_id=1)
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                image_size=IMAGE, patch_size=8, projection_dim=D)
    cfg = PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=proc.image_token_id,
                          projection_dim=D, hidden_size=D)
    cfg.text_config.vocab_size = len(proc.tokenizer)
    return PaliGemmaForConditionalGeneration(cfg), proc


def build_idefics3(out: Path, n_layers: int = 2):
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    specials = ["<|im_start|>", "<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
    specials += [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tok = word_tokenizer(specials, bos="<|im_start|>", eos="<end_of_utterance>",
                         extra_special={"image_token": "<image>"})
    ip = Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": IMAGE},
                                   max_image_size={"longest_edge": IMAGE})
    # 32x32 / patch 8 = 16 patches; pixel shuffle by scale 2 -> 4 tokens per image
    proc = Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=4, chat_template=IDEFICS3)
    text = _llama(len(tok), n_layers)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=IMAGE,
                  patch_size=8)
    cfg = Idefics3Config(vision_config=vision, text_config=text.to_dict(), scale_factor=2,
                         image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=False)
    return Idefics3ForConditionalGeneration(cfg), proc


LLAMA32 = ("{{ bos_token }}" + _parts_loop("<|image|>", prefix="<|start_header_id|>user<|end_header_id|>\n\n",
                                           suffix="<|eot_id|>")
           + "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def build_mllama(out: Path, n_layers: int = 2):
    """Llama 3.2 Vision: a tiled vision tower (local + global encoder) whose features enter the
    decoder through cross-attention blocks (block 1 here), one <|image|> token in the text."""
    from transformers import (
        MllamaConfig,
        MllamaForConditionalGeneration,
        MllamaImageProcessorPil,
        MllamaProcessor,
        MllamaTextConfig,
        MllamaVisionConfig,
    )

    specials = ["<|image|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok = word_tokenizer(specials, bos="<|begin_of_text|>", eos="<|eot_id|>", extra_special={"image_token": "<|image|>"})
    ip = MllamaImageProcessorPil(size={"height": IMAGE, "width": IMAGE}, max_image_tiles=1)
    proc = MllamaProcessor(image_processor=ip, tokenizer=tok, chat_template=LLAMA32)
    vision = MllamaVisionConfig(hidden_size=16, num_hidden_layers=1, num_global_layers=1, attention_heads=2,
                                intermediate_size=32, vision_output_dim=32, image_size=IMAGE, patch_size=8,
                                max_num_tiles=1, intermediate_layers_indices=[0], supported_aspect_ratios=[[1, 1]])
    text = MllamaTextConfig(vocab_size=len(tok), hidden_size=D, intermediate_size=2 * D, num_hidden_layers=n_layers,
                            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                            cross_attention_layers=[1], bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    cfg = MllamaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<|image|>"),
                       tie_word_embeddings=False)
    return MllamaForConditionalGeneration(cfg), proc


def build_gpt2(out: Path, n_layers: int = 2):
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe, _, _ = byte_level_bpe(["<|endoftext|>"])  # byte-level BPE like GPT-2's own, no chat template
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>", padding_side="right", model_max_length=512)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=D, n_layer=n_layers, n_head=2, n_positions=512,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return GPT2LMHeadModel(cfg), tok


def build_llama(out: Path, n_layers: int = 2):
    from transformers import LlamaForCausalLM

    tok = word_tokenizer([], chat_template=LLAMA_LM, add_bos=True)
    return LlamaForCausalLM(_llama(len(tok), n_layers)), tok


def build_qwen2(out: Path, n_layers: int = 2):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = qwen_bpe_tokenizer(["<|im_start|>", "<|im_end|>"], chat_template=CHATML_QWEN)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=D, intermediate_size=2 * D, num_hidden_layers=n_layers,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, tie_word_embeddings=True)
    return Qwen2ForCausalLM(cfg), tok


def build_gemma(out: Path, n_layers: int = 2):
    from transformers import GemmaConfig, GemmaForCausalLM

    tok = word_tokenizer(["<start_of_turn>", "<end_of_turn>"], bos="<bos>", eos="<eos>", chat_template=GEMMA)
    cfg = GemmaConfig(vocab_size=len(tok), hidden_size=D, intermediate_size=2 * D, num_hidden_layers=n_layers,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
                      pad_token_id=tok.pad_token_id)
    return GemmaForCausalLM(cfg), tok


def build_gemma2(out: Path, n_layers: int = 2):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    tok = word_tokenizer(["<start_of_turn>", "<end_of_turn>"], bos="<bos>", eos="<eos>", chat_template=GEMMA)
    cfg = Gemma2Config(vocab_size=len(tok), hidden_size=D, intermediate_size=2 * D, num_hidden_layers=n_layers,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
                       pad_token_id=tok.pad_token_id, final_logit_softcapping=2.0, attn_logit_softcapping=50.0,
                       sliding_window=16)
    return Gemma2ForCausalLM(cfg), tok


BUILDERS = {name: globals()[f"build_{name}"] for name in FAMILIES}


def build_tiny(family: str, out_dir: str | Path, *, n_layers: int = 2, seed: int = 0, init_std: float | None = 0.2,
               **kw) -> Path:
    """Build the tiny ``family`` model with random weights (``seed``), save model + processor /
    tokenizer to ``out_dir`` and return it. ``init_std`` widens the random init so tiny models'
    logits are not all near zero (differences between levels then show up in tests)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, proc = BUILDERS[family](out, n_layers=n_layers, **kw)
        if init_std is not None:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if p.dim() >= 2:
                        p.normal_(0.0, init_std)
                    elif "norm" in name or "ln" in name:
                        p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


# ----------------------------------------------------------------------------- shared, cached per process

_ROOT: Path | None = None
_BUILT: dict[tuple, Path] = {}


def tiny_model_dir(family: str, *, n_layers: int = 2, seed: int = 0, **kw) -> Path:
    """``build_tiny`` once per process and arguments (a temp dir removed at exit): test modules
    share the saved models instead of rebuilding them."""
    global _ROOT
    import atexit
    import shutil
    import tempfile

    key = (family, n_layers, seed, tuple(sorted(kw.items())))
    if key not in _BUILT:
        if _ROOT is None:
            _ROOT = Path(tempfile.mkdtemp(prefix="logitleak-tiny-"))
            atexit.register(shutil.rmtree, _ROOT, True)
        name = f"{family}-L{n_layers}-s{seed}-{abs(hash(key[3])) % 10**8}"
        _BUILT[key] = build_tiny(family, _ROOT / name, n_layers=n_layers, seed=seed, **kw)
    return _BUILT[key]


def text_probeset(n: int = 6, seed: int = 0, questions: str = "all"):
    """A text-only probe set (the shapes questions and labels without the images)."""
    from logitleak.data import ProbeSet, make_shapes

    ps = make_shapes(n, questions=questions, seed=seed)
    return ProbeSet(name="shapes-text", prompts=ps.prompts, attributes=ps.attributes, asked=ps.asked,
                    groups=ps.groups, images=None, meta=dict(ps.meta))


def probeset_for(adapter, n: int = 6, seed: int = 0, questions: str = "all"):
    """Shapes with images for a VLM, the same questions as text for an LM."""
    from logitleak.data import make_shapes

    return make_shapes(n, questions=questions, seed=seed) if adapter.is_vlm else text_probeset(n, seed, questions)
