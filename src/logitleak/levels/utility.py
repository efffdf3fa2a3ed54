"""Answer quality of a capture: does the model answer the question it was asked?

- ``first_token_accuracy``: the first generated token is the answer word's first token (white-box:
  the argmax of the logits against the adapter's answer token ids; black-box: the returned first
  token's text is a non-empty prefix of the answer word).
- ``response_accuracy`` (with ``--generate N``): the answer word appears, as a whole word and
  ignoring case, in the generated text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from logitleak.levels.response import has_response


def contains_word(text: str | None, word: str) -> bool:
    """``word`` occurs in ``text`` as a whole word, ignoring case."""
    if not text or not word:
        return False
    return re.search(r"(?<!\w)" + re.escape(word.strip()) + r"(?!\w)", text, flags=re.IGNORECASE) is not None


def _mean(flags: Sequence[bool]) -> float | None:
    return float(sum(flags) / len(flags)) if flags else None


def answer_utility(capture, probeset, adapter=None) -> dict:
    """``{"n", "first_token_accuracy", "response_accuracy"?}`` for a white-box (``adapter``) or a
    black-box capture (its ``meta`` carries the returned first tokens and response texts)."""
    answers = [str(a) for a in probeset.answers]
    out: dict = {"n": len(answers)}
    if adapter is not None:
        from logitleak.levels.features import final_logits

        logits = final_logits(capture)
        if logits is not None:
            want = torch.tensor(adapter.answer_token_ids(answers))
            out["first_token_accuracy"] = float((logits.argmax(-1) == want).float().mean())
        texts = _white_box_texts(capture, adapter)
    else:
        firsts = capture.meta.get("answers") or []
        flags = [bool(t) and bool(t.strip()) and a.lower().startswith(t.strip().lower())
                 for t, a in zip(firsts, answers) if t is not None]
        out["first_token_accuracy"] = _mean(flags)
        texts = capture.meta.get("responses") if has_response(capture) else None
    if texts is not None:
        out["response_accuracy"] = _mean([contains_word(t, a) for t, a in zip(texts, answers) if t is not None])
        out["responses_sample"] = [t for t in texts[:5]]
    return out


def _white_box_texts(capture, adapter) -> list[str] | None:
    from logitleak.capture.generation import decode_responses

    if not has_response(capture):
        return None
    return decode_responses(adapter.tokenizer, capture.read_response_tokens())
