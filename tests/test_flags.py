"""Every config key has a flag, generated from one list; the README's flags work on `audit`."""

from __future__ import annotations

import pytest
from pydantic import BaseModel
from typer.main import get_command

from logitleak.cli import app
from logitleak.cli.flags import CONFIG_FLAGS, flags_by_key
from logitleak.config import AuditConfig


def config_keys(model: type[BaseModel] = AuditConfig, prefix: str = "") -> list[str]:
    keys = []
    for name, info in model.model_fields.items():
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys += config_keys(sub, prefix + name + ".")
        else:
            keys.append(prefix + name)
    return keys


def options_of(command: str) -> set[str]:
    cmd = get_command(app).commands[command]
    return {opt for p in cmd.params for opt in p.opts}


def test_every_config_key_has_exactly_one_flag():
    keys = config_keys()
    assert sorted(keys) == sorted(flags_by_key()), "add a Flag to CONFIG_FLAGS for each new config key"
    names = [f.flag for f in CONFIG_FLAGS]
    assert len(names) == len(set(names))


def test_audit_has_every_flag_and_defend_all_but_the_level_choices():
    from logitleak.cli.defend import DEFEND_EXCLUDES

    audit, defend = options_of("audit"), options_of("defend")
    assert set(DEFEND_EXCLUDES) <= set(flags_by_key())
    for f in CONFIG_FLAGS:
        assert f.flag in audit
        assert (f.flag in defend) == (f.key not in DEFEND_EXCLUDES)


def test_readme_flags_reach_the_config(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import logitleak.audit

    seen = {}

    def fake_run_audit(cfg, progress=True):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr(logitleak.audit, "run_audit", fake_run_audit)
    result = CliRunner().invoke(app, [
        "audit", "--data", str(tmp_path), "--path-column", "file", "--group-column", "photo_id", "--k", "1,5",
        "--layers", "all", "--probes", "linear", "--folds", "3", "--probe-c", "0.5", "--lens-steps", "7",
        "--force", "--allow-outside-data", "--shard-size", "64", "--mlp-levels", "topk_ids"])
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert (cfg.path_column, cfg.group_column, cfg.k, cfg.layers) == ("file", "photo_id", [1, 5], "all")
    assert cfg.probes.families == ["linear"] and cfg.probes.folds == 3 and cfg.probes.C == 0.5
    assert cfg.lens.steps == 7 and cfg.force and cfg.allow_outside_data and cfg.shard_size == 64
    assert cfg.probes.mlp_levels == ["topk_ids"] and cfg.allow_pickle is False


def test_flags_override_the_config_file_and_errors_name_the_flag(tmp_path):
    from logitleak.cli.flags import flag_names
    from logitleak.config import resolve_config
    from logitleak.errors import LogitleakError

    f = tmp_path / "a.yaml"
    f.write_text("samples: 5\nseed: 3\n")
    cfg = resolve_config(f, {"samples": 50}, flags=flag_names())  # the file's bad value is overridden
    assert cfg.samples == 50 and cfg.seed == 3
    with pytest.raises(LogitleakError, match=r"^--probe-c -1 \(key 'probes.C'\) is not valid"):
        resolve_config(None, {"probes.C": -1}, flags=flag_names())
    with pytest.raises(LogitleakError, match=r"Config file .*a\.yaml.*'samples'"):
        resolve_config(f, {}, flags=flag_names())
