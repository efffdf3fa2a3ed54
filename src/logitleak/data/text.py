"""Text probe sets from a label file: a ``prompt`` or ``messages`` column, attributes, answers, groups.

One row per sample (CSV, JSONL/JSON records or parquet):

- ``prompt``: the user's message, or ``messages``: the conversation as chat turns
  (``[{"role": "system"|"user"|"assistant", "content": "..."}, ...]``, a JSON string in CSV,
  ending with the user turn whose reply is read); a file with both columns is refused;
- ``system`` (optional): a system prompt put in front of the conversation (refused on a row whose
  ``messages`` already hold a system turn);
- ``answer`` (optional): the expected answer word (default: the task attribute's value);
- a group column (optional, ``--group-column``): samples sharing it never straddle a split;
- every other column is an attribute; ``--task`` names the one the question asks about.

Labels are typed by the one rule of :mod:`logitleak.data.labelfile`; a blank or missing label, prompt
or answer is an error naming the file, column and row when the file loads. Rows are de-duplicated
as image rows are (:mod:`logitleak.data.duplicates`), by the conversation the model is shown (system
and every turn): an exact repeat with the same labels is dropped with a note, the same conversation
with other labels is an error naming both rows, and conversations equal up to case and spacing are
kept on one side of every split.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from logitleak.config import unique_keys
from logitleak.data.duplicates import resolve_duplicates
from logitleak.data.labelfile import check_filled, label_strings, read_records
from logitleak.data.probeset import ProbeSet
from logitleak.errors import LogitleakError

TEXT_COLUMNS = ("prompt", "messages")
SYSTEM_COLUMN = "system"
ANSWER_COLUMN = "answer"
ROLES = ("system", "user", "assistant")
SHARED_TEXT = ("{n} row(s) of {source} hold a conversation another row holds too, up to case and spacing; such rows "
               "are kept on one side of every split.")


def has_text_column(columns: Sequence[str]) -> bool:
    """Whether a label file's columns make it a text probe set."""
    return any(c in columns for c in TEXT_COLUMNS)


def parse_messages(cell, where: str) -> list[dict]:
    """One ``messages`` cell -> a validated list of ``{"role", "content"}`` turns."""
    fix = ('write it as a JSON list of turns such as [{"role": "user", "content": "Hello"}], '
           "ending with a user turn")
    value = cell
    if isinstance(value, str):
        try:
            value = json.loads(value, object_pairs_hook=lambda pairs: unique_keys(pairs, f"{where}: the messages cell"))
        except (ValueError, RecursionError):
            raise LogitleakError(f"{where}: the messages cell is not valid JSON; {fix}.") from None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, list) or not value:
        raise LogitleakError(f"{where}: the messages cell is not a list of chat turns; {fix}.")
    turns = []
    for turn in value:
        if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            raise LogitleakError(f"{where}: the messages cell holds {str(turn)[:60]!r}, which is not a chat turn with a "
                                 f"role ({', '.join(ROLES)}) and a text content; {fix}.")
        turns.append({"role": turn["role"], "content": turn["content"]})
    if turns[-1]["role"] != "user":
        raise LogitleakError(f"{where}: the conversation ends with a {turns[-1]['role']} turn; the audit reads the "
                             "reply to the last user turn, so end it with a user turn.")
    return turns


def _conversation(row: dict, text_col: str, has_system: bool, where: str) -> list[dict]:
    """One row's conversation: its turns, with the ``system`` cell (if any) as the first turn."""
    if text_col == "messages":
        turns = parse_messages(row["messages"], where)
    elif isinstance(row["prompt"], str):
        turns = [{"role": "user", "content": row["prompt"]}]
    else:
        raise LogitleakError(f"{where}: the prompt cell holds {json.dumps(row['prompt'])[:40]}, not text; write the "
                             "prompt as a string.")
    system = row.get(SYSTEM_COLUMN) if has_system else None
    if isinstance(system, str) and system.strip():
        if any(t["role"] == "system" for t in turns):
            raise LogitleakError(f"{where}: the system cell and a system turn in the messages cell both give a system "
                                 "prompt; keep one of them.")
        turns = [{"role": "system", "content": system}] + turns
    return turns


