"""What a request to the endpoint may hold, checked before any model sees it (docs/serving.md#limits).

Every problem is a :class:`RequestError` with the HTTP status to answer (400 malformed, 404 unknown,
413 too large, 415 unsupported type) and a message naming it. No path from a request reaches the
filesystem: gallery ids are integers, looked up in the gallery's own item list.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from sbir.config import ServeConfig
from sbir.errors import SbirError

IMAGE_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
STROKE_SIZE = 224  # strokes are drawn as `sbir data rasterize` draws QuickDraw data (224 px, pen 3)
STROKE_PEN = 3.0


class RequestError(SbirError):
    """A request the endpoint refuses: `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SearchQuery:
    """A checked search: the sketch as an RGB array, how many results, which mode."""

    sketch: np.ndarray  # H x W x 3 uint8
    k: int
    mode: str | None  # None = the method's default
    rerank_k: int
    source: str  # "image" | "strokes"


def decode_image(data: bytes, limits: ServeConfig, what: str = "image") -> np.ndarray:
    """PNG, JPEG or WebP bytes -> H x W x 3 uint8, refusing empty, corrupt, truncated and oversized images."""
    if not data:
        raise RequestError(400, f"the {what} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in IMAGE_FORMATS:
                raise RequestError(415, f"the {what} is {image.format or 'an unknown format'}; send PNG, JPEG or WebP")
            width, height = image.size
            if width < 1 or height < 1:
                raise RequestError(400, f"the {what} has no pixels ({width} x {height})")
            if width * height > limits.max_image_pixels:
                raise RequestError(
                    413, f"the {what} is {width} x {height} pixels, above the limit of {limits.max_image_pixels}"
                )
            image.load()
    except RequestError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RequestError(413, f"the {what} is too large to decode safely ({exc})") from None
    except UnidentifiedImageError:
        if _looks_like_an_image(data):
            raise RequestError(400, f"the {what} cannot be decoded (truncated or corrupt)") from None
        raise RequestError(415, f"the {what} is not a PNG, JPEG or WebP image") from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data
        raise RequestError(400, f"the {what} cannot be decoded ({exc})") from None
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _looks_like_an_image(data: bytes) -> bool:
    """Whether bytes start like a PNG, JPEG or WebP file (so a decoding failure means damage, not a wrong type)."""
    return data.startswith((b"\x89PNG", b"\xff\xd8")) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def decode_base64_image(text: Any, limits: ServeConfig, what: str = "image") -> np.ndarray:
    """A base64 (or data: URL) PNG/JPEG/WebP -> H x W x 3 uint8, with the checks of `decode_image`."""
    return decode_image(base64_image_bytes(text, limits, what), limits, what)


def rasterize_strokes(drawing: Any, limits: ServeConfig) -> np.ndarray:
    """QuickDraw strokes (raw or simplified; a drawing object or its list of strokes) -> the sketch image."""
    from sbir.data.strokes import StrokeFormatError, rasterize_drawing

    if isinstance(drawing, list):
        drawing = {"drawing": drawing}
    if not isinstance(drawing, dict) or not isinstance(drawing.get("drawing"), list):
        raise RequestError(400, "'strokes' must be a QuickDraw drawing: a list of strokes [[x...], [y...](, [t...])]")
    strokes = drawing["drawing"]
    if not strokes:
        raise RequestError(400, "'strokes' holds no stroke")
    if len(strokes) > limits.max_strokes:
        raise RequestError(413, f"'strokes' has {len(strokes)} strokes, above the limit of {limits.max_strokes}")
    points = sum(len(s[0]) if isinstance(s, list) and s and isinstance(s[0], list) else 0 for s in strokes)
    if points > limits.max_points:
        raise RequestError(413, f"'strokes' has {points} points, above the limit of {limits.max_points}")
    try:
        image = rasterize_drawing(drawing, size=STROKE_SIZE, pen_width=STROKE_PEN)
    except (StrokeFormatError, ValueError, TypeError) as exc:
        raise RequestError(400, f"invalid strokes: {exc}") from None
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def parse_int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool):
        raise RequestError(400, f"'{name}' must be an integer, got {value!r}")
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise RequestError(400, f"'{name}' must be an integer, got {value!r}") from None
    if not low <= number <= high:
        raise RequestError(400, f"'{name}' must be between {low} and {high}, got {number}")
    return number


def parse_mode(value: Any, modes: tuple[str, ...]) -> str | None:
    if value is None or value == "":
        return None
    if value not in modes:
        raise RequestError(400, f"unknown mode {value!r}; this model serves {', '.join(modes)}")
    return str(value)


QUERY_OPTIONS = ("k", "mode", "rerank_k")  # search options also accepted in the query string
MIN_SKETCH_SIDE = 16  # pixels: below this a drawing has no strokes to speak of
MAX_SKETCH_ASPECT = 8.0  # longer side / shorter side: beyond it the square resize leaves a line


def with_query_options(fields: dict[str, Any], params: list[tuple[str, str]]) -> dict[str, Any]:
    """The body's fields plus the search options given as query parameters (``?k=3``); any other query
    parameter, a repeated one, or an option given both ways is refused by name."""
    merged = dict(fields)
    for name, value in params:
        if name not in QUERY_OPTIONS:
            raise RequestError(
                400, f"unknown query parameter {name!r}; a search takes {', '.join(QUERY_OPTIONS)} there"
            )
        if name in merged:
            raise RequestError(400, f"{name!r} is given twice (query string and body, or repeated); give it once")
        merged[name] = value
    return merged


def check_sketch_shape(sketch: np.ndarray) -> None:
    """Refuse sketches too small or too elongated to be drawings, naming the limit."""
    height, width = sketch.shape[:2]
    if min(height, width) < MIN_SKETCH_SIDE:
        raise RequestError(
            400, f"the sketch is {width} x {height} pixels; each side must be at least {MIN_SKETCH_SIDE}"
        )
    if max(height, width) / min(height, width) > MAX_SKETCH_ASPECT:
        raise RequestError(
            400, f"the sketch is {width} x {height} pixels; its sides may differ at most {MAX_SKETCH_ASPECT:g} times"
        )


def search_query(fields: dict[str, Any], sketch: np.ndarray, source: str, limits: ServeConfig, modes) -> SearchQuery:
    known = {"k", "mode", "rerank_k", "image", "strokes", "sketch"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise RequestError(400, f"unknown field(s) {', '.join(unknown)}; a search takes {', '.join(sorted(known))}")
    check_sketch_shape(sketch)
    return SearchQuery(
        sketch=sketch,
        k=parse_int(fields.get("k", limits.top_k), "k", 1, limits.max_k),
        mode=parse_mode(fields.get("mode"), modes),
        rerank_k=parse_int(fields.get("rerank_k", limits.rerank_k), "rerank_k", 1, 10_000),
        source=source,
    )


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"invalid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise RequestError(400, f"the JSON body must be an object, got {type(payload).__name__}")
    return payload


def json_sketch(payload: dict[str, Any], limits: ServeConfig) -> tuple[np.ndarray, str]:
    """The sketch of a JSON request: `image` (base64 PNG/JPEG/WebP) or `strokes` (QuickDraw), exactly one."""
    has_image, has_strokes = "image" in payload, "strokes" in payload
    if has_image == has_strokes:
        raise RequestError(400, "send the sketch as exactly one of 'image' (base64) or 'strokes' (QuickDraw)")
    if has_image:
        return decode_base64_image(payload["image"], limits), "image"
    return rasterize_strokes(payload["strokes"], limits), "strokes"


def gallery_id(value: str) -> int:
    """A gallery id from a URL: a non-negative integer, nothing else (no path ever reaches the disk)."""
    if not value.isdigit() or len(value) > 18:
        raise RequestError(400, f"a gallery id is a non-negative integer, got {value!r}")
    return int(value)


def photo_name(name: str) -> str:
    """A display name for an added photo (only ever stored as metadata, never used as a path)."""
    base = os.path.basename(name.replace("\\", "/")).strip() or "upload"
    return base[:200]


def class_label(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 200:
        raise RequestError(400, "'class' must be a short string")
    return value


def base64_image_bytes(text: Any, limits: ServeConfig, what: str) -> bytes:
    """The bytes of a base64 string or a data: URL (as a canvas gives), refusing oversized or invalid ones."""
    if not isinstance(text, str):
        raise RequestError(400, f"'{what}' must be a base64 string")
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    if len(text) * 3 // 4 > limits.max_upload_bytes:
        raise RequestError(413, f"the {what} is larger than {limits.max_upload_bytes} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"'{what}' is not valid base64") from None
