"""The shapes generator: recorded attributes match the pixels; same seed, same set; clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from logitleak.data.shapes import (
    ATTRIBUTES,
    BACKGROUNDS,
    COLORS,
    QUESTIONS,
    make_shapes,
    render_shapes,
    sample_attributes,
)
from logitleak.errors import LogitleakError

SIZE = 32


@pytest.fixture(scope="module")
def rendered():
    attrs = sample_attributes(600, seed=3)
    flat, masks = render_shapes(attrs, image_size=SIZE, seed=4, noise=0.0)
    noisy, masks_noisy = render_shapes(attrs, image_size=SIZE, seed=4, noise=4.0)
    return attrs, flat, noisy, masks, masks_noisy


def _bbox_centre(mask: np.ndarray) -> tuple[float, float]:
    yy, xx = np.nonzero(mask)
    return (xx.min() + xx.max() + 1) / 2 / mask.shape[1], (yy.min() + yy.max() + 1) / 2 / mask.shape[0]


def test_every_attribute_value_is_sampled(rendered):
    attrs = rendered[0]
    for name, values in ATTRIBUTES.items():
        assert set(attrs[name]) == set(values)


def test_object_and_background_pixels_match_recorded_colours(rendered):
    attrs, flat, noisy, masks, masks_noisy = rendered
    assert np.array_equal(masks, masks_noisy)  # noise never moves the object
    for i, row in enumerate(attrs.itertuples(index=False)):
        m = masks[i]
        assert m.any() and not m.all()
        assert np.array_equal(np.unique(flat[i][m], axis=0), np.array([COLORS[row.color]], dtype=np.uint8))
        assert np.all(flat[i][~m] == BACKGROUNDS[row.background])
        # with pixel noise the means stay within a couple of levels of the recorded values
        assert np.abs(noisy[i][m].astype(float).mean(0) - COLORS[row.color]).max() < 3.0
        assert abs(noisy[i][~m].astype(float).mean() - BACKGROUNDS[row.background]) < 3.0


def test_object_centre_lies_in_recorded_position_region(rendered):
    attrs, _, _, masks, _ = rendered
    for i, pos in enumerate(attrs["position"]):
        cx, cy = _bbox_centre(masks[i])
        dx, dy = cx - 0.5, cy - 0.5
        region = ("left" if dx < 0 else "right") if abs(dx) > abs(dy) else ("top" if dy < 0 else "bottom")
        assert region == pos, (i, pos, cx, cy)


def test_object_area_grows_with_recorded_size_for_every_shape(rendered):
    attrs, _, _, masks, _ = rendered
    frame = attrs.assign(area=masks.sum(axis=(1, 2)))
    for shape in ATTRIBUTES["shape"]:
        sub = frame[frame["shape"] == shape]
        small, medium, large = (sub.loc[sub["size"] == s, "area"] for s in ("small", "medium", "large"))
        assert small.max() < medium.min() and medium.max() < large.min(), shape


def test_shapes_differ_in_pixels_at_equal_size_and_place():
    # one render per shape with the same seed: row i gets the same centre jitter in each
    n = 120
    masks = {}
    for shape in ATTRIBUTES["shape"]:
        rows = pd.DataFrame({"color": "red", "shape": shape, "size": np.resize(ATTRIBUTES["size"], n),
                             "position": np.resize(ATTRIBUTES["position"], n), "background": "black"})
        masks[shape] = render_shapes(rows, image_size=SIZE, seed=7, noise=0.0)[1]
    names = list(masks)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            differ = (masks[a] != masks[b]).sum(axis=(1, 2))
            assert differ.min() >= 10, (a, b, differ.min())  # even small shapes differ in many pixels


def test_make_shapes_records_asked_attribute_and_answers():
    ps = make_shapes(40, "all", seed=1, image_size=SIZE)
    assert len(ps) == 40 and ps.has_images
    assert ps.asked[:5] == list(ATTRIBUTES)
    for prompt, asked, answer, (_, row) in zip(ps.prompts, ps.asked, ps.answers, ps.attributes.iterrows()):
        assert prompt in QUESTIONS[asked]
        assert answer == row[asked]
    assert ps.images[0].size == (SIZE, SIZE) and ps.images[0].mode == "RGB"


def test_per_image_all_groups_questions_of_one_image():
    ps = make_shapes(6, ["shape", "color"], seed=2, image_size=SIZE, per_image="all")
    assert len(ps) == 12
    assert list(ps.groups) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert ps.asked[:2] == ["shape", "color"]
    assert np.array_equal(np.asarray(ps.images[0]), np.asarray(ps.images[1]))
    assert ps.attributes.iloc[0].equals(ps.attributes.iloc[1])


def test_same_seed_same_set_and_different_seed_different_set():
    a = make_shapes(30, "all", seed=5, image_size=SIZE)
    b = make_shapes(30, "all", seed=5, image_size=SIZE)
    c = make_shapes(30, "all", seed=6, image_size=SIZE)
    assert a.prompts == b.prompts and a.attributes.equals(b.attributes)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a.images, b.images))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert not a.attributes.equals(c.attributes)
    assert any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a.images, c.images))


@pytest.mark.parametrize("questions", ["colour", "shape,weight", []])
def test_unknown_or_missing_attribute_is_a_clear_error(questions):
    with pytest.raises(LogitleakError, match="attribute"):
        make_shapes(4, questions, seed=0, image_size=SIZE)


@pytest.mark.parametrize("seed", [1.5, "3", None, True])
def test_non_integer_seed_is_a_clear_error(seed):
    with pytest.raises(LogitleakError, match="not an integer"):
        make_shapes(4, "color", seed=seed, image_size=SIZE)


def test_bad_counts_and_modes_are_clear_errors():
    with pytest.raises(LogitleakError, match="at least 1"):
        make_shapes(0, "color", image_size=SIZE)
    with pytest.raises(LogitleakError, match="per_image"):
        make_shapes(4, "color", image_size=SIZE, per_image="some")


def test_unknown_attribute_value_in_render_is_a_clear_error():
    rows = pd.DataFrame([{"color": "red", "shape": "hexagon", "size": "small", "position": "top",
                          "background": "black"}])
    with pytest.raises(LogitleakError, match="Unknown shape value"):
        render_shapes(rows, image_size=SIZE)
