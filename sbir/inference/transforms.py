"""Image preprocessing, applied at load time so one prepared dataset serves every method.

A transform is data, as open_clip's preprocessing config is: a :class:`Geometry` per modality (stretch or
aspect-preserving pad, resampling, pad colour, an ink crop for sketches) and the normalisation. Each method
family supplies its own (``MethodFamily.image_transform``; docs/zse_sbir.md#preprocessing,
docs/clip_at.md#preprocessing); nothing here knows a method.
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


Fit = Literal["stretch", "pad"]
Resample = Literal["bicubic", "bilinear"]
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class Geometry:
    """How one modality's image becomes ``size x size`` pixels: data a method family supplies."""

    fit: Fit  # stretch: resize both sides to size; pad: resize the long side, pad the short one
    resample: Resample = "bicubic"
    fill: int = 0  # grey level of the padding
    ink_crop: bool = False  # crop to the ink bounding box first (sketches; none found: the whole image)

    def pixels(self, image: Image.Image, size: int, ink_threshold: int, ink_margin: int) -> Image.Image:
        image = image.convert("RGB")
        if self.ink_crop:
            box = ink_bbox(image, ink_threshold, ink_margin)
            if box is not None:
                image = image.crop(box)
        if self.fit == "stretch":
            return image.resize((size, size), _RESAMPLE[self.resample])
        return pad_to_square(image, size, (self.fill,) * 3, _RESAMPLE[self.resample])


@dataclass(frozen=True)
class ImageTransform:
    """Load-time preprocessing of one image: a geometry per modality, then normalisation. Picklable and
    hashable, for Ray Data workers and as a cache key."""

    size: int
    sketch: Geometry
    photo: Geometry
    mean: tuple[float, float, float] = HALF
    std: tuple[float, float, float] = HALF
    ink_threshold: int = 300
    ink_margin: int = 10

    @property
    def normalisation(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """(mean, std) applied to the 8-bit pixels."""
        return self.mean, self.std

    def pixels(self, image: Image.Image, modality: str) -> Image.Image:
        """The 8-bit RGB size x size image before normalisation (crop, resize, pad)."""
        geometry = self.sketch if modality == "sketch" else self.photo
        return geometry.pixels(image, self.size, self.ink_threshold, self.ink_margin)

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
