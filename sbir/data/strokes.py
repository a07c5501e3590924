"""QuickDraw-style stroke drawings: parse ndjson, normalise, simplify and rasterise to sketch images.

Two formats are accepted, as in the Quick, Draw! dataset:
- raw: every stroke is ``[[x...], [y...], [t...]]`` in arbitrary canvas coordinates (t in ms);
- simplified: every stroke is ``[[x...], [y...]]`` with integer coordinates in a 0-255 box.
Raw drawings (and any drawing outside the 0-255 box) are normalised into the box preserving aspect
ratio and centred; simplified drawings keep their placement in the box. Used for QuickDraw data, for
the synthetic dataset's ndjson strokes, and for stroke input at the serving endpoint.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw

from sbir.errors import SbirError

BOX = 255.0  # side of QuickDraw's simplified coordinate box
MAX_POINTS = 200_000  # refuse absurdly large drawings (e.g. from a web request)

Fit = Literal["auto", "box", "bbox"]


class StrokeFormatError(SbirError, ValueError):
    """A drawing is not valid QuickDraw raw or simplified ndjson (the message says what is wrong)."""


_FORMAT_HINT = "expected a list of strokes, each [[x...], [y...]] (simplified) or [[x...], [y...], [t...]] (raw)"


def _number_row(row: Any, where: str) -> np.ndarray:
    if not isinstance(row, Sequence) or isinstance(row, str | bytes):
        raise StrokeFormatError(f"{where} is {type(row).__name__}, not a list of numbers; {_FORMAT_HINT}")
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in row):
        raise StrokeFormatError(f"{where} contains a non-number; {_FORMAT_HINT}")
    arr = np.asarray(row, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise StrokeFormatError(f"{where} contains NaN or infinity")
    return arr


def parse_ndjson_drawing(line_or_obj: str | bytes | Mapping[str, Any] | Sequence[Any]) -> list[np.ndarray]:
    """Strokes of one drawing as float arrays (n, 2) [x, y] or (n, 3) [x, y, t].

    Accepts an ndjson line (str/bytes), a parsed object with a "drawing" key, or the drawing list
    itself. Raises StrokeFormatError on anything malformed (empty drawing, ragged or mixed strokes...).
    """
    obj: Any = line_or_obj
    if isinstance(obj, bytes | str):
        try:
            obj = json.loads(obj)
        except json.JSONDecodeError as exc:
            raise StrokeFormatError(f"drawing is not valid JSON: {exc}") from None
    if isinstance(obj, Mapping):
        if "drawing" not in obj:
            raise StrokeFormatError(f"object has no 'drawing' key (keys: {sorted(obj)[:8]})")
        obj = obj["drawing"]
    if not isinstance(obj, Sequence) or isinstance(obj, str | bytes):
        raise StrokeFormatError(f"drawing is {type(obj).__name__}; {_FORMAT_HINT}")
    if len(obj) == 0:
        raise StrokeFormatError("drawing has no strokes")
    strokes: list[np.ndarray] = []
    arity: int | None = None
    total = 0
    for i, stroke in enumerate(obj):
        if not isinstance(stroke, Sequence) or isinstance(stroke, str | bytes) or len(stroke) not in (2, 3):
            n = len(stroke) if isinstance(stroke, Sequence) else type(stroke).__name__
            raise StrokeFormatError(f"stroke {i} has {n} rows, not 2 (x, y) or 3 (x, y, t); {_FORMAT_HINT}")
        if arity is not None and len(stroke) != arity:
            raise StrokeFormatError(
                f"stroke {i} has {len(stroke)} rows but stroke 0 has {arity}: raw and simplified mixed"
            )
        arity = len(stroke)
        rows = [_number_row(r, f"stroke {i} row {j}") for j, r in enumerate(stroke)]
        lengths = {len(r) for r in rows}
        if len(lengths) != 1:
            raise StrokeFormatError(f"stroke {i} has rows of different lengths {[len(r) for r in rows]}")
        if 0 in lengths:
            raise StrokeFormatError(f"stroke {i} has no points")
        total += len(rows[0])
        if total > MAX_POINTS:
            raise StrokeFormatError(f"drawing has more than {MAX_POINTS} points")
        strokes.append(np.stack(rows, axis=1))
    return strokes


def drawing_format(strokes: Sequence[np.ndarray]) -> Literal["raw", "simplified"]:
    """'raw' if strokes carry timestamps (3 columns), else 'simplified'."""
    return "raw" if strokes and strokes[0].shape[1] == 3 else "simplified"


def normalize_strokes(strokes: Sequence[np.ndarray], box: float = BOX) -> list[np.ndarray]:
    """Fit the drawing's bounding box into [0, box]² (aspect preserved, centred); drops timestamps."""
    xy = [np.asarray(s, dtype=np.float64)[:, :2] for s in strokes]
    pts = np.vstack(xy)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    extent = float((hi - lo).max())
    scale = box / extent if extent > 0 else 1.0
    offset = (box - (hi - lo) * scale) / 2 if extent > 0 else np.full(2, box / 2)
    return [(s - lo) * scale + offset for s in xy]


