"""Fine-tuning one bottleneck: the resumable training loop (seeded batches, atomic checkpoints, progress).

:func:`train_bottleneck` fine-tunes a copy of a model (every weight, or LoRA adapters through
``peft``) on a training split under the objective of :mod:`logitleak.defenses.bottleneck`, and
saves the result with :func:`logitleak.defenses.finetuned.save_finetuned`. The run lives in a
directory keyed by everything that decides its result (base model, training samples, settings,
lambda, seed); a checkpoint (trainable weights, adversaries, both optimisers' states, the step)
is written atomically, with its checksum, every ``checkpoint_every`` steps, so a killed run
resumes at its last checkpoint and ends with the same weights as an uninterrupted one. Batch
``s`` is drawn from ``(seed, s)`` alone. Memory holds the model copy, its optimiser state and
one batch.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from logitleak.data.probeset import ProbeSet
from logitleak.defenses.bottleneck import (
    FULL_TUNE_MAX_PARAMS,
    OUTPUT,
    AdversaryBank,
    BottleneckSettings,
    check_place,
    encode_labels,
    make_target,
    parse_place,
)
from logitleak.defenses.bottleneck_checkpoint import load_checkpoint, save_checkpoint, trainable
from logitleak.defenses.bottleneck_features import (
    Batches,
    all_features,
    answer_mean_targets,
    fit_adversaries,
    forward_features,
)
from logitleak.defenses.finetuned import is_finished, save_finetuned
from logitleak.errors import LogitleakError
from logitleak.models.devices import torch_threads
from logitleak.progress import make_progress
from logitleak.results import atomic_write

TRAIN_VERSION = 1
CHECKPOINT = "checkpoint.safetensors"
ALL_IDS_MAX_VOCAB = 4096
"""Vocabularies up to this size: the output adversaries read every token's log-probability; larger
ones: the tokens seen in the base model's top-k on the training split (what an API can return)."""


