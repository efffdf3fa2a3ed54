"""Output-side defences applied to a stored capture's logits, shard by shard, stored per defence.

Layout, beside the activation store::

    root/<capture key>/<defence key>/
        defense.json             the defence, k and seed this directory holds (for people)
        view-00000.safetensors   logprobs (n, k') and ids (n, k') as the API returns them under the
                                 defence; answer (n,) the token the model answers with under it
        checksums.json           each view file's SHA-256, recorded when it was written

The capture key hashes the stored capture's shard checksums, so a recomputed capture gets new
views; the defence key hashes the defence's label, ``k`` and the seed. Each shard's noise is drawn
from its own seed (the run seed and the shard index), so a view file is a pure function of one
logits shard: a killed run resumes at the first view file that is missing or does not match its
checksum and yields the same arrays as an uninterrupted run. Memory holds one logits shard.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from logitleak.defenses.output import ApiView, apply_output_defense
from logitleak.defenses.spec import Defense
from logitleak.integrity import atomic_write

VIEW_VERSION = 1


@dataclass
class DefendedOutput:
    """What an API with ``top_logprobs=k`` returns for every sample under one defence.

    ``view``: ``(N, k')`` log-probabilities and ids (``nan`` / ``-1`` where the defence removed
    them); ``answers``: ``(N,)`` the token the model answers with under the defence's value
    transforms (redaction hides numbers or ids, not the generated token); ``path``: its directory.
    """

    view: ApiView
    answers: torch.Tensor
    path: Path


def capture_key(stored) -> str:
    """A key for one stored capture's exact bytes: its settings and its shards' checksums."""
    shards = [(s["file"], s["sha256"]) for s in stored.manifest["shards"]]
    blob = json.dumps([stored.manifest.get("settings"), shards], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def defense_key(defense: Defense, k: int, seed: int) -> str:
    """A key for one output-side defence applied with ``top_logprobs=k`` and noise seed ``seed``."""
    blob = json.dumps([VIEW_VERSION, defense.label(), int(k), int(seed)])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def shard_seed(seed: int, index: int) -> int:
    """The noise seed of shard ``index``: independent across shards, fixed by the run seed."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index)]).generate_state(1, np.uint64)[0]) >> 1


def defended_output(stored, defense: Defense, *, k: int, seed: int, root: str | Path) -> DefendedOutput:
    """``defense`` applied (with :func:`~logitleak.defenses.output.apply_output_defense`) to the
    logits of ``stored`` (a :class:`~logitleak.capture.store.StoredCapture`), reusing every view file
    already on disk whose checksum matches and writing the missing ones atomically."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from logitleak.integrity import verified

    path = Path(root) / capture_key(stored) / defense_key(defense, k, seed)
    path.mkdir(parents=True, exist_ok=True)
    info = {"defense": defense.label(), "k": int(k), "seed": int(seed), "capture": str(stored.path)}
    if not (path / "defense.json").is_file():
        atomic_write(path / "defense.json", lambda tmp: Path(tmp).write_text(json.dumps(info, indent=1)))
    for stale in path.glob(".*.tmp"):  # a temp file left by a killed run: never a finished view
        stale.unlink(missing_ok=True)
    logprobs, ids, answers = [], [], []
    for shard in stored.manifest["shards"]:
        i = int(shard["index"])
        f = path / f"view-{i:05d}.safetensors"
        if verified(f):
            part = load_file(str(f))
        else:
            with safe_open(str(stored.path / shard["file"]), framework="pt") as fh:
                logits = fh.get_tensor("logits").float()
            s = shard_seed(seed, i)
            view = apply_output_defense(logits, defense, k=k, seed=s)
            answer = apply_output_defense(logits, defense.without_redaction(), k=k, seed=s).top1()
            part = {"logprobs": view.logprobs.float().contiguous(), "ids": view.ids.long().contiguous(),
                    "answer": answer.long().contiguous()}
            atomic_write(f, lambda tmp, part=part: save_file(part, tmp, metadata={"index": str(i)}), checksum=True)
        logprobs.append(part["logprobs"])
        ids.append(part["ids"])
        answers.append(part["answer"])
    return DefendedOutput(ApiView(torch.cat(logprobs), torch.cat(ids)), torch.cat(answers), path)
