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


# ----------------------------------------------------------------------------- duplicates, typing, blank cells


def _random_label_rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    words = ["apple", "river", "stone", "cloud", "lamp", "tiger", "bread", "glass", "north", "piano"]
    return [{"prompt": f"Tell me about the {words[i % 10]} called {words[(i // 10) % 10]} number {i}.",
             "z": ["a", "b"][int(rng.integers(2))]} for i in range(n)]


def _audit_text(path, out, model_dir):
    from logitleak.audit import run_audit

    cfg = make_config({"model": str(model_dir), "data": str(path), "task": "z", "levels": ["residual"],
                       "layers": [2], "probes": {"families": ["linear"], "workers": 0, "bootstrap": 200},
                       "samples": 1000, "out": str(out)})
    return run_audit(cfg, progress=False)


def test_repeated_prompts_with_a_random_label_are_no_leak(tmp_path, one_thread):
    """Each prompt listed twice used to sit on both sides of the splits, so a random label read at
    0.65 (p = 0.0003, issue 21); the repeats are now one sample, and the doubled file measures
    exactly what the single one does."""
    rows = _random_label_rows(60)
    single = _write_jsonl(tmp_path / "single.jsonl", rows)
    doubled = _write_jsonl(tmp_path / "doubled.jsonl", [r for r in rows for _ in range(2)])
    model = tiny_model_dir("qwen2", n_layers=2)
    one = _audit_text(single, tmp_path / "one", model)
    two = _audit_text(doubled, tmp_path / "two", model)
    cols = ["level", "layer", "attribute", "n", "accuracy", "baseline_accuracy", "p_value", "v_info_bits", "ci_low"]
    pd.testing.assert_frame_equal(one.results[cols], two.results[cols])
    row = two.results.iloc[0]
    assert row["p_value"] > 0.05 and row["ci_low"] <= row["baseline_accuracy"], row.to_dict()
    assert two.run_info["n_samples"] == 60 == one.run_info["n_samples"]
    assert any("60 row(s) of" in p and "counted once" in p for p in two.problems), two.problems


def test_repeats_conflicts_and_near_repeats(tmp_path):
    base = [{"prompt": "I live in Oslo.", "city": "oslo"}, {"prompt": "I live in Rome.", "city": "rome"},
            {"prompt": "i live  in OSLO.", "city": "oslo"}, {"prompt": "I live in Oslo.", "city": "oslo"},
            {"prompt": "I live in Bern.", "city": "bern"}]
    ps = load_text_file(_write_jsonl(tmp_path / "p.jsonl", base), task="city")
    assert ps.prompts == ["I live in Oslo.", "I live in Rome.", "i live  in OSLO.", "I live in Bern."]
    assert ps.meta["rows"] == [1, 2, 3, 5]
    assert list(ps.groups) == [0, 1, 0, 2]  # equal up to case and spacing: one group
    assert any("1 row(s)" in n and "counted once" in n for n in ps.meta["notes"])
    assert any("up to case and spacing" in n for n in ps.meta["notes"])
    conflict = _write_jsonl(tmp_path / "c.jsonl", base + [{"prompt": "I live in Rome.", "city": "oslo"}])
    with pytest.raises(LogitleakError, match=r"^Rows 2 and 6 of .*c\.jsonl are the same input but give city 'rome' and "
                                             r"'oslo'; fix the label"):
        load_text_file(conflict, task="city")
    # the conversation is the input: the same user turn under another system prompt is another sample
    sys_rows = [{"messages": [{"role": "user", "content": "Hi"}], "system": s, "a": a}
                for s, a in (("Be brief.", "x"), ("Be kind.", "y"), ("Be brief.", "x"))]
    ps = load_text_file(_write_jsonl(tmp_path / "s.jsonl", sys_rows), task="a")
    assert len(ps) == 2 and ps.messages[1][0] == {"role": "system", "content": "Be kind."}
    # a different expected answer for the same conversation is a conflict too
    ans = [{"prompt": "Hi", "a": "x", "answer": "yes"}, {"prompt": "Hi", "a": "x", "answer": "no"}]
    with pytest.raises(LogitleakError, match="Rows 1 and 2 .* give answer 'yes' and 'no'"):
        load_text_file(_write_jsonl(tmp_path / "ans.jsonl", ans), task="a")


