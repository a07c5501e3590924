"""Image preprocessing for both methods, applied at load time so one prepared dataset serves both.

ZSE-SBIR (docs/zse_sbir.md#preprocessing): photos are resized to a square (bicubic); sketches are cropped to
their ink bounding box (R+G+B <= threshold, with a margin), resized on the long side (bilinear) and
padded to a square with white. An ink-free sketch falls back to the full image. Both normalise with
mean 0.5 / std 0.5. CLIP-AT (docs/clip_at.md#preprocessing): aspect-preserving resize, pad with `pad_fill`,
then the model's mean/std.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

HALF = (0.5, 0.5, 0.5)


def to_tensor(image: Image.Image, mean: Sequence[float] = HALF, std: Sequence[float] = HALF) -> torch.Tensor:
    """RGB PIL image -> normalised 3 x H x W float tensor."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    return (tensor - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def ink_bbox(image: Image.Image, threshold: int = 300, margin: int = 10) -> tuple[int, int, int, int] | None:
    """Bounding box (left, top, right, bottom) of pixels with R+G+B <= threshold, grown by `margin`."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.int32)
    ink = rgb.sum(axis=2) <= threshold
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if rows.size == 0:
        return None
    h, w = ink.shape
    return (
        max(0, int(cols[0]) - margin),
        max(0, int(rows[0]) - margin),
        min(w, int(cols[-1]) + 1 + margin),
        min(h, int(rows[-1]) + 1 + margin),
    )


def pad_to_square(image: Image.Image, size: int, fill: tuple[int, int, int], resample: int) -> Image.Image:
    """Resize the long side to `size` and pad the short side (floor(delta/2) before, the rest after)."""
    w, h = image.size
    scale = size / max(w, h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = image.resize((new_w, new_h), resample)
    canvas = Image.new("RGB", (size, size), fill)
    canvas.paste(resized, ((size - new_w) // 2, (size - new_h) // 2))
    return canvas


def zse_photo_pixels(image: Image.Image, size: int) -> Image.Image:
    return image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)


def zse_sketch_pixels(image: Image.Image, size: int, threshold: int = 300, margin: int = 10) -> Image.Image:
    image = image.convert("RGB")
    box = ink_bbox(image, threshold, margin)
    if box is not None:
        image = image.crop(box)
    return pad_to_square(image, size, (255, 255, 255), Image.Resampling.BILINEAR)


def clip_pixels(image: Image.Image, size: int, pad_fill: int = 0) -> Image.Image:
    """CLIP-AT geometry for either modality (normalisation is separate)."""
    fill = (pad_fill, pad_fill, pad_fill)
    return pad_to_square(image.convert("RGB"), size, fill, Image.Resampling.BICUBIC)


@dataclass(frozen=True)
class ImageTransform:
    """Method-specific load-time preprocessing of one image, picklable for Ray Data workers."""

    kind: Literal["zse", "clip"]
    size: int
    mean: tuple[float, float, float] = HALF
    std: tuple[float, float, float] = HALF
    pad_fill: int = 0
    ink_threshold: int = 300
    ink_margin: int = 10

    @property
    def normalisation(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """(mean, std) applied to the 8-bit pixels: the model's for CLIP-AT, always 0.5 / 0.5 for ZSE-SBIR."""
        return (self.mean, self.std) if self.kind == "clip" else (HALF, HALF)

    def pixels(self, image: Image.Image, modality: str) -> Image.Image:
        """The 8-bit RGB size x size image before normalisation (crop, resize, pad)."""
        if self.kind == "clip":
            return clip_pixels(image, self.size, self.pad_fill)
        if modality == "sketch":
            return zse_sketch_pixels(image, self.size, self.ink_threshold, self.ink_margin)
        return zse_photo_pixels(image, self.size)

    def __call__(self, image: Image.Image, modality: str) -> torch.Tensor:
        return to_tensor(self.pixels(image, modality), *self.normalisation)

    def decode(self, data: bytes, modality: str) -> torch.Tensor:
        """Encoded image bytes (as stored in prepared shards) -> normalised tensor."""
        with Image.open(io.BytesIO(data)) as image:
            return self(image.convert("RGB"), modality)

    def decode_pixels(self, data: bytes, modality: str) -> np.ndarray:
        """Encoded image bytes -> the uint8 3 x size x size pixels that ``decode`` normalises."""
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(self.pixels(image.convert("RGB"), modality), dtype=np.uint8).transpose(2, 0, 1)
