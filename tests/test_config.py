"""The audit configuration: files, overrides, and errors that name the bad key."""

import pytest

from logitleak.config import AuditConfig, load_config, make_config, resolve_config
from logitleak.errors import LogitleakError


def test_yaml_and_toml_files_and_cli_overrides(tmp_path):
    y = tmp_path / "a.yaml"
    y.write_text("model: organism\ntask: shape\nk: [10, 1]\nprobes:\n  families: [linear]\n  folds: 3\n")
    t = tmp_path / "a.toml"
    t.write_text('task = "shape"\nk = [10, 1]\n[probes]\nfamilies = ["linear"]\nfolds = 3\n')
    for f in (y, t):
        cfg = resolve_config(f, {"seed": 7, "task": None, "probes.folds": 4})
        assert cfg.task == "shape" and cfg.k == [1, 10] and cfg.seed == 7
        assert cfg.probes.families == ["linear"] and cfg.probes.folds == 4


def test_unknown_key_is_named(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("modle: organism\n")
    with pytest.raises(LogitleakError, match=r"unknown key 'modle'.*allowed keys are: model"):
        load_config(f)


def test_nested_unknown_key_and_bad_values():
    with pytest.raises(LogitleakError, match=r"unknown key 'probes.famlies'"):
        make_config({"probes": {"famlies": ["linear"]}})
    with pytest.raises(LogitleakError, match=r"'levels'.*unknown level 'nope'"):
        make_config({"levels": ["residual", "nope"]})
    with pytest.raises(LogitleakError, match=r"'k'.*positive"):
        make_config({"k": [0, 5]})
    with pytest.raises(LogitleakError, match=r"'seed'"):
        make_config({"seed": "abc"})


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(LogitleakError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "x.toml"
    bad.write_text("k = [1,\n")
    with pytest.raises(LogitleakError, match="not valid TOML"):
        load_config(bad)
    other = tmp_path / "x.ini"
    other.write_text("a=1")
    with pytest.raises(LogitleakError, match=r"\.yaml, \.yml or \.toml"):
        load_config(other)


def test_defaults_cover_every_level():
    from logitleak.levels.table import LEVELS

    assert AuditConfig().levels == list(LEVELS)


def test_the_demo_runs_the_audit_defaults_statistics_on_its_own_scope():
    from logitleak.cli.audit import DEMO_ATTRIBUTES, demo_config
    from logitleak.config import AuditConfig
    from logitleak.data.shapes import ATTRIBUTES

    cfg, default = demo_config(out="x", seed=3), AuditConfig()
    assert cfg.probes == default.probes and cfg.lens == default.lens      # no cut-down statistics
    assert (cfg.levels, cfg.layers, cfg.k) == (default.levels, default.layers, default.k)
    assert cfg.task == "color" and set(ATTRIBUTES) - {"color"} <= set(cfg.attributes)
    assert list(cfg.attributes) == list(DEMO_ATTRIBUTES) and (cfg.seed, cfg.out) == (3, "x")
