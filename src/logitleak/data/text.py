"""Text probe sets from a label file: a ``prompt`` or ``messages`` column, attributes, answers, groups.

One row per sample (CSV, JSONL/JSON records or parquet):

- ``prompt``: the user's message, or ``messages``: the conversation as chat turns
  (``[{"role": "system"|"user"|"assistant", "content": "..."}, ...]``, a JSON string in CSV,
  ending with the user turn whose reply is read);
- ``system`` (optional): a system prompt put in front of the conversation;
- ``answer`` (optional): the expected answer word (default: the task attribute's value);
- a group column (optional, ``--group-column``): samples sharing it never straddle a split;
- every other column is an attribute; ``--task`` names the one the question asks about.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from logitleak.data.probeset import ProbeSet
from logitleak.errors import LogitleakError

TEXT_COLUMNS = ("prompt", "messages")
SYSTEM_COLUMN = "system"
ANSWER_COLUMN = "answer"
ROLES = ("system", "user", "assistant")
_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")


def read_table(path: str | Path) -> pd.DataFrame:
    """The label file as a table; cells stay as parsed (a ``messages`` cell may be a list)."""
    p = Path(path)
    if not p.is_file():
        raise LogitleakError(f"Prompt file {p} does not exist; pass an existing CSV, JSONL or parquet file.")
    suffix = p.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(p, dtype=str, keep_default_na=False)
        if suffix in (".jsonl", ".json"):
            return pd.read_json(p, lines=suffix == ".jsonl", dtype=False)
        if suffix == ".parquet":
            return pd.read_parquet(p)
    except ValueError as err:
        raise LogitleakError(f"Prompt file {p} cannot be read as {suffix[1:].upper()} ({str(err).splitlines()[0]}); "
                             "fix the file (one record per line for JSONL).") from None
    raise LogitleakError(f"Prompt file {p} has an unsupported extension {suffix!r}; use one of {', '.join(_SUFFIXES)}.")


def has_text_column(columns: Sequence[str]) -> bool:
    return any(c in columns for c in TEXT_COLUMNS)


def parse_messages(cell, where: str) -> list[dict]:
    """One ``messages`` cell -> a validated list of ``{"role", "content"}`` turns."""
    fix = ('write it as a JSON list of turns such as [{"role": "user", "content": "Hello"}], '
           "ending with a user turn")
    value = cell
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
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


def load_text_file(path: str | Path, *, task: str, group_column: str | None = None,
                   attributes: Sequence[str] | None = None, samples: int | None = None, seed: int = 0) -> ProbeSet:
    """A text probe set (no images) from a label file; see the module docstring for its columns."""
    p = Path(path)
    table = read_table(p)
    cols = [str(c) for c in table.columns]
    if not has_text_column(cols):
        raise LogitleakError(f"Prompt file {p} has no 'prompt' or 'messages' column (columns: {', '.join(cols)}); "
                             "add a 'prompt' column with each user message, or a 'messages' column of chat turns.")
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
    index = np.arange(len(table))
    if samples is not None and samples < len(table):
        index = np.sort(np.random.default_rng(seed).choice(len(table), size=samples, replace=False))
    rows = table.iloc[index].reset_index(drop=True)
    conversations: list[list[dict]] = []
    for j, i in enumerate(index):
        where = f"Row {int(i) + 1} of {p}"
        if text_col == "messages":
            turns = parse_messages(rows.at[j, "messages"], where)
        else:
            prompt = rows.at[j, "prompt"]
            if not isinstance(prompt, str) or not prompt.strip():
                raise LogitleakError(f"{where}: the prompt cell is empty; give every row a prompt.")
            turns = [{"role": "user", "content": prompt}]
        system = rows.at[j, SYSTEM_COLUMN] if SYSTEM_COLUMN in cols else None
        if isinstance(system, str) and system.strip():
            turns = [{"role": "system", "content": system}] + [t for t in turns if t["role"] != "system"]
        conversations.append(turns)
    prompts = [next(t["content"] for t in reversed(c) if t["role"] == "user") for c in conversations]
    # Plain prompts without a system turn stay prompts: exactly the path an image probe set takes.
    plain = all(len(c) == 1 for c in conversations)
    groups = pd.factorize(rows[group_column].astype(str))[0] if group_column else index.copy()
    answers = rows[ANSWER_COLUMN].astype(str).tolist() if ANSWER_COLUMN in cols else None
    return ProbeSet(name=str(p), prompts=prompts, attributes=rows[attr_cols].astype(str), asked=[task] * len(rows),
                    groups=np.asarray(groups), images=None, messages=None if plain else conversations,
                    answer_texts=answers, meta={"source": str(p), "text_column": text_col})
