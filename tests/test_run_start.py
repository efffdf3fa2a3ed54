"""The run skeleton audit and defend share: one start (checks before work), one model name, one run record."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from logitleak.audit import Start, finish_run, prepare_out_dir, run_record, start_run
from logitleak.config import make_config
from logitleak.errors import LogitleakError
from logitleak.timing import Timer


def _start(tmp_path, model="organism", adapter=None, **cfg):
    c = make_config({"model": model, "data": "shapes", "task": "color", "samples": 40, "out": str(tmp_path / "o"), **cfg})
    probeset = SimpleNamespace(fingerprint=lambda: "data-fp")
    out_dir = SimpleNamespace(path=tmp_path / "o")
    return Start(c, out_dir, probeset, adapter, tmp_path / "model-dir" if adapter is not None else None)


def test_one_model_name_rule_for_every_command(tmp_path):
    plain = SimpleNamespace(name="/models/x", gguf_source=None, fingerprint=lambda: "fp")
    gguf = SimpleNamespace(name="/downloads/SmolLM2.gguf", gguf_source={"file": "/downloads/SmolLM2.gguf"},
                           fingerprint=lambda: "fp")
    assert _start(tmp_path, adapter=plain).model_name == "organism"
    assert _start(tmp_path, model=str(tmp_path / "model-dir"), adapter=plain).model_name == str(tmp_path / "model-dir")
    assert _start(tmp_path, model="smollm2", adapter=gguf).model_name == "/downloads/SmolLM2.gguf"
    endpoint = _start(tmp_path, endpoint="http://127.0.0.1:9/v1", served_model="m")
    assert endpoint.model_name == "http://127.0.0.1:9/v1 (m)" and endpoint.model_fingerprint() == "m"


def test_the_run_record_and_run_json(tmp_path):
    start = _start(tmp_path, adapter=SimpleNamespace(name="x", gguf_source=None, fingerprint=lambda: "weights-fp"))
    timer = Timer()
    with timer("load"):
        pass
    info = run_record(start, timer, n_samples=40)
    assert info["model"] == "organism" and info["model_fingerprint"] == "weights-fp"
    assert info["data_fingerprint"] == "data-fp" and info["n_samples"] == 40 and info["task"] == "color"
    assert info["identity"]["model"] == "organism" and set(info["timings"]) == {"load"}
    with prepare_out_dir(start.cfg) as out_dir:
        start.out_dir = out_dir
        out_dir.begin({"model": "organism"}, "audit")
        with timer("report"):
            pass
        finish_run(start, info, timer)
    import json

    record = json.loads((start.out / "run.json").read_text())
    assert set(record["timings"]) == {"load", "report"} and record["command"] == "audit"
    assert record["status"] == "finished"


def test_bad_data_fails_before_the_model_loads(tmp_path, monkeypatch):
    import logitleak.models.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    cfg = make_config({"model": "organism", "data": "shapes", "task": "color", "samples": 40,
                       "out": str(tmp_path / "o")})
    monkeypatch.setattr("logitleak.audit.resolve_model_path", lambda cfg, progress=True: Path(tmp_path))
    monkeypatch.setattr("logitleak.models.safety.check_model_source", lambda *a, **k: None)

    def refuse(probeset):
        raise LogitleakError("no class attribute")

    with pytest.raises(LogitleakError, match="no class attribute"), prepare_out_dir(cfg) as out_dir:
        start_run(cfg, out_dir, Timer(), command="audit", progress=False, check_data=refuse)
    assert not (tmp_path / "o" / "run.json").exists()   # refused before the folder was marked as this run's
