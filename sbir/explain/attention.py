"""[Ret] attention maps per head (docs/explain.md#ret-attention-maps).

Row 0 of the last self-attention block's softmax (the [Ret] query) restricted to the patch
columns gives one grid x grid map per head. Under EViT the kept tokens are placed back at their
original patch positions and dropped patches read 0. Values are *not* renormalised: each head's
map sums to 1 minus the [Ret] token's attention to itself, so it is at most 1.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from sbir.explain.render import check_image, hsv_colours, to_pil, upsample_nearest
from sbir.models.zse.model import ZSEEncoding

DEFAULT_TOP_FRACTION = 0.1  # the paper does not publish k; default to 10 % of the patches


def ret_attention_maps(encoding: ZSEEncoding, grid: int, index: int = 0) -> np.ndarray:
    """Heads x grid x grid [Ret]-query attention over patches for image `index` of an encoding."""
    if encoding.last_attn is None or encoding.positions is None:
        raise ValueError("the encoding has no attention weights; encode with model.encode(..., need_weights=True)")
    if not 0 <= index < len(encoding):
        raise IndexError(f"image index {index} out of range for an encoding of {len(encoding)} images")
    attn = encoding.last_attn[index].detach().float().cpu()  # H x (1+k) x (1+k)
    positions = encoding.positions[index].detach().cpu()  # k
    heads, k = attn.shape[0], positions.shape[0]
    if attn.shape[-1] != k + 1:
        raise ValueError(f"last_attn has {attn.shape[-1]} columns but positions lists {k} kept patches (+1 [Ret])")
    if k and int(positions.max()) >= grid * grid:
        raise ValueError(f"patch position {int(positions.max())} does not fit a {grid} x {grid} grid; check `grid`")
    maps = np.zeros((heads, grid * grid), dtype=np.float32)
    maps[:, positions.numpy()] = attn[:, 0, 1:].numpy()
    return maps.reshape(heads, grid, grid)


def default_top_k(num_patches: int) -> int:
    """The overlay's default k: 10 % of the patches, at least one."""
    return max(1, round(DEFAULT_TOP_FRACTION * num_patches))


def top_k_cells(maps: np.ndarray, top_k: int) -> np.ndarray:
    """Heads x grid x grid boolean mask of each head's top-k cells (ties -> lower index; zeros never kept)."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    heads = maps.shape[0]
    flat = maps.reshape(heads, -1)
    order = np.argsort(-flat, axis=1, kind="stable")[:, :top_k]
    mask = np.zeros_like(flat, dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    # Dropped EViT patches (exactly 0) are never highlighted, even when k exceeds the kept count.
    return (mask & (flat > 0)).reshape(maps.shape)


def render_attention_overlay(
    image: np.ndarray,
    maps: np.ndarray,
    patch_size: int,
    top_k: int | None = None,
    alpha: float = 0.5,
    scale: int = 1,
) -> Image.Image:
    """Blend one HSV-hue colour per head over its top-k patches (nearest-upsampled), heads in order."""
    if maps.ndim != 3 or maps.shape[1] != maps.shape[2]:
        raise ValueError(f"maps must be heads x grid x grid, got shape {maps.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    heads, grid = maps.shape[0], maps.shape[1]
    check_image(image, grid * patch_size)
    keep = top_k_cells(maps, top_k if top_k is not None else default_top_k(grid * grid))
    colours = hsv_colours(heads).astype(np.float32)
    out = image.astype(np.float32)
    for h in range(heads):
        pixels = upsample_nearest(keep[h], patch_size)
        out[pixels] = (1.0 - alpha) * out[pixels] + alpha * colours[h]
    return to_pil(out.round().clip(0, 255).astype(np.uint8), scale)