def _rendered(turns: list[dict]) -> str:
    return json.dumps([[t["role"], t["content"]] for t in turns], ensure_ascii=False)


def _normalised(turns: list[dict]) -> str:
    return json.dumps([[t["role"], " ".join(t["content"].split()).casefold()] for t in turns], ensure_ascii=False)


def load_text_file(path: str | Path, *, task: str, group_column: str | None = None,
                   attributes: Sequence[str] | None = None, samples: int | None = None, seed: int = 0) -> ProbeSet:
    """A text probe set (no images) from a label file; see the module docstring for its columns."""
    p = Path(path)
    table = read_records(p)
    cols = [str(c) for c in table.columns]
    if not has_text_column(cols):
        raise LogitleakError(f"Prompt file {p} has no 'prompt' or 'messages' column (columns: {', '.join(cols)}); "
                             "add a 'prompt' column with each user message, or a 'messages' column of chat turns.")
    if all(c in cols for c in TEXT_COLUMNS):
        raise LogitleakError(f"Prompt file {p} has both a 'prompt' and a 'messages' column; keep one of them (a "
                             "one-turn conversation is a prompt).")
    text_col = "messages" if "messages" in cols else "prompt"
    if group_column is not None and group_column not in cols:
        raise LogitleakError(f"Group column {group_column!r} is not in {p}; columns are: {', '.join(cols)}.")
    reserved = set(TEXT_COLUMNS) | {SYSTEM_COLUMN, ANSWER_COLUMN, group_column}
    attr_cols = list(attributes) if attributes else [c for c in cols if c not in reserved]
    for col in list(dict.fromkeys(attr_cols + [task])):
        if col not in cols or col in reserved:
            raise LogitleakError(f"Attribute {col!r} is not an attribute column of {p}; attribute columns are: "
                                 f"{', '.join(c for c in cols if c not in reserved) or '(none)'}.")
    if task not in attr_cols:
        attr_cols = [task] + attr_cols
    if len(table) == 0:
        raise LogitleakError(f"Prompt file {p} has no rows; add one row per prompt.")
    answer = [ANSWER_COLUMN] if ANSWER_COLUMN in cols else []
    label_cols = attr_cols + answer + ([group_column] if group_column else [])
    typed = label_strings(table, label_cols, str(p))
    check_filled(table, [text_col], str(p))
    check_filled(typed, label_cols, str(p))
    has_system = SYSTEM_COLUMN in cols
    records = table.to_dict("records")
    conversations = [_conversation(r, text_col, has_system, f"Row {i + 1} of {p}") for i, r in enumerate(records)]
    dedup = resolve_duplicates([_rendered(c) for c in conversations], [_normalised(c) for c in conversations],
                               typed[attr_cols + answer], None if group_column is None else list(typed[group_column]),
                               str(p), shared_note=SHARED_TEXT)
    index, groups = dedup.sample(samples, seed)
    chosen = [conversations[i] for i in index]
    prompts = [next(t["content"] for t in reversed(c) if t["role"] == "user") for c in chosen]
    # Plain prompts without a system turn stay prompts: exactly the path an image probe set takes.
    plain = all(len(c) == 1 for c in chosen)
    meta = {"source": str(p), "text_column": text_col, "rows": [int(i) + 1 for i in index]}
    if dedup.notes:
        meta["notes"] = dedup.notes
    return ProbeSet(name=str(p), prompts=prompts, attributes=typed[attr_cols].iloc[index].reset_index(drop=True),
                    asked=[task] * len(index), groups=np.asarray(groups), images=None,
                    messages=None if plain else chosen,
                    answer_texts=typed[ANSWER_COLUMN].iloc[index].tolist() if answer else None, meta=meta)
