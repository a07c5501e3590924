"""Image helpers shared by the explainability renders: de-normalisation, colours, grids and PNGs.

Everything here is deterministic (no anti-aliasing, no PNG metadata), so identical arrays give
identical PNG bytes.
"""

from __future__ import annotations

import colorsys
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

# Model inputs are normalised with mean 0.5 and std 0.5 per channel, i.e. they lie in [-1, 1].
NORM_MEAN = 0.5
NORM_STD = 0.5


def denormalize(image: torch.Tensor) -> np.ndarray:
    """A normalised 3 x H x W (or 1 x 3 x H x W) tensor in [-1, 1] -> H x W x 3 uint8 for rendering."""
    if image.dim() == 4:
        if image.shape[0] != 1:
            raise ValueError(f"denormalize takes one image, got a batch of {image.shape[0]}; index it first")
        image = image[0]
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a 3 x H x W image tensor, got shape {tuple(image.shape)}")
    pixels = (image.detach().float().cpu() * NORM_STD + NORM_MEAN).clamp(0.0, 1.0)
    return (pixels.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)


def hsv_colours(count: int) -> np.ndarray:
    """`count` RGB colours (count x 3 uint8) at evenly spaced HSV hues, full saturation and value."""
    if count < 1:
        raise ValueError(f"need at least one colour, got count={count}")
    rgb = [colorsys.hsv_to_rgb(i / count, 1.0, 1.0) for i in range(count)]
    return (np.asarray(rgb) * 255.0).round().astype(np.uint8)


def upsample_nearest(grid_map: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upsampling of the two leading axes by an integer factor (cells -> pixel blocks)."""
    if factor < 1:
        raise ValueError(f"upsampling factor must be >= 1, got {factor}")
    return np.repeat(np.repeat(grid_map, factor, axis=0), factor, axis=1)


def check_image(image: np.ndarray, size: int, name: str = "image") -> np.ndarray:
    """Validate an H x W x 3 uint8 image of the model's input size (renders and synthesis need it)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != (size, size):
        raise ValueError(f"{name} must be {size} x {size} x 3 (H x W x RGB), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 (use sbir.explain.render.denormalize), got {image.dtype}")
    return image


def cell_centre(index: int, grid: int, patch_size: int) -> tuple[float, float]:
    """(x, y) pixel centre of row-major cell `index` on a grid x grid layout of patch_size blocks."""
    row, col = divmod(int(index), grid)
    return (col + 0.5) * patch_size, (row + 0.5) * patch_size


def to_pil(image: np.ndarray, scale: int = 1) -> Image.Image:
    """H x W x 3 uint8 array -> PIL image, nearest-upscaled by an integer factor for visibility."""
    return Image.fromarray(upsample_nearest(image, scale) if scale > 1 else image, mode="RGB")


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int, background: int = 255) -> np.ndarray:
    """[left | gap | right] on a constant background; both images must have the same height."""
    if left.shape[0] != right.shape[0]:
        raise ValueError(f"side_by_side needs equal heights, got {left.shape[0]} and {right.shape[0]}")
    h = left.shape[0]
    out = np.full((h, left.shape[1] + gap + right.shape[1], 3), background, dtype=np.uint8)
    out[:, : left.shape[1]] = left
    out[:, left.shape[1] + gap :] = right
    return out


def draw_segments(
    image: Image.Image,
    segments: list[tuple[tuple[float, float], tuple[float, float]]],
    colours: np.ndarray,
    width: int = 1,
    radius: int = 2,
) -> Image.Image:
    """Draw coloured line segments with a dot at each end (aliased, hence byte-deterministic)."""
    draw = ImageDraw.Draw(image)
    for (start, end), colour in zip(segments, colours, strict=True):
        fill = tuple(int(c) for c in colour)
        draw.line([start, end], fill=fill, width=width)
        for x, y in (start, end):
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill)
    return image


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write a PNG without metadata (so equal images give equal bytes), creating parent directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=False)
    logger.debug("wrote %s (%dx%d)", path, image.width, image.height)
    return path