def run_key(base_fingerprint: str, train_set: ProbeSet, settings: BottleneckSettings, lam: float, seed: int,
            task: str) -> str:
    """The directory name of one bottleneck run: a hash of everything that decides its weights."""
    blob = json.dumps([TRAIN_VERSION, base_fingerprint, train_set.fingerprint(), asdict(settings), float(lam),
                       int(seed), task], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def tune_mode(settings: BottleneckSettings, model: nn.Module) -> str:
    """``full`` or ``lora`` for this model (``auto``: full up to :data:`FULL_TUNE_MAX_PARAMS` weights)."""
    if settings.tune != "auto":
        return settings.tune
    return "full" if sum(p.numel() for p in model.parameters()) <= FULL_TUNE_MAX_PARAMS else "lora"


def _lora_copy(model: nn.Module, rank: int, seed: int):
    """A LoRA-wrapped copy (``peft``): adapters on the decoder's linear maps, only they train."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise LogitleakError("LoRA fine-tuning needs the peft package; install logitleak with its dependencies "
                             "(pip install -e .) or pass --bottleneck-tune full.") from None
    targets = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)
                      and any(t in name for t in ("self_attn", "mlp")) and "vision" not in name})
    if not targets:
        raise LogitleakError("LoRA found no attention or MLP linear layer in the decoder; pass --bottleneck-tune full.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        wrapped = get_peft_model(copy.deepcopy(model), LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                                 target_modules=targets, bias="none"))
    return wrapped


def train_bottleneck(adapter, train_set: ProbeSet, *, lam: float, settings: BottleneckSettings, task: str,
                     root: str | Path, seed: int = 0, progress: bool = True, threads: int | None = None,
                     response: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                     on_step: Callable[[int], None] | None = None) -> Path:
    """Fine-tune a copy of ``adapter``'s model into a bottleneck hiding ``settings.protect`` (see the
    module docstring) and return the saved model's directory (reused when already finished).

    ``response``: for a bottleneck over the whole response, the base model's greedy response on
    ``train_set`` as ``(tokens (N, G) with its end token and -1 after, shown (N, G) the positions
    an API returns, topk_ids (N, G, K))``. ``on_step(step)`` is called after each finished step."""
    from logitleak.models.adapter import ModelAdapter

    if settings.protect is None:
        raise LogitleakError("train_bottleneck needs the protected attributes resolved (settings.protect).")
    layer = parse_place(settings.at)
    guarded = check_place(layer, adapter.n_layers)
    key = run_key(adapter.fingerprint(), train_set, settings, lam, seed, task)
    run_dir = Path(root) / key
    model_dir = run_dir / "model"
    if is_finished(model_dir):
        return model_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    targets_first = torch.tensor(adapter.answer_token_ids(train_set.answers)) if response is None else None
    if targets_first is not None and settings.task_loss == "answer_mean":
        if adapter.vocab_size > ALL_IDS_MAX_VOCAB:
            raise LogitleakError(f"The answer_mean task loss keeps a distribution over the whole vocabulary per sample; "
                                 f"with {adapter.vocab_size} tokens use task_loss='answer'.")
        with torch_threads(threads or 1):
            targets_first = answer_mean_targets(adapter, train_set, targets_first, settings.batch_size)
    codes = {a: encode_labels(train_set.labels(a)) for a in settings.protect}
    targets = [make_target(a, c, len(cls)) for a, (cls, c) in codes.items()]
    labels = {a: c for a, (_, c) in codes.items()}
    candidates = None
    if adapter.vocab_size > ALL_IDS_MAX_VOCAB:
        seen = response[2] if response is not None else None
        if seen is None:
            raise LogitleakError("A bottleneck at the output of a large vocabulary needs the base model's top-k on the "
                                 "training split; pass response=... or use --bottleneck-at layer:L.")
        candidates = torch.unique(seen[seen >= 0])
    if response is not None:
        labels["__shown__"] = response[1].bool()
    with torch.random.fork_rng(devices=[]), torch_threads(threads or 1):
        torch.manual_seed(int(seed))
        mode = tune_mode(settings, adapter.model)
        if mode == "lora":
            wrapped = _lora_copy(adapter.model, settings.lora_rank, seed)
            model = wrapped.base_model.model
        else:
            wrapped, model = None, copy.deepcopy(adapter.model).float()
            for p in model.parameters():
                p.requires_grad_(True)
        work = ModelAdapter.from_model(model, tokenizer=adapter.tokenizer, processor=adapter.processor,
                                       name=f"{adapter.name} (bottleneck)")
        batches = Batches(work, train_set, targets_first if response is None else response[0], labels,
                           None if response is None else (response[0], response[1]))
        width = adapter.d_model
        n_out = adapter.vocab_size if candidates is None else int(candidates.numel())
        widths = {OUTPUT: n_out, **{f"layer:{g}": width for g in guarded}}
        bank = AdversaryBank(widths, targets, settings.adversaries, settings.mlp_hidden)
        params = list(trainable(model).values())
        opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
        adv_opt = _adversary_optimizer(bank, settings)
        ckpt = run_dir / CHECKPOINT
        start, buffer = load_checkpoint(ckpt, model, bank, opt, adv_opt)
        history: list[dict] = _read_history(run_dir, start)
        model.train()
        bank.train()
        with make_progress(progress) as bar:
            task_id = bar.add_task(f"bottleneck λ={lam:g}", total=settings.steps, completed=start)
            for step in range(start, settings.steps):
                if buffer is None or step % settings.refresh == 0:
                    # fresh adversaries, fitted to the whole split as the model is now
                    buffer = all_features(work, batches, guarded, candidates, settings.batch_size)
                    bank.redraw(seed * 1_000_003 + step)
                    adv_opt = _adversary_optimizer(bank, settings)
                    fit_adversaries(bank, adv_opt, buffer, labels, settings, settings.warmup, [seed, step, 1])
                for g in opt.param_groups:  # linear warm-up of the model's learning rate
                    g["lr"] = settings.lr * min(1.0, (step + 1) / max(1, settings.steps // 10))
                idx = batches.indices(seed, step, settings.batch_size)
                task_loss, feats = forward_features(work, batches.inputs(idx), idx, batches, guarded, candidates)
                for k, v in feats.items():  # the adversaries follow the model: refit on the refreshed rows
                    buffer[k][torch.from_numpy(idx)] = v.detach().float()
                fit_adversaries(bank, adv_opt, buffer, labels, settings, settings.adversary_steps, [seed, step, 2])
                adv_loss, readings = bank.loss(feats, {a: labels[a][idx] for a in settings.protect}, lam, settings.objective)
                opt.zero_grad(set_to_none=True)
                adv_opt.zero_grad(set_to_none=True)
                (task_loss + adv_loss).backward()
                opt.step()
                adv_opt.step()
                history.append({"step": step + 1, "task_loss": round(float(task_loss.detach()), 5),
                                **{f"reading_bits.{a}": round(v, 5) for a, v in readings.items()}})
                worst = max(readings.values()) if readings else 0.0
                bar.update(task_id, advance=1, description=f"bottleneck λ={lam:g} (task {float(task_loss.detach()):.3f}, "
                                                           f"adversary {worst:.2f} bits)")
                if (step + 1) % settings.checkpoint_every == 0 or step + 1 == settings.steps:
                    save_checkpoint(ckpt, step + 1, model, bank, opt, adv_opt, buffer)
                    _write_history(run_dir, history)
                if on_step is not None:
                    on_step(step + 1)
        model.eval()
        info = {"lambda": float(lam), "protect": list(settings.protect), "at": settings.at, "tune": mode,
                "task": task, "seed": int(seed), "settings": asdict(settings), "base_model": adapter.name,
                "base_fingerprint": adapter.fingerprint(), "train_samples": len(train_set),
                "train_fingerprint": train_set.fingerprint(), "guarded_layers": guarded,
                "history_tail": history[-5:], "version": TRAIN_VERSION}
        save_finetuned(wrapped if wrapped is not None else model, adapter, model_dir, info)
    return model_dir


def _adversary_optimizer(bank: AdversaryBank, settings: BottleneckSettings) -> torch.optim.Optimizer:
    return torch.optim.Adam(bank.parameters(), lr=settings.adversary_lr, weight_decay=1e-4)


def _read_history(run_dir: Path, upto: int) -> list[dict]:
    path = run_dir / "history.json"
    if upto == 0 or not path.is_file():
        return []
    try:
        return [h for h in json.loads(path.read_text()) if int(h["step"]) <= upto]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _write_history(run_dir: Path, history: list[dict]) -> None:
    body = json.dumps(history)
    atomic_write(run_dir / "history.json", lambda tmp: Path(tmp).write_text(body))
