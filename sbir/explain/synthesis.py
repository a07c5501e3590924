"""Sketch -> photo synthesis by patch replacement (docs/explain.md#patch-replacement-synthesis).

For each sketch cell i = (r, c) a photo cell j* is chosen from the affinity M (argmax of row i,
or a one-to-one Hungarian assignment), and the photo's patch_size x patch_size pixel block at
(p*floor(j*/g), p*(j* mod g)) is copied, unblended, into output cell (p*r, p*c). By default every
cell is replaced, blank ones included ("universal replacement").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from sbir.explain.render import check_image, to_pil

logger = logging.getLogger(__name__)

Assignment = Literal["argmax", "hungarian"]
NOT_REPLACED = -1


@dataclass
class Synthesis:
    """The synthesised image and, per sketch cell, the photo cell its pixels were copied from."""

    image: np.ndarray  # H x W x 3 uint8
    source: np.ndarray  # grid x grid int64 photo cell index (row-major), NOT_REPLACED (-1) = filled
    assignment: str
    restrict_to_kept: bool


def assign_sources(
    affinity: np.ndarray,
    assignment: Assignment = "argmax",
    sketch_kept: np.ndarray | None = None,
    photo_kept: np.ndarray | None = None,
    restrict_to_kept: bool = False,
) -> np.ndarray:
    """Photo cell per sketch cell (N int64, -1 = none) by row argmax or maximum-affinity one-to-one matching.

    With `restrict_to_kept`, only EViT-kept sketch cells are replaced and only kept photo cells are
    sources. Hungarian assigns each photo cell at most once; with more sketch than photo candidates
    the unmatched sketch cells get -1.
    """
    if affinity.ndim != 2 or affinity.shape[0] != affinity.shape[1]:
        raise ValueError(f"affinity must be N x N (sketch cells x photo cells), got shape {affinity.shape}")
    n = affinity.shape[0]
    rows = np.arange(n)
    cols = np.arange(n)
    if restrict_to_kept:
        if sketch_kept is not None:
            rows = np.flatnonzero(sketch_kept)
        if photo_kept is not None:
            cols = np.flatnonzero(photo_kept)
    if cols.size == 0:
        raise ValueError("no photo cell is available as a source (every photo patch was dropped)")
    source = np.full(n, NOT_REPLACED, dtype=np.int64)
    sub = affinity[np.ix_(rows, cols)].astype(np.float64)
    if assignment == "argmax":
        source[rows] = cols[np.argmax(sub, axis=1)]  # ties -> lowest photo cell index
    elif assignment == "hungarian":
        try:
            from scipy.optimize import linear_sum_assignment
        except ImportError as exc:  # scipy is optional for the package
            raise ImportError("assignment='hungarian' needs scipy; install it (pip install scipy)") from exc
        r, c = linear_sum_assignment(sub, maximize=True)
        source[rows[r]] = cols[c]
        if r.size < rows.size:
            logger.info("hungarian: %d sketch cells left unmatched (fewer photo cells)", rows.size - r.size)
    else:
        raise ValueError(f"unknown assignment {assignment!r}; expected 'argmax' or 'hungarian'")
    return source


def synthesize(
    photo_image: np.ndarray,
    affinity: np.ndarray,
    patch_size: int,
    assignment: Assignment = "argmax",
    sketch_kept: np.ndarray | None = None,
    photo_kept: np.ndarray | None = None,
    restrict_to_kept: bool = False,
    fill: int = 255,
) -> Synthesis:
    """Replace every sketch cell by its assigned photo patch; unassigned cells get the constant `fill`."""
    grid = round(affinity.shape[0] ** 0.5)
    if grid * grid != affinity.shape[0]:
        raise ValueError(f"affinity has {affinity.shape[0]} rows, which is not a square grid of cells")
    check_image(photo_image, grid * patch_size, "photo_image")
    source = assign_sources(affinity, assignment, sketch_kept, photo_kept, restrict_to_kept)
    p = patch_size
    out = np.full_like(photo_image, fill)
    for i, j in enumerate(source):
        if j == NOT_REPLACED:
            continue
        (r, c), (jr, jc) = divmod(i, grid), divmod(int(j), grid)
        out[p * r : p * (r + 1), p * c : p * (c + 1)] = photo_image[p * jr : p * (jr + 1), p * jc : p * (jc + 1)]
    return Synthesis(out, source.reshape(grid, grid), assignment, restrict_to_kept)


def render_synthesis(synthesis: Synthesis, scale: int = 1) -> Image.Image:
    """The synthesised image as a PIL image (nearest-upscaled by `scale`)."""
    return to_pil(synthesis.image, scale)