@pytest.mark.parametrize("cells, classes", [
    ([1, 1.0, 2, 2.0], ["1", "1", "2", "2"]),          # numbers by value, one spelling
    ([True, False, True, True], ["true", "false", "true", "true"]),
    (["1", "1.0", "x", "x"], ["1", "1.0", "x", "x"]),  # strings compared as written
])
def test_one_label_typing_rule_for_jsonl(tmp_path, cells, classes):
    rows = [{"prompt": f"q{i}", "a": v} for i, v in enumerate(cells)]
    assert list(load_text_file(_write_jsonl(tmp_path / "t.jsonl", rows), task="a").attributes["a"]) == classes


def test_csv_and_parquet_follow_the_same_rule(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("prompt,a,b\nq0,1,x\nq1,1.0,1\nq2,2,y\nq3,2e0,z\n")
    ps = load_text_file(f, task="a")
    assert list(ps.attributes["a"]) == ["1", "1", "2", "2"]   # every cell a number: numbers
    assert list(ps.attributes["b"]) == ["x", "1", "y", "z"]   # otherwise text as written
    pq = tmp_path / "t.parquet"
    pd.DataFrame({"prompt": ["q0", "q1", "q2", "q3"], "a": [1.0, 1.0, 2.0, 2.0], "f": [True, False, True, False]}
                 ).to_parquet(pq)
    ps = load_text_file(pq, task="a")
    assert list(ps.attributes["a"]) == ["1", "1", "2", "2"] and list(ps.attributes["f"]) == ["true", "false"] * 2


@pytest.mark.parametrize("cells, message", [
    ([1, 1.0, "1"], r"Column 'a' of .*t\.jsonl mixes kinds of value: row 1 holds the number 1 and row 3 the string "
                    r"\"1\"; write every value of a column the same way"),
    ([True, "true", 1], r"row 1 holds the true/false value true and row 2 the string \"true\""),
    ([1, [1, 2], 2], r"Column 'a' of .*t\.jsonl holds '\[1, 2\]' in row 2, not a single value"),
    (["x", None, "y"], r"Column 'a' of .*t\.jsonl is empty in row 2 \(row 1 = the first data row\)"),
    (["x", "  ", "y"], r"Column 'a' of .*t\.jsonl is empty in row 2"),
])
def test_mixed_blank_and_null_labels_fail_when_the_file_loads(tmp_path, cells, message):
    rows = [{"prompt": f"q{i}", "a": v} for i, v in enumerate(cells)]
    with pytest.raises(LogitleakError, match=message):
        load_text_file(_write_jsonl(tmp_path / "t.jsonl", rows), task="a")


def test_blank_csv_label_and_answer_are_named(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("prompt,a,answer\nq0,x,yes\nq1,,no\n")
    with pytest.raises(LogitleakError, match=r"Column 'a' of .*t\.csv is empty in row 2"):
        load_text_file(f, task="a")
    f.write_text("prompt,a,answer\nq0,x,yes\nq1,y,\n")
    with pytest.raises(LogitleakError, match=r"Column 'answer' of .*t\.csv is empty in row 2"):
        load_text_file(f, task="a")
    f.write_text("prompt,a\nq0,x\n,y\n")
    with pytest.raises(LogitleakError, match=r"Column 'prompt' of .*t\.csv is empty in row 2"):
        load_text_file(f, task="a")


def test_ambiguous_text_columns_are_refused(tmp_path):
    both = _write_jsonl(tmp_path / "both.jsonl", [{"prompt": "Hi", "messages": [{"role": "user", "content": "Yo"}],
                                                   "a": "x"}])
    with pytest.raises(LogitleakError, match="both a 'prompt' and a 'messages' column; keep one of them"):
        load_text_file(both, task="a")
    two_systems = _write_jsonl(tmp_path / "sys.jsonl", [
        {"messages": [{"role": "user", "content": "Hi"}], "system": "S", "a": "x"},
        {"messages": [{"role": "system", "content": "T"}, {"role": "user", "content": "Hi"}], "system": "S", "a": "y"}])
    with pytest.raises(LogitleakError, match=r"Row 2 of .*sys\.jsonl: the system cell and a system turn in the messages "
                                             r"cell both give a system prompt; keep one of them"):
        load_text_file(two_systems, task="a")
    dup_key = tmp_path / "dup.jsonl"
    dup_key.write_text('{"prompt": "Hi", "a": "x", "a": "y"}\n')
    with pytest.raises(LogitleakError, match=r"dup\.jsonl \(line 1\) gives the key 'a' twice in one object"):
        load_text_file(dup_key, task="a")