def simplify_strokes(strokes: Sequence[np.ndarray], epsilon: float = 2.0) -> list[np.ndarray]:
    """Ramer-Douglas-Peucker simplification of each stroke (QuickDraw used epsilon 2.0 in the box)."""
    out = []
    for stroke in strokes:
        pts = np.asarray(stroke, dtype=np.float64)
        if len(pts) < 3:
            out.append(pts)
            continue
        keep = np.zeros(len(pts), dtype=bool)
        keep[[0, -1]] = True
        stack = [(0, len(pts) - 1)]
        while stack:
            a, b = stack.pop()
            if b - a < 2:
                continue
            seg = pts[b, :2] - pts[a, :2]
            rel = pts[a + 1 : b, :2] - pts[a, :2]
            norm = math.hypot(*seg)
            dist = np.abs(seg[0] * rel[:, 1] - seg[1] * rel[:, 0]) / norm if norm > 0 else np.hypot(*rel.T)
            k = int(np.argmax(dist))
            if dist[k] > epsilon:
                keep[a + 1 + k] = True
                stack += [(a, a + 1 + k), (a + 1 + k, b)]
        out.append(pts[keep])
    return out


def to_simplified_drawing(strokes: Sequence[np.ndarray]) -> list[list[list[int]]]:
    """Strokes already in the 0-255 box as a simplified QuickDraw 'drawing' (rounded, clipped ints)."""
    drawing = []
    for stroke in strokes:
        q = np.clip(np.rint(np.asarray(stroke)[:, :2]), 0, BOX).astype(int)
        if len(q) > 1:  # drop consecutive duplicates created by rounding
            q = q[np.concatenate([[True], np.any(q[1:] != q[:-1], axis=1)])]
        drawing.append([q[:, 0].tolist(), q[:, 1].tolist()])
    return drawing


def box_to_pixels(strokes: Sequence[np.ndarray], size: int, padding: float = 0.0) -> list[np.ndarray]:
    """Map 0-255 box coordinates to pixel centres: 0 → padding, 255 → size-1-padding."""
    scale = (size - 1 - 2 * padding) / BOX
    return [np.asarray(s, dtype=np.float64)[:, :2] * scale + padding for s in strokes]


def pixels_to_box(strokes: Sequence[np.ndarray], size: int) -> list[np.ndarray]:
    """Inverse of `box_to_pixels` with no padding: pixel centres 0…size-1 → 0…255."""
    return [np.asarray(s, dtype=np.float64)[:, :2] * (BOX / (size - 1)) for s in strokes]


def rasterize_strokes(
    strokes: Sequence[np.ndarray] | Sequence[Any],
    size: int = 224,
    pen_width: float = 3,
    padding: float | None = None,
    *,
    fit: Fit = "auto",
    antialias: bool = True,
    mode: Literal["RGB", "L"] = "RGB",
) -> Image.Image:
    """Draw strokes as black lines on white: a sketch image of `size` px with a `pen_width` px pen.

    `strokes` are arrays from `parse_ndjson_drawing` (or a raw drawing list, parsed here). fit="box"
    maps the 0-255 box onto the canvas; "bbox" first normalises the drawing's bounding box into the
    box; "auto" uses "box" for simplified drawings inside the box and "bbox" otherwise (raw drawings).
    `padding` is the margin in pixels (default: 4% of size, at least the pen width).
    """
    if size < 8:
        raise ValueError(f"size must be at least 8 px, got {size}")
    if pen_width <= 0:
        raise ValueError(f"pen_width must be positive, got {pen_width}")
    if fit not in ("auto", "box", "bbox"):
        raise ValueError(f"fit must be 'auto', 'box' or 'bbox', got {fit!r}")
    if not all(isinstance(s, np.ndarray) for s in strokes):
        strokes = parse_ndjson_drawing(list(strokes))
    if len(strokes) == 0:
        raise StrokeFormatError("drawing has no strokes")
    if any(s.ndim != 2 or s.shape[1] not in (2, 3) or len(s) == 0 for s in strokes):
        raise StrokeFormatError("stroke arrays must have shape (n>0, 2) or (n>0, 3)")
    pad = max(float(pen_width), round(0.04 * size)) if padding is None else float(padding)
    if not 0 <= pad < (size - 1) / 2:
        raise ValueError(f"padding {pad} leaves no room on a {size} px canvas")
    if fit == "auto":
        inside = all(float(s[:, :2].min()) >= 0 and float(s[:, :2].max()) <= BOX for s in strokes)
        fit = "box" if drawing_format(strokes) == "simplified" and inside else "bbox"
    if fit == "bbox":
        strokes = normalize_strokes(strokes)
    elif any(float(s[:, :2].min()) < 0 or float(s[:, :2].max()) > BOX for s in strokes):
        raise StrokeFormatError("fit='box' needs coordinates within 0-255; use fit='bbox' for other drawings")
    ss = 4 if antialias else 1
    pixels = box_to_pixels(strokes, size, pad)
    img = Image.new("L", (size * ss, size * ss), 255)
    draw = ImageDraw.Draw(img)
    w = max(1, round(pen_width * ss))
    r = w / 2
    for stroke in pixels:
        pts = [tuple(q) for q in ((stroke + 0.5) * ss - 0.5).tolist()]
        if len(pts) > 1:
            draw.line(pts, fill=0, width=w, joint="curve")
        for x, y in (pts[0], pts[-1]):
            draw.ellipse((x - r, y - r, x + r, y + r), fill=0)
    if ss > 1:
        img = img.reduce(ss)
    return img.convert(mode) if mode != "L" else img


def rasterize_drawing(line_or_obj: str | bytes | Mapping[str, Any] | Sequence[Any], **kwargs: Any) -> Image.Image:
    """Parse one ndjson drawing and rasterise it (keyword arguments go to `rasterize_strokes`)."""
    return rasterize_strokes(parse_ndjson_drawing(line_or_obj), **kwargs)
