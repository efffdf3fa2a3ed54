"""Before a capture's first forward pass: a prompt longer than the model's context, or a store larger than
the free disk, is one sentence naming the row (or the folder and the bytes); a disk that fills during
the capture is the same sentence, and the finished shards are kept."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_models import tiny_model_dir

from logitleak.capture import store as store_module
from logitleak.capture.prompt_length import context_length, prompt_lengths
from logitleak.capture.store import ActivationStore, sample_bytes
from logitleak.data.text import load_text_file
from logitleak.errors import LogitleakError


@pytest.fixture(scope="module")
def qwen(one_thread):
    from logitleak.models.loading import load_model

    return load_model(tiny_model_dir("qwen2"), device="cpu")


def _prompts(tmp_path, prompts, name="p.jsonl"):
    f = tmp_path / name
    f.write_text("".join(json.dumps({"prompt": p, "a": "xy"[len(p) % 2]}) + "\n" for p in prompts))
    return load_text_file(f, task="a")


def test_context_length_and_token_counts(qwen, tmp_path):
    assert context_length(qwen) == 512
    ps = _prompts(tmp_path, ["hello world", "hello world hello world"])
    n = prompt_lengths(qwen, ps)
    direct = [len(qwen.tokenizer(qwen.format_prompt(p, False), add_special_tokens=False)["input_ids"])
              for p in ps.prompts]
    assert n.tolist() == direct and n[1] > n[0]


def test_a_prompt_over_the_context_is_named_by_its_row_before_any_work(qwen, tmp_path, monkeypatch):
    """A 200,000-character prompt asked for 25 GB inside the forward pass (issue 21)."""
    prompts = ["short one", "short one", "another", "word " * 40_000, "fine"]
    ps = _prompts(tmp_path, prompts)
    assert len(ps) == 4  # the repeated row 2 is dropped: row numbers stay the file's
    monkeypatch.setattr(store_module, "write_shard", lambda *a, **k: pytest.fail("captured"))
    with pytest.raises(LogitleakError, match=r"^Row 4 of .*p\.jsonl: the prompt is [\d,]+ tokens, and '.*' reads at "
                                             r"most 512 \(its context length\); shorten the prompt or remove the "
                                             r"row\.$"):
        ActivationStore(tmp_path / "store").extract(qwen, ps, progress=False)
    fits = _prompts(tmp_path, ["word " * 40], name="q.jsonl")
    n = int(prompt_lengths(qwen, fits)[0])
    assert n < 512
    with pytest.raises(LogitleakError, match=rf"Row 1 of .*q\.jsonl: the prompt is {n} tokens and {513 - n} generated "
                                             r"tokens need room, and .* reads at most 512"):
        ActivationStore(tmp_path / "store").extract(qwen, fits, progress=False, generate=513 - n)


def test_a_store_larger_than_the_free_disk_is_refused_before_capture(qwen, tmp_path, monkeypatch):
    ps = _prompts(tmp_path, [f"question {i:02d}" for i in range(10)])
    dtype = store_module.STORE_DTYPES[store_module.store_dtype_for(None, qwen.device)]  # the store's default here
    per = sample_bytes(qwen, [], dtype, None, 20)
    assert per == (qwen.n_layers + 1) * qwen.d_model * dtype.itemsize + 4 * qwen.vocab_size
    monkeypatch.setattr(store_module, "_free", lambda path: 10 * per - 1)
    monkeypatch.setattr(store_module, "write_shard", lambda *a, **k: pytest.fail("captured"))
    with pytest.raises(LogitleakError, match=rf"The capture needs about {10 * per:,} bytes in .*store.* and its disk "
                                             rf"has {10 * per - 1:,} free; free some space"):
        ActivationStore(tmp_path / "store").extract(qwen, ps, progress=False)


def test_a_disk_that_fills_during_capture_keeps_the_finished_shards(qwen, tmp_path, monkeypatch):
    from safetensors import SafetensorError

    ps = _prompts(tmp_path, [f"question {i}" for i in range(6)])
    real = store_module.write_shard
    calls = []

    def fill_on_second(path, i, *a, **k):
        calls.append(i)
        if i == 1:  # what safetensors raises on a full tmpfs (recorded)
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(path, i, *a, **k)

    monkeypatch.setattr(store_module, "write_shard", fill_on_second)
    store = ActivationStore(tmp_path / "store")
    with pytest.raises(LogitleakError, match=r"The disk holding .* is full: the capture needs about [\d,]+ bytes "
                                             r"there .*Finished shards are kept, so the rerun resumes\.$"):
        store.extract(qwen, ps, progress=False, shard_size=3)
    monkeypatch.setattr(store_module, "write_shard", real)
    resumed = store.extract(qwen, ps, progress=False, shard_size=3)
    fresh = ActivationStore(tmp_path / "fresh").extract(qwen, ps, progress=False, shard_size=3)
    np.testing.assert_array_equal(resumed.logits(), fresh.logits())
    assert calls == [0, 1]
