"""QuickDraw ndjson strokes: parsing, validation, normalisation and rasterisation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sbir.data.strokes import (
    StrokeFormatError,
    box_to_pixels,
    normalize_strokes,
    parse_ndjson_drawing,
    pixels_to_box,
    rasterize_drawing,
    rasterize_strokes,
    simplify_strokes,
    to_simplified_drawing,
)

SQUARE = [[[0, 255, 255, 0, 0], [0, 0, 255, 255, 0]]]  # simplified: the box outline
CROSS = [[[0, 255], [128, 128]], [[128, 128], [0, 255]]]


def _ink(img) -> np.ndarray:
    return np.asarray(img.convert("L")) < 128


def test_parse_accepts_line_bytes_object_and_list():
    line = json.dumps({"word": "cross", "key_id": "1", "drawing": CROSS})
    for given in (line, line.encode(), json.loads(line), CROSS):
        strokes = parse_ndjson_drawing(given)
        assert len(strokes) == 2 and all(s.shape == (2, 2) for s in strokes)
        assert strokes[0].dtype == np.float64 and strokes[0][1].tolist() == [255, 128]


def test_parse_raw_keeps_timestamps():
    raw = [[[10, 400, 800], [50, 60, 70], [0, 16, 33]], [[5], [5], [40]]]
    strokes = parse_ndjson_drawing({"drawing": raw})
    assert [s.shape for s in strokes] == [(3, 3), (1, 3)]


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ("{not json", "not valid JSON"),
        ({"word": "x"}, "no 'drawing' key"),
        ({"drawing": []}, "no strokes"),
        ({"drawing": "abc"}, "drawing is str"),
        ([[[1, 2, 3]]], "has 1 rows"),
        ([[[1, 2], [3]]], "different lengths"),
        ([[[], []]], "no points"),
        ([[[1, "a"], [2, 3]]], "non-number"),
        ([[[1, True], [2, 3]]], "non-number"),
        ([[[1, float("nan")], [2, 3]]], "NaN"),
        ([[[1, 2], [3, 4]], [[1, 2], [3, 4], [0, 1]]], "mixed"),
        ([[[0, 1], 5]], "row 1"),
        ([7], "stroke 0"),
    ],
)
def test_parse_rejects_malformed_drawings(bad, match):
    with pytest.raises(StrokeFormatError, match=match):
        parse_ndjson_drawing(bad)


def test_rasterize_simplified_places_the_box_on_the_canvas():
    img = rasterize_strokes(parse_ndjson_drawing(CROSS), size=64, pen_width=2, padding=0)
    assert img.size == (64, 64) and img.mode == "RGB"
    ink = _ink(img)
    assert ink[31:34, :].any(axis=0).all() and ink[:, 31:34].any(axis=1).all()  # full-width and -height bars
    assert not ink[:20, :20].any()
    gray = rasterize_strokes(parse_ndjson_drawing(CROSS), size=32, mode="L")
    assert gray.mode == "L" and gray.size == (32, 32)


def test_padding_and_pen_width():
    box = parse_ndjson_drawing(SQUARE)
    padded = _ink(rasterize_strokes(box, size=64, pen_width=2, padding=8))
    assert not padded[:6].any() and padded[8].any()
    thin = _ink(rasterize_strokes(box, size=64, pen_width=1, padding=8)).sum()
    thick = _ink(rasterize_strokes(box, size=64, pen_width=5, padding=8)).sum()
    assert thick > 2.5 * thin


def test_raw_drawings_are_normalised_preserving_aspect():
    # a wide raw rectangle in canvas coordinates (with timestamps)
    raw = [[[100, 900, 900, 100, 100], [300, 300, 500, 500, 300], [0, 10, 20, 30, 40]]]
    ink = _ink(rasterize_drawing({"drawing": raw}, size=64, pen_width=2, padding=4))
    cols, rows = np.nonzero(ink.any(axis=0))[0], np.nonzero(ink.any(axis=1))[0]
    width, height = cols.max() - cols.min(), rows.max() - rows.min()
    assert width > 50 and 8 < height < 20  # 4:1 aspect kept, centred vertically
    assert abs((rows.max() + rows.min()) / 2 - 31.5) < 2
    # the same geometry without timestamps but outside the box is normalised the same way
    same = _ink(rasterize_drawing({"drawing": [raw[0][:2]]}, size=64, pen_width=2, padding=4))
    assert (same == ink).mean() > 0.99


def test_fit_modes():
    small = [[[10, 20], [10, 20]]]
    auto = _ink(rasterize_drawing(small, size=64, padding=0, pen_width=1))
    assert np.nonzero(auto.any(axis=0))[0].max() < 10  # kept in place in the box
    fitted = _ink(rasterize_drawing(small, size=64, padding=0, pen_width=1, fit="bbox"))
    assert np.nonzero(fitted.any(axis=0))[0].max() > 55  # scaled up to fill the canvas
    with pytest.raises(StrokeFormatError, match="within 0-255"):
        rasterize_drawing([[[0, 300], [0, 10]]], fit="box")
    with pytest.raises(ValueError, match="fit"):
        rasterize_drawing(small, fit="stretch")
    with pytest.raises(ValueError, match="pen_width"):
        rasterize_drawing(small, pen_width=0)
    with pytest.raises(ValueError, match="size"):
        rasterize_drawing(small, size=4)


def test_single_point_stroke_draws_a_dot():
    ink = _ink(rasterize_drawing([[[128], [128]]], size=64, pen_width=4, padding=0))
    assert 4 <= ink.sum() <= 40 and ink[30:34, 30:34].any()


def test_helpers_round_trip_and_simplify():
    px = [np.array([[0.0, 0.0], [31.5, 63.0], [63.0, 10.0]])]
    back = box_to_pixels(pixels_to_box(px, 64), 64)
    assert np.allclose(back[0], px[0])
    line = [np.stack([np.linspace(0, 100, 50), np.linspace(0, 50, 50)], axis=1)]
    assert len(simplify_strokes(line, 1.0)[0]) == 2
    drawing = to_simplified_drawing([np.array([[0.2, 0.4], [0.4, 0.2], [300.0, -3.0]])])
    assert drawing == [[[0, 255], [0, 0]]]  # rounded, de-duplicated and clipped to the box
    norm = normalize_strokes([np.array([[10.0, 10.0, 0.0], [30.0, 20.0, 5.0]])])
    assert norm[0].shape == (2, 2) and norm[0][:, 0].tolist() == [0.0, 255.0]
