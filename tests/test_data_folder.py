"""User probe sets: image folders with label files, and local `datasets` directories."""

import numpy as np
import pytest
from folders import write_shapes_images

from logitleak.config import make_config
from logitleak.data import make_shapes
from logitleak.data.folder import load_image_folder
from logitleak.data.loading import load_probe_set
from logitleak.data.shapes import NUMERIC_ATTRIBUTES
from logitleak.errors import LogitleakError


def write_folder(root, n=12, seed=0, fmt="csv"):
    ps, table = write_shapes_images(root, n, seed, name="img_{i:03d}.png", photo=True)
    if fmt == "csv":
        table.to_csv(root / "labels.csv", index=False)
    else:
        table.to_json(root / "labels.jsonl", orient="records", lines=True)
    return ps, table


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_folder_round_trip(tmp_path, fmt):
    ps, table = write_folder(tmp_path, fmt=fmt)
    got = load_image_folder(tmp_path, question="what color is the object ?", task="color", group_column="photo")
    assert len(got) == len(ps)
    assert list(got.attributes.columns) == ["color", "shape", "size", "position", "background", *NUMERIC_ATTRIBUTES]
    # inferred from the columns: fractional numbers are numeric; 12 whole-pixel box edges take few
    # distinct values, which reads as class labels (is_numeric_column)
    assert got.numeric_attributes == ["center_x", "center_y"]
    np.testing.assert_allclose(got.labels("center_x"), ps.labels("center_x"))
    assert (got.attributes["shape"].to_numpy() == ps.attributes["shape"].to_numpy()).all()
    assert np.array_equal(np.asarray(got.images[3]), np.asarray(ps.images[3]))
    assert list(got.groups[:4]) == [0, 0, 1, 1]
    assert got.asked == ["color"] * len(ps) and got.prompts[0] == "what color is the object ?"


def test_config_route_and_sampling(tmp_path):
    write_folder(tmp_path, n=20)
    cfg = make_config({"data": str(tmp_path / "labels.csv"), "task": "shape", "samples": 10, "seed": 1})
    got = load_probe_set(cfg)
    assert len(got) == 10 and got.prompts[0] == "what shape is the object ?"


def test_missing_image_is_named(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "img_004.png").unlink()
    with pytest.raises(LogitleakError, match=r"img_004\.png.*does not exist"):
        load_image_folder(tmp_path, question="q", task="color")


def test_label_file_without_attribute(tmp_path):
    write_folder(tmp_path)
    with pytest.raises(LogitleakError, match=r"Attribute 'texture' is not a column.*columns are: path, color"):
        load_image_folder(tmp_path, question="q", task="texture")


def test_unknown_group_column_and_missing_labels(tmp_path):
    write_folder(tmp_path)
    with pytest.raises(LogitleakError, match="Group column 'album'"):
        load_image_folder(tmp_path, question="q", task="color", group_column="album")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LogitleakError, match="pass --labels FILE"):
        load_image_folder(empty, question="q", task="color")


def test_unreadable_image_is_named_before_any_work(tmp_path):
    write_folder(tmp_path, n=4)
    (tmp_path / "img_001.png").write_bytes(b"not a png")
    with pytest.raises(LogitleakError, match=r"Cannot read image .*img_001\.png"):
        load_image_folder(tmp_path, question="q", task="color")


def test_image_damaged_after_loading_is_named_at_use(tmp_path):
    write_folder(tmp_path, n=4)
    ps = load_image_folder(tmp_path, question="q", task="color")
    (tmp_path / "img_001.png").write_bytes(b"not a png")
    with pytest.raises(LogitleakError, match=r"Cannot read image .*img_001\.png"):
        ps.images[1]


def test_datasets_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    ps = make_shapes(8, seed=2)
    ds = datasets.Dataset.from_dict({"image": list(ps.images), **{c: list(ps.attributes[c]) for c in ps.attributes}})
    ds.save_to_disk(str(tmp_path / "ds"))
    cfg = make_config({"data": str(tmp_path / "ds"), "task": "size", "samples": 10})
    got = load_probe_set(cfg)
    assert len(got) == 8 and np.array_equal(np.asarray(got.images[5]), np.asarray(ps.images[5]))
    assert (got.attributes["size"].to_numpy() == ps.attributes["size"].to_numpy()).all()


def test_shapes_through_config_rejects_unknown_attribute():
    with pytest.raises(LogitleakError, match="not a shapes attribute"):
        load_probe_set(make_config({"task": "texture"}))
    with pytest.raises(LogitleakError, match="Unknown attribute 'texture'"):
        load_probe_set(make_config({"task": "color", "attributes": ["shape", "texture"]}))
