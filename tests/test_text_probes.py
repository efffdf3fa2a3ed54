"""Text probe sets: prompt / messages / system / answer columns, the personas set, bad input, and the
same capture path as images (a tiny random Llama with a chat template)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_models import tiny_model_dir

from logitleak.config import make_config
from logitleak.data.loading import load_probe_set
from logitleak.data.personas import ATTRIBUTES, QUESTIONS, make_personas
from logitleak.data.text import load_text_file
from logitleak.errors import LogitleakError


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_prompt_file_columns_and_groups(tmp_path):
    rows = [{"prompt": f"I am {n}. What is 2+2?", "name_gender": g, "city": c, "q": "math", "answer": "four",
             "user": u} for n, g, c, u in [("Ann", "f", "Oslo", 1), ("Bob", "m", "Rome", 1), ("Cy", "m", "Oslo", 2),
                                            ("Di", "f", "Rome", 3)]]
    f = _write_jsonl(tmp_path / "p.jsonl", rows)
    ps = load_probe_set(make_config({"data": str(f), "task": "q", "group_column": "user", "samples": 10}))
    assert ps.prompts[1] == "I am Bob. What is 2+2?" and ps.images is None and ps.messages is None
    assert list(ps.attributes.columns) == ["name_gender", "city", "q"]
    assert ps.answers == ["four"] * 4
    assert list(ps.groups) == [0, 0, 1, 2]
    assert ps.conversation(0) == [{"role": "user", "content": "I am Ann. What is 2+2?"}]


def test_messages_and_system_columns_csv(tmp_path):
    turns = [{"role": "user", "content": "Hi, I'm Ann."}, {"role": "assistant", "content": "Hello Ann!"},
             {"role": "user", "content": "Capital of Italy?"}]
    df = pd.DataFrame({"messages": [json.dumps(turns)] * 2, "system": ["Be brief.", ""], "gender": ["f", "m"]})
    f = tmp_path / "m.csv"
    df.to_csv(f, index=False)
    ps = load_text_file(f, task="gender")
    assert ps.messages[0][0] == {"role": "system", "content": "Be brief."}
    assert ps.messages[0][1:] == turns and ps.messages[1] == turns  # an empty system cell adds none
    assert ps.prompts == ["Capital of Italy?"] * 2
    # the conversation is part of the content hash, and a subset keeps it
    other = load_text_file(f, task="gender")
    other.messages[1] = turns[-1:]
    assert other.fingerprint() != ps.fingerprint()
    assert ps.subset([1]).messages == [turns]


@pytest.mark.parametrize("cell, fragment", [
    ('{"role": "user", "content": "hi"}', "not a list of chat turns"),
    ("not json", "not valid JSON"),
    ('[{"role": "robot", "content": "hi"}]', "not a chat turn"),
    ('[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]', "ends with a assistant turn"),
])
def test_bad_messages_cell_names_row_and_fix(tmp_path, cell, fragment):
    f = tmp_path / "bad.csv"
    pd.DataFrame({"messages": [json.dumps([{"role": "user", "content": "ok"}]), cell], "a": ["x", "y"]}).to_csv(f, index=False)
    with pytest.raises(LogitleakError) as err:
        load_text_file(f, task="a")
    msg = str(err.value)
    assert f"Row 2 of {f}" in msg and fragment in msg and msg.count("\n") == 0


def test_prompt_file_without_text_column_is_one_sentence(tmp_path):
    f = tmp_path / "labels.jsonl"
    _write_jsonl(f, [{"question": "hi", "a": "x"}, {"question": "yo", "a": "y"}])
    with pytest.raises(LogitleakError, match=r"no 'prompt' or 'messages' column .*add one of them"):
        load_probe_set(make_config({"data": str(f), "task": "a"}))
    r = subprocess.run([sys.executable, "-c", "from logitleak.cli import main; main()", "audit", "--data", str(f), "--task", "a",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True,
                       env={**__import__("os").environ, "PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[1] / "src")})
    assert r.returncode == 2, r.stderr
    assert "no 'prompt' or 'messages' column" in r.stderr and "Traceback" not in r.stderr


def test_personas_balanced_seeded_grouped():
    ps = make_personas(120, task="capital", seed=3)
    again = make_personas(120, task="capital", seed=3)
    assert ps.prompts == again.prompts and ps.fingerprint() == again.fingerprint()
    assert make_personas(120, task="capital", seed=4).prompts != ps.prompts
    assert list(ps.attributes.columns) == ["capital", "gender", "country", "age", "profession"]
    for attr, values in ATTRIBUTES.items():  # balanced over personas: counts differ by at most one persona
        counts = Counter(ps.attributes[attr][ps.groups == g].iloc[0] for g in np.unique(ps.groups))
        assert set(counts) == set(values) and max(counts.values()) - min(counts.values()) <= 1
    # one persona per group, shared attributes, different phrasings; the answer is the task column
    for g in np.unique(ps.groups):
        rows = ps.attributes[ps.groups == g]
        assert (rows.drop(columns="capital").nunique() == 1).all()
        first, second = (ps.prompts[i] for i in np.flatnonzero(ps.groups == g))
        assert first.split(" What")[0] != second.split(" What")[0]
    answers = {a for _, a in QUESTIONS["capital"]}
    assert set(ps.answers) == answers and ps.answers == list(ps.attributes["capital"])
    for p, a, prof in zip(ps.prompts, ps.attributes["capital"], ps.attributes["profession"]):
        assert p.endswith("Answer with one word.") and prof in p
        asked = [w for q, w in QUESTIONS["capital"] if q in p]
        assert asked == [a]


def test_personas_unknown_task_and_cli_data():
    with pytest.raises(LogitleakError, match="not a question family of the personas set; choose one of: capital"):
        make_personas(10, task="shape")
    ps = load_probe_set(make_config({"data": "personas", "task": "color", "samples": 20, "attributes": ["gender"]}))
    assert list(ps.attributes.columns) == ["color", "gender"] and len(ps) == 20


@pytest.fixture(scope="module")
def llama(one_thread):
    from logitleak.models.loading import load_model

    return load_model(tiny_model_dir("llama"), device="cpu")


def test_text_set_goes_through_the_image_path_without_an_image(llama, tmp_path):
    """The same adapter, capture and store: a prompt-only row equals a one-turn conversation, and
    a system turn changes what the model sees."""
    from logitleak.capture.forward import capture
    from logitleak.capture.store import ActivationStore

    ps = make_personas(6, task="color", seed=0)
    plain = capture(llama, ps, batch_size=3, progress=False)
    as_turns = ps.subset(range(6))
    as_turns.messages = [ps.conversation(i) for i in range(6)]
    turns = capture(llama, as_turns, batch_size=3, progress=False)
    torch.testing.assert_close(turns.logits, plain.logits)
    torch.testing.assert_close(turns.hidden, plain.hidden)
    with_system = ps.subset(range(6))
    with_system.messages = [[{"role": "system", "content": "Answer briefly."}] + ps.conversation(i) for i in range(6)]
    text = llama.format_conversation(with_system.messages[0], with_image=False)
    assert "Answer briefly." in text and text.index("Answer briefly.") < text.index(ps.prompts[0])
    sys_cap = capture(llama, with_system, batch_size=3, progress=False)
    assert not torch.allclose(sys_cap.logits, plain.logits)
    stored = ActivationStore(tmp_path / "store").extract(llama, with_system, batch_size=3, progress=False)
    torch.testing.assert_close(torch.from_numpy(stored.logits()), sys_cap.logits)
