"""The cache checks itself: every kind of damage to a stored capture is recomputed (or named when
opened directly), never used; checksums catch truncation, deletion and flipped bits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_models import probeset_for, tiny_model_dir

from logitleak.capture.store import ActivationStore, StoredCapture
from logitleak.errors import LogitleakError
from logitleak.integrity import CHECKSUMS_FILE, Checksums, atomic_directory, atomic_write, verified, write_json
from logitleak.models.loading import load_model

N, SHARD, BATCH = 10, 4, 2


def flip_bits(path, at: float = 0.7) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i] ^= 0x01  # one mantissa bit: a file that still parses
    path.write_bytes(bytes(data))


def truncate(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_checksums_catch_every_change(tmp_path):
    f = tmp_path / "a.bin"
    atomic_write(f, lambda tmp: open(tmp, "wb").write(b"x" * 1000), checksum=True)
    assert verified(f)
    flip_bits(f)
    assert not verified(f)
    atomic_write(f, lambda tmp: open(tmp, "wb").write(b"y" * 1000), checksum=True)
    assert verified(f)
    truncate(f)
    assert not verified(f)
    f.unlink()
    assert not verified(f)
    g = tmp_path / "b.bin"
    atomic_write(g, lambda tmp: open(tmp, "wb").write(b"z"), checksum=True)
    (tmp_path / CHECKSUMS_FILE).write_text('{"files": {"b.bin": ')  # a damaged manifest trusts nothing
    assert not Checksums(tmp_path).verify(g)
    unrecorded = tmp_path / "c.bin"
    unrecorded.write_bytes(b"never recorded")
    assert not verified(unrecorded)


def test_one_writer_keeps_the_old_bytes_when_writing_fails(tmp_path):
    f = tmp_path / "a.json"
    write_json(f, {"x": 1})

    def half_then_fail(tmp):
        open(tmp, "w").write('{"x": ')
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        atomic_write(f, half_then_fail)
    assert json.loads(f.read_text()) == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no temp file left behind


def test_write_json_values(tmp_path):
    pd = pytest.importorskip("pandas")
    f = tmp_path / "v.json"
    write_json(f, {"np": np.float32(0.5), "i": np.int64(3), "na": pd.NA, "path": tmp_path}, indent=None)
    assert json.loads(f.read_text()) == {"np": 0.5, "i": 3, "na": None, "path": str(tmp_path)}
    assert "\n" not in f.read_text()


def test_atomic_directory_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "a.txt").write_text("two")
            raise RuntimeError("interrupted")
    assert (target / "a.txt").read_text() == "one"  # the old directory, untouched
    with atomic_directory(target) as tmp:
        (tmp / "b.txt").write_text("three")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp or old directory left


@pytest.fixture(scope="module")
def adapter():
    return load_model(tiny_model_dir("llava"), device="cpu")


@pytest.fixture(scope="module")
def probeset(adapter):
    return probeset_for(adapter, N, seed=3)


@pytest.fixture(scope="module")
def clean_root(adapter, probeset, tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    stored = ActivationStore(root).extract(adapter, probeset, shard_size=SHARD, batch_size=BATCH, progress=False)
    return root, _arrays(stored)


def _copy(clean_root, tmp_path):
    import shutil

    root, reference = clean_root
    shutil.copytree(root, tmp_path / "store")
    store = ActivationStore(tmp_path / "store")
    (manifest,) = (tmp_path / "store").rglob("manifest.json")
    return store, manifest.parent, reference


def _arrays(stored):
    return [stored.layer(layer) for layer in range(stored.n_layers + 1)] + [stored.logits()]


DAMAGE = {
    "shard-truncated": lambda p: truncate(p / "shard-00001.safetensors"),
    "shard-deleted": lambda p: (p / "shard-00000.safetensors").unlink(),
    "shard-bits-flipped": lambda p: flip_bits(p / "shard-00002.safetensors"),
    "shard-replaced-by-another": lambda p: (p / "shard-00001.safetensors").write_bytes(
        (p / "shard-00000.safetensors").read_bytes()),
    "manifest-truncated": lambda p: truncate(p / "manifest.json"),
    "manifest-garbage": lambda p: (p / "manifest.json").write_text("[1, 2, 3]"),
    "manifest-deleted": lambda p: (p / "manifest.json").unlink(),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_capture_is_named_then_recomputed_identically(adapter, probeset, clean_root, tmp_path, damage):
    store, path, reference = _copy(clean_root, tmp_path)
    DAMAGE[damage](path)
    if damage != "manifest-deleted":
        with pytest.raises(LogitleakError, match=r"(shard-0000\d\.safetensors|manifest\.json).*(damaged|missing)"):
            StoredCapture(path)
    redone = []
    again = store.extract(adapter, probeset, shard_size=SHARD, batch_size=BATCH, progress=False,
                          on_shard=lambda i, p: redone.append(i))
    assert redone, "the damage was not noticed"
    if damage.startswith("shard"):
        assert len(redone) == 1  # only the damaged shard is recomputed
    for a, b in zip(_arrays(again), reference):
        np.testing.assert_array_equal(a, b)
    StoredCapture(again.path)  # verifies every shard


def test_old_manifest_without_checksums_is_not_trusted(adapter, probeset, clean_root, tmp_path):
    store, path, _ = _copy(clean_root, tmp_path)
    mf = json.loads((path / "manifest.json").read_text())
    for shard in mf["shards"]:
        shard.pop("sha256")
    (path / "manifest.json").write_text(json.dumps(mf))
    redone = []
    store.extract(adapter, probeset, shard_size=SHARD, batch_size=BATCH, progress=False,
                  on_shard=lambda i, p: redone.append(i))
    assert redone == [0, 1, 2]


def test_damaged_endpoint_response_lines_are_asked_again(tmp_path):
    from logitleak.endpoint.cache import ResponseCache

    cache = ResponseCache(tmp_path)
    cache.append({"index": 0, "key": "k0", "first": [[-0.25, 3]], "n_tokens": 1})
    cache.append({"index": 1, "key": "k1", "first": [[-0.5, 7]], "n_tokens": 1})
    cache.close()
    assert set(cache.load({0: "k0", 1: "k1"})) == {0, 1}
    lines = cache.path.read_text().splitlines()
    lines[0] = lines[0].replace("-0.25", "-0.35")  # still valid JSON, different number
    cache.path.write_text("\n".join(lines) + "\n")
    assert set(cache.load({0: "k0", 1: "k1"})) == {1}
