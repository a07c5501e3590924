"""Sketch-token -> photo-token correspondences from the cross-attention (docs/explain.md#token-correspondences).

Method ``attention``: take the CA attention whose *queries are sketch tokens and keys are photo
tokens*, drop the [Ret] row and column, average the heads and renormalise each row over the
photo patches, giving an N x N row-stochastic matrix M[i, j] (sketch cell i -> photo cell j).

- ``q_own_k_other_v_own`` (released code): the sketch branch computes softmax(Q_sketch K_photo^T),
  so its attention (``RelationOutput.sketch_attn``) already has sketch rows and photo columns.
- ``q_other_kv_own`` (paper figure): the sketch branch is softmax(Q_photo K_sketch^T), i.e. photo
  rows, normalised over *sketch* columns; transposing it would give sketch rows that are not
  distributions. The photo branch is softmax(Q_sketch K_photo^T): its queries are the sketch tokens
  and its softmax runs over photo tokens, so ``RelationOutput.photo_attn`` is used as is (the
  "appropriate transpose" is the identity).

Method ``cosine``: cosine similarity between post-CA patch tokens of the two branches (raw scores
in [-1, 1], not a distribution), recomputed through ``model.ca.encoder`` because
``RelationOutput`` only keeps the post-CA [Ret] features.

The relation-token matrix (``RelationOutput.kernel``) is never used: under ``reshape_scramble``
its tokens are global mixtures, not spatial cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sbir.explain.render import (
    cell_centre,
    check_image,
    draw_segments,
    hsv_colours,
    side_by_side,
    to_pil,
)
from sbir.models.zse.model import ZSESBIR, RelationOutput, ZSEEncoding

Method = Literal["attention", "cosine"]
WIRINGS = ("q_own_k_other_v_own", "q_other_kv_own")


@dataclass
class Correspondence:
    """N x N sketch-cell -> photo-cell affinity and its top-m photo cells per sketch cell."""

    method: str  # "attention" (row-stochastic) or "cosine" (raw cosine in [-1, 1])
    matrix: np.ndarray  # N x N float32, rows = sketch cells, columns = photo cells (row-major cells)
    top_index: np.ndarray  # N x m int64 photo cell indices, best first
    top_score: np.ndarray  # N x m float32 matching values of `matrix`
    sketch_kept: np.ndarray  # N bool, False for sketch patches EViT dropped
    photo_kept: np.ndarray  # N bool, False for photo patches EViT dropped


def kept_mask(encoding: ZSEEncoding, index: int, num_patches: int) -> np.ndarray:
    """N boolean keep mask of image `index` (all True when EViT kept every patch)."""
    if encoding.mask is None:
        return np.ones(num_patches, dtype=bool)
    return encoding.mask[index].detach().cpu().numpy().astype(bool)


def sketch_query_attention(relation: RelationOutput, wiring: str, layer: int = -1, index: int = 0) -> torch.Tensor:
    """Heads x (1+N) x (1+N) CA attention with sketch-token queries (rows) over photo-token keys."""
    if wiring not in WIRINGS:
        raise ValueError(f"unknown ca_wiring {wiring!r}; expected one of {WIRINGS}")
    # See the module docstring: the branch whose queries are sketch tokens depends on the wiring.
    layers = relation.sketch_attn if wiring == "q_own_k_other_v_own" else relation.photo_attn
    if not -len(layers) <= layer < len(layers):
        raise IndexError(f"CA layer {layer} out of range for {len(layers)} cross-attention layer(s)")
    attn = layers[layer]
    if not 0 <= index < attn.shape[0]:
        raise IndexError(f"pair index {index} out of range for a relation batch of {attn.shape[0]}")
    return attn[index].detach().float().cpu()


def attention_correspondence(
    relation: RelationOutput, wiring: str, layer: int = -1, index: int = 0, renormalize: bool = True
) -> np.ndarray:
    """N x N head-averaged sketch->photo CA attention without [Ret]; rows renormalised over patches."""
    attn = sketch_query_attention(relation, wiring, layer, index)[:, 1:, 1:].mean(dim=0)
    matrix = attn.numpy().astype(np.float64)
    if renormalize:
        total = matrix.sum(axis=1, keepdims=True)
        matrix = np.divide(matrix, total, out=np.zeros_like(matrix), where=total > 0)
    return matrix.astype(np.float32)


def post_ca_patch_tokens(model: ZSESBIR, sketch: ZSEEncoding, photo: ZSEEncoding) -> tuple[torch.Tensor, torch.Tensor]:
    """Post-CA patch tokens (B x N x D each) of the sketch and photo branches, as ``relate`` computes them."""
    s, p, _, _ = model.cross_attend(sketch, photo)
    return s[:, 1:], p[:, 1:]


def cosine_correspondence(model: ZSESBIR, sketch: ZSEEncoding, photo: ZSEEncoding, index: int = 0) -> np.ndarray:
    """N x N cosine similarity between post-CA sketch patch tokens (rows) and photo patch tokens."""
    if not 0 <= index < len(sketch) or len(sketch) != len(photo):
        raise IndexError(f"pair index {index} invalid for {len(sketch)} sketches and {len(photo)} photos")
    pick = slice(index, index + 1)
    with torch.no_grad():
        s, p = post_ca_patch_tokens(model, sketch.select(pick), photo.select(pick))
    s = F.normalize(s[0].float(), dim=-1)
    p = F.normalize(p[0].float(), dim=-1)
    return (s @ p.T).cpu().numpy().astype(np.float32)


def top_matches(matrix: np.ndarray, top_m: int, photo_kept: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-m photo cells per sketch row (N x m indices, N x m scores); dropped photo cells never rank."""
    if matrix.ndim != 2:
        raise ValueError(f"matrix must be 2-D (sketch cells x photo cells), got shape {matrix.shape}")
    if top_m < 1:
        raise ValueError(f"top_m must be >= 1, got {top_m}")
    candidates = np.arange(matrix.shape[1]) if photo_kept is None else np.flatnonzero(photo_kept)
    if candidates.size == 0:
        raise ValueError("no photo cell is kept, so there is nothing to match")
    sub = matrix[:, candidates]
    m = min(top_m, candidates.size)
    order = np.argsort(-sub, axis=1, kind="stable")[:, :m]  # ties -> lower cell index
    return candidates[order].astype(np.int64), np.take_along_axis(sub, order, axis=1).astype(np.float32)


