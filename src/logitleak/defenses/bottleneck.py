"""The trained privacy bottleneck's objective: task loss + lambda x what adversaries read (gradient reversal).

A bottleneck is a fine-tuned copy of the model under which the *protected* attributes cannot be
read at a chosen place — the output (the log-probabilities an API hands out) or the residual
stream at the read position from layer ``L`` on — while the task's answer stays right. The
objective per batch is

    task cross-entropy  +  lambda x sum over protected attributes of the adversaries' reading,

where an adversary (a linear or a one-hidden-layer MLP probe per place and attribute) reads
``H(Y) - CE`` bits per sample (its V-information on the batch, clipped at 0) and the model is
pushed down that reading through a gradient-reversal layer: one backward pass trains the
adversaries to read (they minimise their cross-entropy) and the model to hide (it receives the
reversed gradient, scaled by lambda). Adversaries follow the model as it changes (they train every
step) and are re-drawn from scratch every ``refresh`` steps, so the model cannot hide from one
stale probe; the honest measurement is still the audit's fresh probes afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from logitleak.errors import LogitleakError

ADVERSARY_FAMILIES = ("linear", "mlp")
TUNE_MODES = ("auto", "full", "lora")
FULL_TUNE_MAX_PARAMS = 50_000_000
"""``tune='auto'`` fine-tunes every weight of a model up to this size, and LoRA adapters beyond it."""
OUTPUT = "output"
OBJECTIVES = ("confusion", "reversal")
TASK_LOSSES = ("answer_mean", "answer")


@dataclass(frozen=True)
class BottleneckSettings:
    """How a bottleneck is trained (one setting for every lambda of a grid).

    ``protect``: the attributes to hide (``None``: every task-irrelevant class attribute); ``at``:
    ``"output"`` or ``"layer:L"`` (the residual stream at the read position at every layer from
    ``L`` to the last, and the output); ``tune``: ``"full"`` (every weight), ``"lora"`` (LoRA
    adapters only, through ``peft``) or ``"auto"`` (full up to :data:`FULL_TUNE_MAX_PARAMS`).
    """

    protect: tuple[str, ...] | None = None
    at: str = OUTPUT
    tune: str = "auto"
    steps: int = 600
    batch_size: int = 32
    lr: float = 5e-4
    adversary_lr: float = 3e-3
    adversaries: tuple[str, ...] = ADVERSARY_FAMILIES
    mlp_hidden: int = 64
    refresh: int = 100
    """Steps between fresh adversaries (drawn anew, then fitted alone for ``warmup`` steps on every
    training sample's features under the model as it is then)."""
    warmup: int = 200
    adversary_steps: int = 4
    """Adversary updates per model step, on the feature buffer (the batch's rows just refreshed)."""
    adversary_batch: int = 256
    task_loss: str = "answer_mean"
    """``"answer"``: cross-entropy of the answer's first token; ``"answer_mean"``: cross-entropy to the
    base model's output distribution averaged over the training samples with the same answer (keeps
    the answer and its confidence, credits nothing else; vocabularies up to 4,096 tokens). A
    response is always trained on the base model's own response tokens."""
    objective: str = "confusion"
    """What the model is trained against: see :meth:`AdversaryBank.loss`."""
    lora_rank: int = 8
    checkpoint_every: int = 50
    generate: int | None = None
    """Response tokens the task and the adversaries read (teacher-forced on the base model's own
    greedy response); ``None``: the first answer token only."""

    def __post_init__(self) -> None:
        parse_place(self.at)
        if self.tune not in TUNE_MODES:
            raise LogitleakError(f"--bottleneck-tune {self.tune!r} is not a way to fine-tune; use one of "
                                 f"{', '.join(TUNE_MODES)}.")
        if self.task_loss not in TASK_LOSSES:
            raise LogitleakError(f"Bottleneck task loss {self.task_loss!r} is not known; use one of {', '.join(TASK_LOSSES)}.")
        if self.objective not in OBJECTIVES:
            raise LogitleakError(f"Bottleneck objective {self.objective!r} is not known; use one of "
                                 f"{', '.join(OBJECTIVES)}.")
        bad = [f for f in self.adversaries if f not in ADVERSARY_FAMILIES]
        if bad or not self.adversaries:
            raise LogitleakError(f"Adversary family {bad[0] if bad else '(none)'!r} is not known; use linear and/or mlp.")
        for name in ("steps", "batch_size", "refresh", "lora_rank", "checkpoint_every", "mlp_hidden", "adversary_batch"):
            if int(getattr(self, name)) < 1:
                raise LogitleakError(f"Bottleneck setting {name}={getattr(self, name)} must be at least 1.")

    def with_protect(self, protect: Sequence[str]) -> BottleneckSettings:
        return replace(self, protect=tuple(protect))


def parse_place(text: str) -> int | None:
    """``"output"`` -> ``None``; ``"layer:L"`` -> ``L`` (a block output, ``L >= 1``)."""
    t = str(text).strip()
    if t == OUTPUT:
        return None
    name, _, value = t.partition(":")
    if name == "layer" and value.strip().isdigit() and int(value) >= 1:
        return int(value)
    raise LogitleakError(f"--bottleneck-at {text!r} is not a place; write 'output' or 'layer:L' with L >= 1 "
                         "(the residual stream from block output L on).")


def check_place(layer: int | None, n_layers: int) -> list[int]:
    """The decoder layers a bottleneck at ``layer`` guards (``None``: none, the output only)."""
    if layer is None:
        return []
    if layer > n_layers:
        raise LogitleakError(f"--bottleneck-at layer:{layer} does not exist: block outputs are layers 1..{n_layers}; "
                             "pick one of those or 'output'.")
    return list(range(layer, n_layers + 1))


def resolve_protect(protect: Sequence[str] | None, categorical: Sequence[str], task: str) -> list[str]:
    """The attributes a bottleneck hides: ``protect`` checked against the probe set's class
    attributes (never the task), or every task-irrelevant class attribute."""
    irrelevant = [a for a in categorical if a != task]
    if protect is None:
        if not irrelevant:
            raise LogitleakError(f"A bottleneck hides task-irrelevant attributes and the probe set has none besides the "
                                 f"task {task!r}; add attributes or drop bottleneck from --defenses.")
        return irrelevant
    out = list(dict.fromkeys(a.strip() for a in protect if a.strip()))
    for a in out:
        if a == task:
            raise LogitleakError(f"--protect names the task attribute {task!r}; the bottleneck keeps the task readable, "
                                 "so protect only other attributes.")
        if a not in categorical:
            raise LogitleakError(f"--protect names {a!r}, which is not a class attribute of the probe set; choose from "
                                 f"{', '.join(irrelevant)}.")
    if not out:
        raise LogitleakError("--protect names no attribute; give e.g. --protect shape,size.")
    return out


def encode_labels(values: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """``(classes, codes)``: the sorted class names and each sample's class index."""
    classes, codes = np.unique(np.asarray(values).astype(str), return_inverse=True)
    return classes, torch.from_numpy(codes.astype(np.int64))


def entropy_nats(codes: torch.Tensor, n_classes: int) -> float:
    """``H(Y)`` of the class frequencies in ``codes``, in nats (what a reading is measured against)."""
    p = torch.bincount(codes, minlength=n_classes).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


class _Reverse(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``-scale`` (read when backward runs)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.scale = scale  # kept as is (not saved for backward): it is set after this forward on purpose
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.scale.to(grad.dtype) * grad, None


def grad_reverse(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Gradient reversal: ``x`` unchanged forward, ``-scale * grad`` backward (``scale`` a 0-d tensor
    that may be set after the forward pass, before backward)."""
    return _Reverse.apply(x, scale)


class Adversary(nn.Module):
    """One probe that tries to read one attribute at one place: standardised input (running
    statistics, no learned scale), then a linear map or a ReLU MLP to the class logits."""

    def __init__(self, d_in: int, n_classes: int, family: str, hidden: int = 64) -> None:
        super().__init__()
        self.family = family
        self.norm = nn.BatchNorm1d(d_in, affine=False)
        self.net = (nn.Linear(d_in, n_classes) if family == "linear"
                    else nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, n_classes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.norm(x.float()))


@dataclass(frozen=True)
class Target:
    """One protected attribute: its classes, their frequencies and ``H(Y)`` on the training split (nats)."""

    name: str
    n_classes: int
    entropy: float
    prior: tuple[float, ...] = ()


def make_target(name: str, codes: torch.Tensor, n_classes: int) -> Target:
    """The :class:`Target` of one attribute from its class codes on the training split."""
    p = torch.bincount(codes, minlength=n_classes).double()
    p = p / p.sum()
    return Target(name, n_classes, entropy_nats(codes, n_classes), tuple(float(x) for x in p))


class AdversaryBank(nn.Module):
    """Every adversary of one bottleneck: one per (place, protected attribute, family)."""

    def __init__(self, widths: Mapping[str, int], targets: Sequence[Target], families: Sequence[str],
                 hidden: int = 64) -> None:
        super().__init__()
        self.widths = dict(widths)
        self.targets = list(targets)
        self.families = tuple(families)
        self.hidden = hidden
        self.keys = [(place, t.name, f) for place in self.widths for t in self.targets for f in self.families]
        self.heads = nn.ModuleDict({self._name(k): Adversary(self.widths[k[0]], self._target(k[1]).n_classes, k[2], hidden)
                                    for k in self.keys})

    @staticmethod
    def _name(key: tuple[str, str, str]) -> str:
        return "|".join(key).replace(".", "_")

    def _target(self, name: str) -> Target:
        return next(t for t in self.targets if t.name == name)

    def redraw(self, seed: int) -> None:
        """Fresh adversaries (weights drawn from ``seed``): nothing learnt about the model so far survives."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            for module in self.heads.values():
                for m in module.modules():
                    if isinstance(m, (nn.Linear, nn.BatchNorm1d)):
                        m.reset_parameters()
                        if isinstance(m, nn.BatchNorm1d):
                            m.reset_running_stats()

    def loss(self, features: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor],
             lam: float, objective: str = "confusion") -> tuple[torch.Tensor, dict[str, float]]:
        """One loss whose backward trains the adversaries to read (their summed cross-entropy) and
        the model to hide, with weight ``lam / (places x families)`` per adversary:

        - ``"reversal"``: the adversary's input passes through a gradient reversal, so the model
          climbs the adversary's cross-entropy while it reads above zero (``CE < H(Y)``);
        - ``"confusion"``: the model is pulled towards inputs on which the (frozen) adversary predicts
          the class prior, ``KL(prior || p_adv)``, which is zero exactly when it reads nothing (a
          confidently wrong adversary, which still carries information, is penalised too).

        Returns the loss and, per attribute, the strongest adversary's reading on this batch
        (``H(Y) - CE`` in bits per sample)."""
        if objective not in OBJECTIVES:
            raise LogitleakError(f"Bottleneck objective {objective!r} is not known; use one of {', '.join(OBJECTIVES)}.")
        total = torch.zeros(())
        readings: dict[str, float] = {t.name: 0.0 for t in self.targets}
        share = float(lam) / max(1, len(self.widths) * len(self.families))
        for key in self.keys:
            place, attr, _ = key
            head, target = self.heads[self._name(key)], self._target(attr)
            x = features[place]
            if lam > 0 and objective == "reversal":
                scale = torch.zeros(())
                ce = nn.functional.cross_entropy(head(grad_reverse(x, scale)), labels[attr])
            else:
                ce = nn.functional.cross_entropy(head(x.detach()), labels[attr])
            reading = target.entropy - float(ce.detach())
            if lam > 0 and objective == "reversal" and reading > 0:
                scale.fill_(share)
            if lam > 0 and objective == "confusion":
                frozen = {n: t.detach() for n, t in head.named_parameters()}
                logp = torch.log_softmax(torch.func.functional_call(head, frozen, (x,)), dim=-1)
                prior = torch.tensor(target.prior, dtype=logp.dtype)
                total = total + share * (-(prior * logp).sum(-1).mean() - target.entropy)
            readings[attr] = max(readings[attr], reading / math.log(2))
            total = total + ce
        return total, readings
