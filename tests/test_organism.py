"""The built-in organism: real LLaVA classes, standard-path inputs, deterministic training, round trips, CLI."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from logitleak.data.shapes import ATTRIBUTES, QUESTIONS, make_shapes
from logitleak.errors import LogitleakError
from logitleak.models import organism as org
from logitleak.models import organism_data as D
from logitleak.models import organism_train as T


@pytest.fixture(scope="module")
def built():
    return org.build_organism(0)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("organism") / "seed0"
    metrics = T.train_organism(out, 0, quick=True, progress=False)
    return out, metrics


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _inputs(model, processor, n=10, seed=11):
    ps = make_shapes(n, "all", seed=seed, image_size=org.IMAGE_SIZE)
    return ps, org.organism_inputs(model, processor, ps.images, ps.prompts)


# ----------------------------------------------------------------------------- architecture

def test_config_is_a_consistent_tiny_llava(built):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaForConditionalGeneration

    model, processor = built
    cfg, tok = model.config, processor.tokenizer
    assert isinstance(model, LlavaForConditionalGeneration)
    assert isinstance(cfg.vision_config, CLIPVisionConfig) and isinstance(cfg.text_config, LlamaConfig)
    assert cfg.image_token_index == tok.convert_tokens_to_ids("<image>") == processor.image_token_id
    assert cfg.image_seq_length == (org.IMAGE_SIZE // org.PATCH_SIZE) ** 2
    assert cfg.vision_config.image_size == org.IMAGE_SIZE and cfg.vision_config.patch_size == org.PATCH_SIZE
    assert cfg.text_config.vocab_size == len(tok)
    t = cfg.text_config
    assert (t.hidden_size, t.num_attention_heads, t.head_dim, t.num_hidden_layers) == (128, 2, 64, 4)
    assert not cfg.tie_word_embeddings and not t.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    # the vision tower yields exactly image_seq_length features per image
    feats = T._patch_tokens(model, torch.zeros(1, 3, org.IMAGE_SIZE, org.IMAGE_SIZE))
    assert feats.shape[1] == cfg.image_seq_length


def test_vocabulary_is_words_with_single_token_answers(built):
    _, processor = built
    tok = processor.tokenizer
    vocab = org.organism_vocabulary()
    assert vocab[:5] == ["<pad>", "<unk>", "<s>", "</s>", "<image>"]
    assert len(set(vocab)) == len(vocab) == len(tok)
    assert not any(v.startswith("<0x") or v.startswith("Ġ") for v in vocab)
    ids = {}
    for attr, words in org.organism_answer_words().items():
        assert words == list(ATTRIBUTES[attr])
        for w in words:
            enc = tok(w, add_special_tokens=False)["input_ids"]
            assert len(enc) == 1 and enc[0] != tok.unk_token_id, w
            ids[w] = enc[0]
    assert len(set(ids.values())) == len(ids)
    by_attr = org.organism_answer_token_ids(tok)
    assert {w: i for a, ws in by_attr.items() for w, i in zip(org.organism_answer_words()[a], ws)} == ids
    for templates in QUESTIONS.values():
        for q in templates:
            assert tok.unk_token_id not in tok(q, add_special_tokens=False)["input_ids"], q
    assert tok("What COLOR is it?", add_special_tokens=False)["input_ids"] == \
        tok("what color is it ?", add_special_tokens=False)["input_ids"]


def test_chat_template_renders_image_then_question_then_generation_prompt(built):
    model, processor = built
    text = org.render_prompt(processor, "what shape is the object ?")
    assert text == "<s>user : <image> what shape is the object ?\nassistant :"
    assert processor.tokenizer.apply_chat_template(org.chat_messages("what shape is the object ?"),
                                                   add_generation_prompt=True, tokenize=False) == text
    assert not org.render_prompt(processor, "x").endswith("</s>")
    ps, inputs = _inputs(model, processor, n=6)
    n_img = (inputs["input_ids"] == model.config.image_token_index).sum(1)
    assert n_img.tolist() == [model.config.image_seq_length] * 6
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert (ids[:, -2:] == torch.tensor(processor.tokenizer.convert_tokens_to_ids(["assistant", ":"]))).all()
    assert (mask[:, -1] == 1).all() and (ids[mask == 0] == processor.tokenizer.pad_token_id).all()  # left padding
    assert ((ids == processor.tokenizer.bos_token_id).sum(1) == 1).all()
    assert tuple(inputs["pixel_values"].shape) == (6, 3, org.IMAGE_SIZE, org.IMAGE_SIZE)


def test_training_inputs_equal_the_standard_processor_path(built):
    model, processor = built
    ps, inputs = _inputs(model, processor, n=10)
    attrs = list(ATTRIBUTES)
    attr_idx = np.array([attrs.index(a) for a in ps.asked])
    para_idx = np.array([QUESTIONS[a].index(p) for a, p in zip(ps.asked, ps.prompts)])
    labels = torch.tensor([[ATTRIBUTES[a].index(row[a]) for a in attrs] for _, row in ps.attributes.iterrows()])
    prompts = D.Prompts(processor, org.IMAGE_SIZE)
    ids, mask, answers = prompts.batch(attr_idx, para_idx, labels)
    assert torch.equal(ids[:, :-1], inputs["input_ids"]) and torch.equal(mask[:, :-1], inputs["attention_mask"])
    assert answers.tolist() == processor.tokenizer.convert_tokens_to_ids(ps.answers)
    pixels = torch.from_numpy(np.stack([np.asarray(im) for im in ps.images])).permute(0, 3, 1, 2)
    norm = D.Normalizer(processor.image_processor)
    assert torch.allclose(norm(pixels), inputs["pixel_values"], atol=1e-6)
    # the training forward (cached vision features scattered into the embeddings) is the LLaVA forward
    with torch.no_grad():
        ref = model(**inputs).logits[:, -1]
        feats = T._patch_tokens(model, norm(pixels))
        emb = model.get_input_embeddings()(ids)
        emb = emb.masked_scatter((ids == model.config.image_token_index).unsqueeze(-1),
                                 model.model.multi_modal_projector(feats))
        ours = model(inputs_embeds=emb, attention_mask=mask, logits_to_keep=2).logits[:, 0]
    assert torch.allclose(ref, ours, atol=1e-5)


# ----------------------------------------------------------------------------- training

def test_quick_training_writes_a_complete_directory(quick_run):
    out, metrics = quick_run
    assert org.is_complete(out)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == metrics
    assert set(metrics["heldout_accuracy"]) == set(ATTRIBUTES)
    assert all(0.0 <= v <= 1.0 for v in metrics["heldout_accuracy"].values())
    assert metrics["seed"] == 0 and metrics["image_size"] == org.IMAGE_SIZE and metrics["train_seconds"] > 0
    assert isinstance(metrics["steps"], int)
    assert [p.name for p in out.parent.iterdir()] == ["seed0"]  # no temporary leftovers


def test_same_seed_gives_identical_weights_and_other_seed_differs(quick_run, tmp_path):
    out, metrics = quick_run
    again = T.train_organism(tmp_path / "again", 0, quick=True, progress=False)
    other = T.train_organism(tmp_path / "other", 1, quick=True, progress=False)
    a, b, c = _weights(out), _weights(tmp_path / "again"), _weights(tmp_path / "other")
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert again["heldout_accuracy"] == metrics["heldout_accuracy"]
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert other["seed"] == 1


def test_saved_organism_reopens_with_transformers_alone_and_gives_identical_logits(built, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaProcessor

    model, processor = built
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = LlavaForConditionalGeneration.from_pretrained(tmp_path)
    proc2 = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(proc2, LlavaProcessor)
    ps, inputs = _inputs(model, processor, n=5)
    inputs2 = org.organism_inputs(loaded, proc2, ps.images, ps.prompts)
    assert inputs.keys() == inputs2.keys() and all(torch.equal(inputs[k], inputs2[k]) for k in inputs)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded.eval()(**inputs2).logits)
    generated = loaded.generate(**inputs2, max_new_tokens=2, do_sample=False)
    assert generated.shape == (5, inputs2["input_ids"].shape[1] + 2)


def test_trained_directory_reproduces_its_metrics_after_reloading(quick_run):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    out, metrics = quick_run
    model = LlavaForConditionalGeneration.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    acc = T.evaluate_organism(model, processor, 0, n_images=metrics["heldout_images"])
    assert acc == metrics["heldout_accuracy"]


def test_interrupted_save_leaves_previous_organism_intact(quick_run, tmp_path, monkeypatch):
    from transformers import LlavaProcessor

    out = tmp_path / "org"
    shutil.copytree(quick_run[0], out)
    before = (out / "model.safetensors").read_bytes()

    def boom(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(LlavaProcessor, "save_pretrained", boom)
    with pytest.raises(KeyboardInterrupt):
        T.train_organism(out, 5, quick=True, progress=False)
    assert org.is_complete(out) and (out / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["org"]
    with pytest.raises(KeyboardInterrupt):
        T.train_organism(tmp_path / "fresh", 5, quick=True, progress=False)
    assert not (tmp_path / "fresh").exists() and [p.name for p in tmp_path.iterdir()] == ["org"]


def test_bad_training_inputs_are_clear_errors(tmp_path):
    file = tmp_path / "a_file"
    file.write_text("x")
    with pytest.raises(LogitleakError, match="existing file"):
        T.train_organism(file, 0, quick=True, progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    with pytest.raises(LogitleakError, match="not empty"):
        T.train_organism(tmp_path / "busy", 0, quick=True, progress=False)
    for seed in ("1", 1.5, None, True, -1):
        with pytest.raises(LogitleakError, match="[Ss]eed"):
            T.train_organism(tmp_path / "x", seed, quick=True, progress=False)
    with pytest.raises(LogitleakError, match="[Ss]teps"):
        T.train_organism(tmp_path / "x", 0, steps=0, quick=True, progress=False)
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- cache

def test_organism_dir_honours_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert org.organism_dir(3) == tmp_path / "xdg" / "logitleak" / "organism-seed3-v1"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert org.organism_dir() == tmp_path / "home" / ".cache" / "logitleak" / "organism-seed0-v1"
    with pytest.raises(LogitleakError, match="not an integer"):
        org.organism_dir("zero")


def test_ensure_organism_trains_once_then_uses_the_cache(quick_run, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []
    real = T.train_organism

    def quick_train(out, seed=0, progress=True, **kw):
        calls.append(seed)
        return real(out, seed, quick=True, progress=False)

    monkeypatch.setattr(T, "train_organism", quick_train)
    path = T.ensure_organism(0, progress=False)
    assert path == org.organism_dir(0) and org.is_complete(path) and calls == [0]
    assert T.ensure_organism(0, progress=False) == path and calls == [0]
    (path / "metrics.json").unlink()  # incomplete -> trained again
    assert T.ensure_organism(0, progress=False) == path and org.is_complete(path) and calls == [0, 0]


# ----------------------------------------------------------------------------- CLI

def _cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    from logitleak.cli import main

    monkeypatch.setattr(sys, "argv", ["logitleak", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_bad_inputs_exit_2_with_one_clear_line(tmp_path, monkeypatch, capsys):
    file = tmp_path / "f.txt"
    file.write_text("x")
    code, _, err = _cli(monkeypatch, capsys, "organism", "train", "--out", str(file), "--seed", "0")
    assert code == 2 and "is an existing file" in err and "Traceback" not in err
    code, _, err = _cli(monkeypatch, capsys, "organism", "train", "--out", str(tmp_path / "o"), "--seed", "abc")
    assert code == 2 and "Seed 'abc' is not an integer" in err and len(err.strip().splitlines()) == 1
    code, _, err = _cli(monkeypatch, capsys, "organism", "train", "--out", str(tmp_path / "o"), "--steps", "many")
    assert code == 2 and "Steps 'many'" in err
    assert not (tmp_path / "o").exists()


def test_cli_quick_train_prints_accuracies_and_writes_metrics(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cli-org"
    code, stdout, _ = _cli(monkeypatch, capsys, "organism", "train", "--out", str(out), "--seed", "2", "--quick")
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seed"] == 2
    for attr in ATTRIBUTES:
        assert attr in stdout
        assert f"{metrics['heldout_accuracy'][attr]:.3f}" in stdout
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    code, stdout, _ = _cli(monkeypatch, capsys, "organism", "path", "--seed", "4")
    assert code == 0 and stdout.strip() == str(tmp_path / "cache" / "logitleak" / "organism-seed4-v1")
