"""The audit configuration: files, overrides, and errors that name the bad key."""

import json

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


# ----------------------------------------------------------------------------- bounded config files

HOSTILE = {
    "deep.yaml": ("a: " + "[" * 5000 + "]" * 5000, r"nests values deeper than 16 levels \(line 1\)"),
    "deep.toml": ("a = " + "[" * 100_000 + "]" * 100_000, "nests values deeper than Python can parse"),
    "deep16.toml": ("a = " + "[" * 20 + "]" * 20, r"nests values deeper than 16 levels \(at a\[0\]"),
    "digits.yaml": ("samples: " + "9" * 5000, r"holds an integer of 5000 digits on line 1; integers may have at most "
                                               r"19 digits"),
    "digits.toml": ("samples = " + "9" * 5000, "holds an integer literal too long to read"),
    "digits25.toml": ("[lens]\nsteps = " + "9" * 25, r"holds an integer of 25 digits at lens\.steps"),
    "dup.yaml": ("task: color\nseed: 1\ntask: shape\n", r"gives the key 'task' twice \(lines 1 and 3\); keep one"),
    "dupnested.yaml": ("probes:\n  folds: 3\n  folds: 4\n", r"gives the key 'folds' twice \(lines 2 and 3\)"),
    "dup.toml": ("task = 'a'\ntask = 'b'\n", r"gives a key twice \(at line 2, column 11\); keep one of them"),
    "alias.yaml": ("a: &x [1, 2]\nb: *x\n", r"uses an alias \(\*x\) on line 2"),
    "big.yaml": ("# " + "x" * (2 << 20), r"is 2,097,154 bytes, more than the 1,048,576 a config file may hold"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_config_files_are_one_sentence_naming_the_file(tmp_path, name):
    text, message = HOSTILE[name]
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(LogitleakError, match=message) as err:
        load_config(f, validate=False)
    assert str(err.value).startswith(f"Config file {f} ") and "\n" not in str(err.value)


def test_a_bounded_file_still_reads(tmp_path):
    f = tmp_path / "ok.yaml"
    f.write_text("seed: 9223372036854775807\ntask: '1234567890123456789012345'\nprobes: {families: [linear]}\n")
    assert load_config(f, validate=False) == {"seed": 2**63 - 1, "task": "1234567890123456789012345",
                                              "probes": {"families": ["linear"]}}


_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
                     st.floats(allow_nan=False), st.text(max_size=8))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(min_size=1, max_size=5), inner, max_size=3), max_leaves=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.dictionaries(st.text(min_size=1, max_size=6), _values, max_size=4),
       depth=st.integers(min_value=0, max_value=40), suffix=st.sampled_from([".yaml", ".toml"]))
def test_any_config_file_loads_within_bounds_or_is_one_sentence(tmp_path, data, depth, suffix):
    """Generated files (any keys, values, nesting and integers, as YAML or TOML): either they load
    and every value lies within the bounds, or the error is a LogitleakError naming the file."""
    from logitleak.config import MAX_DEPTH, MAX_INT

    nested = {"k": data}
    for _ in range(depth):
        nested = {"k": [nested]}
    f = tmp_path / f"c{suffix}"
    try:
        f.write_text(yaml.safe_dump(nested) if suffix == ".yaml" else f"k = {_toml(nested['k'])}\n")
    except UnicodeEncodeError:
        return  # not representable as UTF-8 text
    try:
        loaded = load_config(f, validate=False)
    except LogitleakError as err:
        assert str(f) in str(err)
        return
    stack = [(loaded, 0)]
    while stack:
        v, d = stack.pop()
        assert d <= MAX_DEPTH
        assert not isinstance(v, int) or isinstance(v, bool) or -MAX_INT < v < MAX_INT
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else ()
        stack.extend((c, d + 1) for c in children)


def _toml(v) -> str:
    """A value as an inline TOML value (TOML has no null: ``None`` is left out)."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(x)}" for k, x in v.items() if x is not None) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v if x is not None) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return {"inf": "inf", "-inf": "-inf"}.get(repr(v), repr(v))
    return json.dumps(v) if isinstance(v, str) else str(v)
