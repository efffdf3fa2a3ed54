"""Training the model organism from scratch, in two stages, on the shapes set (every attribute).

1. **Vision stage.** The CLIP tower alone learns to read every attribute: its patch tokens (the
   very features LLaVA hands to the projector) go, mean-pooled and one by one, into throw-away
   linear heads, so every image token ends up carrying every attribute (which is what lets the
   language model read any of them quickly) and shape, the hardest, is learnt reliably.
2. **VQA stage.** Projector and language model learn to answer one-word questions about any
   attribute, all question types in every batch; the loss is on the answer token predicted at
   the last prompt position (after ``assistant :``) and, lightly, on ``</s>`` after it. The vision
   tower stays as stage 1 left it, so its features are computed once per training image.

Inputs are built exactly as the standard path builds them (chat template, the processor's
``<image>`` expansion, left padding, CLIP pixel normalisation); a test checks that. Training uses
bfloat16 autocast where the CPU has native bf16, eager attention (much faster than SDPA's CPU
backward in bf16) and one thread; the saved model is float32 with SDPA attention.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from logitleak.data.shapes import ATTRIBUTES, make_shapes
from logitleak.errors import LogitleakError
from logitleak.integrity import atomic_directory
from logitleak.models import organism as org
from logitleak.models.devices import torch_threads
from logitleak.models.organism_data import Normalizer, Pool, Prompts
from logitleak.models.quiet import quiet_transformers
from logitleak.progress import make_progress


@dataclass(frozen=True)
class TrainPlan:
    """Hyper-parameters of one training run (``full`` is the shipped organism)."""

    image_size: int = org.IMAGE_SIZE
    pool_images: int = 60_000     # distinct training images of the vision stage
    vqa_images: int = 24_000      # the first this many are the VQA stage's (each asked every question)
    bf16: bool | None = None      # bfloat16 autocast while training; None: where the CPU has native bf16
    threads: int = 1              # torch threads while training: tiny kernels gain little from more, and
                                  # one thread neither spins against other work nor varies with the machine
    vision_steps: int = 1000
    vision_batch: int = 128
    vision_lr: float = 2e-3
    vision_weights: tuple[float, ...] = (1.0, 2.0, 1.0, 1.0, 1.0)  # loss weight per attribute (shape is hardest)
    token_loss: float = 1.0       # weight of the same heads applied to every patch token (each token knows all)
    vqa_steps: int = 800
    vqa_batch: int = 64
    vqa_lr: float = 3e-3
    warmup_frac: float = 0.05
    weight_decay: float = 0.01
    eos_weight: float = 0.1
    noise: float = 4.0
    eval_images: int = 400        # held-out images; each is asked every question

    @classmethod
    def full(cls) -> TrainPlan:
        return cls()

    @classmethod
    def quick(cls) -> TrainPlan:
        return cls(pool_images=256, vqa_images=256, vision_steps=4, vision_batch=32, vqa_steps=6, vqa_batch=16,
                   eval_images=20)


# ----------------------------------------------------------------------------- stages

def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), where autocast pays off."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # private helpers moved: stay in float32
        return False


def _autocast(plan: TrainPlan):
    enabled = cpu_has_bf16() if plan.bf16 is None else plan.bf16
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def _lr_lambda(total: int, warmup_frac: float):
    warm = max(1, int(total * warmup_frac))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return f


def _patch_tokens(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """The vision features LLaVA uses: ``hidden_states[vision_feature_layer]`` without CLS."""
    out = model.model.vision_tower(pixel_values=pixel_values, output_hidden_states=True)
    feats = out.hidden_states[model.config.vision_feature_layer]
    return feats[:, 1:] if model.config.vision_feature_select_strategy == "default" else feats


def _train_vision(model, pool: Pool, norm: Normalizer, plan: TrainPlan, gen: torch.Generator, bar) -> None:
    width = model.config.vision_config.hidden_size
    heads = nn.ModuleList([nn.Sequential(nn.LayerNorm(width), nn.Linear(width, len(v))) for v in ATTRIBUTES.values()])
    vt = model.model.vision_tower
    params = list(vt.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=plan.vision_lr, weight_decay=plan.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(plan.vision_steps, plan.warmup_frac))
    vt.train()
    loss_f = nn.CrossEntropyLoss()
    for _ in range(plan.vision_steps):
        idx = torch.randint(len(pool), (plan.vision_batch,), generator=gen)
        with _autocast(plan):
            tokens = _patch_tokens(model, norm(pool.pixels[idx])).float()
        feats = tokens.mean(1)
        labels = pool.labels[idx]
        loss = sum(w * loss_f(h(feats), labels[:, j]) for j, (w, h) in enumerate(zip(plan.vision_weights, heads)))
        if plan.token_loss > 0:
            n_tok = tokens.shape[1]
            loss = loss + plan.token_loss * sum(
                w * loss_f(h(tokens).flatten(0, 1), labels[:, j].repeat_interleave(n_tok))
                for j, (w, h) in enumerate(zip(plan.vision_weights, heads)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar(loss=loss.item())
    vt.eval()


@torch.no_grad()
def _cache_features(model, pool: Pool, norm: Normalizer, n: int, batch: int = 256) -> torch.Tensor:
    out = []
    for i in range(0, min(n, len(pool)), batch):
        out.append(_patch_tokens(model, norm(pool.pixels[i:min(i + batch, n)])))
    return torch.cat(out)


def _train_vqa(model, pool: Pool, feats: torch.Tensor, prompts: Prompts, plan: TrainPlan,
               rng: np.random.Generator, gen: torch.Generator, bar) -> None:
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": plan.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=plan.vqa_lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(plan.vqa_steps, plan.warmup_frac))
    model.train()
    image_id = model.config.image_token_index
    embed = model.get_input_embeddings()
    n_attr = len(ATTRIBUTES)
    for step in range(plan.vqa_steps):
        idx = torch.randint(feats.shape[0], (plan.vqa_batch,), generator=gen)
        # every question type in every batch, in equal shares
        attr_idx = (np.arange(plan.vqa_batch) + step) % n_attr
        para_idx = rng.integers(0, 1 << 20, size=plan.vqa_batch)
        ids, mask, answers = prompts.batch(attr_idx, para_idx, pool.labels[idx])
        with _autocast(plan):
            image_feats = model.model.multi_modal_projector(feats[idx])
            emb = embed(ids)
            emb = emb.masked_scatter((ids == image_id).unsqueeze(-1), image_feats.to(emb.dtype))
            out = model(inputs_embeds=emb, attention_mask=mask, logits_to_keep=2)
        logits = out.logits.float()
        loss = nn.functional.cross_entropy(logits[:, 0], answers)
        if plan.eos_weight > 0:
            loss = loss + plan.eos_weight * nn.functional.cross_entropy(
                logits[:, 1], torch.full_like(answers, prompts.eos_id))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar(loss=loss.item())
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(True)
    model.eval()


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate_organism(model, processor, seed: int, n_images: int = 400, image_size: int | None = None,
                      batch: int = 100) -> dict[str, float]:
    """Held-out answer accuracy per question type, through the standard processor path.

    Fresh images (``make_shapes`` with a seed no training run uses), each asked every question;
    the answer is the argmax over the whole vocabulary at the last prompt position.
    """
    size = image_size or processor.image_processor.crop_size["height"]
    ps = make_shapes(n_images, "all", seed=heldout_seed(seed), image_size=size, per_image="all")
    tok = processor.tokenizer
    answers = np.asarray(tok.convert_tokens_to_ids(ps.answers))
    pred = []
    model.eval()
    for i in range(0, len(ps), batch):
        inputs = org.organism_inputs(model, processor, ps.images[i:i + batch], ps.prompts[i:i + batch])
        pred.append(model(**inputs, logits_to_keep=1).logits[:, -1].argmax(-1).numpy())
    correct = np.concatenate(pred) == answers
    asked = np.asarray(ps.asked)
    return {a: float(correct[asked == a].mean()) for a in ATTRIBUTES}


def heldout_seed(seed: int) -> int:
    """The probe-set seed of the held-out evaluation for training seed ``seed``."""
    return 1_000_003 + 7919 * int(seed)


# ----------------------------------------------------------------------------- driver

@contextmanager
def _isolated_rng():
    """Seeded training that leaves the caller's global torch RNG as it was.

    Every CPU kernel used here is deterministic for a fixed thread count, so the same seed on the
    same machine gives bit-identical weights (``torch.use_deterministic_algorithms`` would only
    add a slow import of the compiler stack).
    """
    with torch.random.fork_rng(devices=[]):
        yield


class _Bar:
    """Progress per stage (a rich bar on a terminal, log lines elsewhere; or nothing).
    ``stage(name, total)`` returns the step callback the stage calls with its loss after every step."""

    def __init__(self, enabled: bool):
        self.progress = make_progress(enabled)

    def __enter__(self):
        self.progress.__enter__()
        return self

    def stage(self, name: str, total: int):
        task = self.progress.add_task(name, total=total)

        def step(loss: float | None = None) -> None:
            self.progress.update(task, advance=1, description=name if loss is None else f"{name} (loss {loss:.4f})")

        return step

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)


def _check_out_dir(out_dir) -> Path:
    try:
        path = Path(out_dir).expanduser()
    except TypeError:
        raise LogitleakError(f"Output directory {out_dir!r} is not a path; pass a directory name.") from None
    if path.exists() and not path.is_dir():
        raise LogitleakError(f"Output directory {str(path)!r} is an existing file; pass a directory path instead.")
    if path.is_dir() and any(path.iterdir()) and not (path / "config.json").exists() \
            and not (path / "metrics.json").exists():
        raise LogitleakError(
            f"Output directory {str(path)!r} is not empty and holds no organism; pass a new or empty directory.")
    return path


def train_organism(out_dir: str | Path, seed: int = 0, *, steps: int | None = None, quick: bool = False,
                   progress: bool = True, plan: TrainPlan | None = None) -> dict:
    """Train the organism from ``seed``, save it (model + processor + ``metrics.json``) to ``out_dir``.

    ``steps`` overrides the number of VQA steps; ``quick`` is a seconds-long run for tests
    (accuracy not guaranteed). The run writes into a temporary sibling directory and renames
    it into place at the end, so an interrupted run never leaves a complete-looking model.
    Returns the metrics: ``heldout_accuracy`` (attribute -> accuracy), ``train_seconds``,
    ``seed``, ``steps``, ``image_size`` and the training plan.
    """
    org.check_seed(seed)
    seed = int(seed)
    out = _check_out_dir(out_dir)
    plan = plan or (TrainPlan.quick() if quick else TrainPlan.full())
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise LogitleakError(f"Steps {steps!r} is not a positive whole number; pass e.g. 1000.")
        plan = replace(plan, vqa_steps=steps)

    t0 = time.perf_counter()
    with _isolated_rng(), torch_threads(plan.threads), _Bar(progress) as bar:
        prepared = bar.stage("training images", 1)
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        rng = np.random.default_rng([seed, 0x0A])
        model, processor = org.build_organism(seed, plan.image_size)
        pool = Pool(plan.pool_images, seed, plan.image_size, plan.noise)
        norm = Normalizer(processor.image_processor)
        prompts = Prompts(processor, plan.image_size)
        prepared()
        attn = model.config._attn_implementation
        model.set_attn_implementation("eager")  # with bf16 on CPU, far faster than SDPA's backward
        try:
            _train_vision(model, pool, norm, plan, gen, bar.stage("vision tower", plan.vision_steps))
            feats = _cache_features(model, pool, norm, plan.vqa_images)
            _train_vqa(model, pool, feats, prompts, plan, rng, gen, bar.stage("question answering", plan.vqa_steps))
        finally:
            model.set_attn_implementation(attn)
    train_seconds = time.perf_counter() - t0
    with torch_threads(plan.threads):
        accuracy = evaluate_organism(model, processor, seed, n_images=plan.eval_images, image_size=plan.image_size)
    metrics = {
        "heldout_accuracy": accuracy,
        "train_seconds": round(train_seconds, 2),
        "seed": seed,
        "steps": plan.vqa_steps,
        "vision_steps": plan.vision_steps,
        "image_size": plan.image_size,
        "quick": bool(quick),
        "heldout_seed": heldout_seed(seed),
        "heldout_images": plan.eval_images,
        "plan": asdict(plan),
        "version": org.ORGANISM_VERSION,
    }
    metrics = json.loads(json.dumps(metrics))  # exactly what metrics.json will hold (tuples -> lists)
    with quiet_transformers():  # a one-shard save needs no bar of its own
        _save_atomically(model, processor, metrics, out)
    return metrics


def _save_atomically(model, processor, metrics: dict, out: Path) -> None:
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def ensure_organism(seed: int = 0, progress: bool = True) -> Path:
    """The cached organism directory for ``seed``, training it first when missing or incomplete."""
    path = org.organism_dir(seed)
    if not org.is_complete(path):
        train_organism(path, seed, progress=progress)
    return path