def sketch_to_photo(
    model: ZSESBIR,
    sketch: ZSEEncoding,
    photo: ZSEEncoding,
    method: Method = "attention",
    top_m: int = 5,
    layer: int = -1,
    index: int = 0,
    relation: RelationOutput | None = None,
) -> Correspondence:
    """Correspondences for pair `index`; pass `relation` (from ``model.relate``) to avoid recomputing it."""
    n = model.cfg.num_patches
    if method == "attention":
        if relation is None:
            with torch.no_grad():
                relation = model.relate(sketch, photo)
        matrix = attention_correspondence(relation, model.cfg.ca_wiring, layer, index)
    elif method == "cosine":
        matrix = cosine_correspondence(model, sketch, photo, index)
    else:
        raise ValueError(f"unknown correspondence method {method!r}; expected 'attention' or 'cosine'")
    sketch_kept = kept_mask(sketch, index, n)
    photo_kept = kept_mask(photo, index, n)
    top_index, top_score = top_matches(matrix, top_m, photo_kept)
    return Correspondence(method, matrix, top_index, top_score, sketch_kept, photo_kept)


def strongest_pairs(corr: Correspondence, count: int) -> list[tuple[int, int]]:
    """The `count` (sketch cell, photo cell) top-1 pairs with the highest scores, kept sketch cells only."""
    rows = np.flatnonzero(corr.sketch_kept)
    order = np.argsort(-corr.top_score[rows, 0], kind="stable")[:count]
    return [(int(rows[o]), int(corr.top_index[rows[o], 0])) for o in order]


def render_correspondences(
    sketch_image: np.ndarray,
    photo_image: np.ndarray,
    corr: Correspondence,
    patch_size: int,
    lines: int = 12,
    gap: int | None = None,
    scale: int = 1,
) -> Image.Image:
    """Sketch | photo side by side, with a line from each of the strongest sketch cells to its top-1 photo cell."""
    grid = round(corr.matrix.shape[0] ** 0.5)
    size = grid * patch_size
    check_image(sketch_image, size, "sketch_image")
    check_image(photo_image, size, "photo_image")
    gap = patch_size if gap is None else gap
    canvas = to_pil(side_by_side(sketch_image, photo_image, gap), scale)
    pairs = strongest_pairs(corr, lines)
    if not pairs:
        return canvas
    offset = (size + gap) * scale
    segments = []
    for i, j in pairs:
        sx, sy = cell_centre(i, grid, patch_size)
        px, py = cell_centre(j, grid, patch_size)
        segments.append(((sx * scale, sy * scale), (px * scale + offset, py * scale)))
    return draw_segments(canvas, segments, hsv_colours(len(pairs)), width=max(1, scale), radius=1 + scale)
