"""Prompt lengths against the model's context, checked before any forward pass: too long is an error.

A prompt longer than the model reads fails late and badly inside the forward pass (attention over
200,000 positions asks for tens of gigabytes) or is silently read past the positions the model was
trained on. The count here is of the text the model is shown (its chat template applied) without
special tokens, and with an image placeholder as one token: a lower bound of the real length, so a
prompt it refuses is too long for certain.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from logitleak.errors import LogitleakError

if TYPE_CHECKING:
    from logitleak.data.probeset import ProbeSet
    from logitleak.models.adapter import ModelAdapter

_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def context_length(adapter: ModelAdapter) -> int | None:
    """The most positions the model's text decoder reads (its config's ``max_position_embeddings`` or
    equivalent); ``None`` when the config does not say."""
    for key in _CONTEXT_KEYS:
        value = getattr(adapter.text_config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def prompt_lengths(adapter: ModelAdapter, probeset: ProbeSet) -> np.ndarray:
    """Tokens of every sample's prompt as the model is shown it (a lower bound: see the module docstring)."""
    with_image = probeset.images is not None
    if probeset.messages is not None:
        texts = [adapter.format_conversation(probeset.conversation(i), with_image) for i in range(len(probeset))]
    else:
        rendered = {p: adapter.format_prompt(p, with_image) for p in dict.fromkeys(probeset.prompts)}
        texts = [rendered[p] for p in probeset.prompts]
    unique = list(dict.fromkeys(texts))
    ids = adapter.tokenizer(unique, add_special_tokens=False)["input_ids"]
    count = {t: len(x) for t, x in zip(unique, ids)}
    return np.array([count[t] for t in texts], dtype=np.int64)


def check_prompt_lengths(adapter: ModelAdapter, probeset: ProbeSet, new_tokens: int = 0) -> None:
    """Refuse a probe set with a prompt the model cannot read (with room for ``new_tokens`` generated
    tokens), naming its row, its length and the model's context length."""
    limit = context_length(adapter)
    if limit is None or len(probeset) == 0:
        return
    lengths = prompt_lengths(adapter, probeset)
    over = np.flatnonzero(lengths + new_tokens > limit)
    if over.size == 0:
        return
    i = int(over[0])
    more = f" ({over.size - 1} more rows are too long as well)" if over.size > 1 else ""
    room = f" and {new_tokens} generated tokens need room" if new_tokens else ""
    raise LogitleakError(f"{probeset.row_name(i)}: the prompt is {int(lengths[i]):,} tokens{room}, and {adapter.name!r} "
                         f"reads at most {limit:,} (its context length){more}; shorten the prompt or remove the row.")
