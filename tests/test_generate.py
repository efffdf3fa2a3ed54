"""Generated-token read positions: one generation pass gives the residual and top-k of every
generated position (checked against a teacher-forced forward pass), the response levels follow
their definitions, the store keeps them, and --generate 0 is one sentence."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from tiny_models import probeset_for, tiny_model_dir

from logitleak.capture.forward import Capture, capture
from logitleak.capture.generation import response_mask
from logitleak.capture.store import ActivationStore
from logitleak.config import make_config
from logitleak.data.personas import make_personas
from logitleak.errors import LogitleakError
from logitleak.levels.features import build_features
from logitleak.levels.response import response_topk_ids, response_topk_logprobs
from logitleak.models.tokens import eos_ids
from logitleak.serve.app import RunningServer, create_app
from logitleak.serve.engine import Engine

G = 5


@pytest.fixture(scope="module")
def llama(one_thread):
    from logitleak.models.loading import load_model

    return load_model(tiny_model_dir("llama", init_std=0.5), device="cpu")


@pytest.fixture(scope="module")
def probes():
    return make_personas(6, task="color", seed=1)


@pytest.fixture(scope="module")
def generated(llama, probes):
    return capture(llama, probes, batch_size=4, progress=False, generate=G, gen_k=7)


def test_first_position_is_the_usual_capture(llama, probes, generated):
    plain = capture(llama, probes, batch_size=4, progress=False)
    torch.testing.assert_close(generated.logits, plain.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(generated.hidden, plain.hidden, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(generated.gen_hidden[:, 0], plain.hidden, atol=1e-5, rtol=1e-5)
    assert generated.gen_hidden.shape == (6, G, llama.n_layers + 1, llama.d_model)
    assert generated.gen_topk_ids.shape == (6, G, 7) and generated.gen_tokens.shape == (6, G)


def test_every_position_matches_a_teacher_forced_pass(llama, probes, generated):
    """Feed prompt + generated tokens once, unbatched: position j's residual and top-k equal the
    generation pass's, and the generated token is the greedy argmax."""
    for i in range(len(probes)):
        prompt = llama.build_inputs([probes.prompts[i]])["input_ids"]
        valid = generated.gen_mask[i]
        toks = generated.gen_tokens[i][valid]
        seq = torch.cat([prompt, toks.view(1, -1)], dim=1)
        with torch.no_grad():
            out = llama.model(input_ids=seq, output_hidden_states=True)
        t = prompt.shape[1]
        for j in range(int(valid.sum())):
            pos = t - 1 + j
            lp = torch.log_softmax(out.logits[0, pos].float(), -1)
            top = torch.topk(lp, 7)
            assert int(top.indices[0]) == int(toks[j])
            torch.testing.assert_close(generated.gen_topk_logprobs[i, j], top.values, atol=1e-4, rtol=1e-4)
            # hidden_states[0] is the embedding output; the last entry is after the final norm, so compare 0..L-1
            for layer in range(llama.n_layers):
                torch.testing.assert_close(generated.gen_hidden[i, j, layer], out.hidden_states[layer][0, pos],
                                           atol=1e-4, rtol=1e-4)


def test_response_mask_stops_at_end_of_sequence():
    tokens = torch.tensor([[5, 6, 9, 1, 1], [9, 1, 1, 1, 1], [5, 5, 5, 5, 5]])
    m = response_mask(tokens, n_steps=5, eos_ids={9})
    assert m.tolist() == [[True, True, False, False, False], [False] * 5, [True] * 5]
    assert response_mask(tokens, n_steps=3, eos_ids={9})[2].tolist() == [True, True, True, False, False]


def _toy_capture():
    lp = torch.tensor([[[-0.1, -2.0], [-0.5, -1.0], [-3.0, -4.0]],
                       [[-0.2, -0.9], [float("nan"), float("nan")], [float("nan"), float("nan")]]])
    ids = torch.tensor([[[4, 7], [7, 2], [9, 4]], [[2, 4], [-1, -1], [-1, -1]]])
    mask = torch.tensor([[True, True, False], [True, False, False]])  # sample 0's third position is past the end
    return Capture(gen_topk_logprobs=lp, gen_topk_ids=ids, gen_mask=mask, topk_logprobs=lp[:, 0], topk_ids=ids[:, 0])


def test_response_topk_ids_combines_every_position_by_id():
    cap = _toy_capture()
    x = response_topk_ids(cap, 2)  # union {2, 4, 7}; floor = -2.0 - 1
    expect = np.array([[-1.0, -0.1, -0.5],    # sample 0: id 2 at position 1; 4: -0.1; 7: max(-2.0, -0.5)
                       [-0.2, -0.9, -3.0]], dtype=np.float32)  # id 9 at sample 0's ended position is never used
    np.testing.assert_allclose(x, expect)
    np.testing.assert_allclose(response_topk_ids(cap, 1), [[-1.5, -0.1, -0.5], [-0.2, -1.5, -1.5]])


def test_response_topk_logprobs_side_by_side():
    x = response_topk_logprobs(_toy_capture(), 2)
    np.testing.assert_allclose(x, [[-0.1, -2.0, -0.5, -1.0, -3.0, -3.0], [-0.2, -0.9, -3.0, -3.0, -3.0, -3.0]])


def test_build_features_response_levels(llama, generated):
    feats = build_features(generated, llama.readout(), levels=["response_residual", "response_topk_ids",
                                                                "response_topk_logprobs", "topk_ids"],
                           layers=[0, 2], ks=[1, 5])
    m = generated.gen_mask.float().unsqueeze(-1)
    mean2 = (generated.gen_hidden[:, :, 2] * m).sum(1) / m.sum(1).clamp(min=1)
    np.testing.assert_allclose(feats[("response_residual", 2, None)], mean2.numpy(), atol=1e-6)
    assert feats[("response_topk_logprobs", None, 5)].shape == (6, G * 5)
    assert ("topk_ids", None, 1) in feats and ("response_topk_ids", None, 5) in feats
    with pytest.raises(LogitleakError, match="needs a generated response; capture with --generate N"):
        build_features(Capture(logits=generated.logits), None, levels=["response_topk_ids"], layers=[], ks=[1])


def test_store_keeps_the_response_and_resumes(llama, probes, generated, tmp_path):
    store = ActivationStore(tmp_path)
    seen = []
    stored = store.extract(llama, probes, shard_size=4, batch_size=4, generate=G, gen_k=7, progress=False,
                           hidden_dtype="float32", on_shard=lambda i, p: seen.append(i))
    assert seen == [0, 1] and stored.generated == G
    np.testing.assert_array_equal(stored.gen_mask(), generated.gen_mask.numpy())
    np.testing.assert_array_equal(stored.gen_tokens(), generated.gen_tokens.numpy())
    lp, ids = stored.gen_topk()
    np.testing.assert_allclose(lp, generated.gen_topk_logprobs.numpy(), atol=1e-6)
    np.testing.assert_allclose(stored.gen_layer(1), generated.gen_hidden[:, :, 1].numpy(), atol=1e-6)
    # a first-token capture of the same set is a different entry (and stays keyed as before)
    plain = store.extract(llama, probes, shard_size=4, batch_size=4, progress=False)
    assert plain.path != stored.path and plain.generated is None
    # a lost shard is recomputed alone, identically
    (stored.path / "shard-00001.safetensors").unlink()
    manifest = stored.path / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"complete": true', '"complete": false'))
    seen.clear()
    again = store.extract(llama, probes, shard_size=4, batch_size=4, generate=G, gen_k=7, progress=False,
                          hidden_dtype="float32", on_shard=lambda i, p: seen.append(i))
    assert seen == [1]
    np.testing.assert_array_equal(again.gen_topk()[1], ids)


def test_generate_zero_is_one_sentence(tmp_path):
    with pytest.raises(LogitleakError, match=r"generate=0 is not a number of generated tokens; pass a whole number from 1"):
        make_config({"generate": 0})
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    r = subprocess.run([sys.executable, "-c", "from logitleak.cli import main; main()", "audit", "--data", "personas",
                        "--task", "capital", "--generate", "0", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "'generate'" in r.stderr and "--generate 8" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_response_mask_takes_a_limit_per_row():
    tokens = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8]])
    assert response_mask(tokens, torch.tensor([4, 2]), eos_ids=set()).tolist() == [[True] * 4, [True, True, False, False]]


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "paligemma", "idefics3", "gpt2", "llama"])
def test_server_answers_are_the_generate_capture_by_construction(family, one_thread):
    """`serve` and a --generate capture run one generate pass: every response position's top-5
    log-probabilities and ids are the capture's, bit for bit (a batch of one on both sides), the
    stop token's entry is the one extra entry a response that ended on it carries, and the stop
    rule (the model's EOS ids, from one place) is the same."""
    from logitleak.models.loading import load_model

    ad = load_model(tiny_model_dir(family), device="cpu")
    ps = probeset_for(ad, n=3, seed=2)
    cap = capture(ad, ps, batch_size=1, progress=False, generate=G, gen_k=5)
    engine = Engine(ad, threads=1)
    assert engine.eos_ids == set(eos_ids(ad))
    with RunningServer(create_app(engine, served_model_name=family)) as srv:
        for i in range(len(ps)):
            content: list = [{"type": "text", "text": ps.prompts[i]}]
            if ps.images is not None:
                buf = io.BytesIO()
                ps.images[i].save(buf, format="PNG")
                url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
                content.insert(0, {"type": "image_url", "image_url": {"url": url}})
            body = {"model": family, "messages": [{"role": "user", "content": content}], "logprobs": True,
                    "top_logprobs": 5, "max_tokens": G, "temperature": 0}
            choice = httpx.post(srv.url + "/chat/completions", json=body, timeout=120).json()["choices"][0]
            entries = choice["logprobs"]["content"]
            n = int(cap.gen_mask[i].sum())
            for j in range(n):
                values = [t["logprob"] for t in entries[j]["top_logprobs"]]
                assert values == cap.gen_topk_logprobs[i, j].tolist(), (family, i, j)
                assert [t["token"] for t in entries[j]["top_logprobs"]] == \
                    [engine.tokens(int(t))[0] for t in cap.gen_topk_ids[i, j]]
                assert entries[j]["token"] == engine.tokens(int(cap.gen_tokens[i, j]))[0]
            if n < G:  # the response ended on an end-of-sequence token: its entry comes last
                assert choice["finish_reason"] == "stop" and len(entries) == n + 1
            else:
                assert choice["finish_reason"] == "length" and len(entries) == G
