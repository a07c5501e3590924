"""Explainability outputs for ZSE-SBIR (docs/explain.md): [Ret] attention maps, sketch->photo token
correspondences, and sketch->photo synthesis by patch replacement.

``explain_pair`` computes all three for one (sketch, retrieved photo) pair; ``save_explanation``
writes them as PNGs. The building blocks live in ``attention``, ``correspondence``, ``synthesis``
and ``render``. See docs/explain.md.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sbir.explain.attention import default_top_k, render_attention_overlay, ret_attention_maps
from sbir.explain.correspondence import (
    Correspondence,
    Method,
    render_correspondences,
    sketch_to_photo,
)
from sbir.explain.render import denormalize, save_png
from sbir.explain.synthesis import Assignment, Synthesis, render_synthesis, synthesize
from sbir.models.zse.model import ZSESBIR

logger = logging.getLogger(__name__)

__all__ = [
    "Correspondence",
    "Explanation",
    "Synthesis",
    "explain_pair",
    "explanation_images",
    "render_explanation_pngs",
    "save_explanation",
]


@dataclass
class Explanation:
    """Every explainability array for one sketch/photo pair, plus what is needed to render it."""

    sketch_image: np.ndarray  # H x W x 3 uint8, de-normalised input
    photo_image: np.ndarray  # H x W x 3 uint8
    sketch_attention: np.ndarray  # heads x grid x grid [Ret] attention over patches (last SA block)
    photo_attention: np.ndarray  # heads x grid x grid
    correspondence: Correspondence  # N x N sketch->photo affinity + top-m photo cells per sketch cell
    synthesis: Synthesis  # patch-replacement image + source cell per sketch cell
    score: float  # relation score r(sketch, photo) in (0, 1)
    patch_size: int
    top_k: int  # patches highlighted per head in the attention overlays


def _as_batch(image: torch.Tensor, size: int, name: str, device: torch.device) -> torch.Tensor:
    """3 x H x W or 1 x 3 x H x W normalised image -> 1 x 3 x H x W on the model's device."""
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[0] != 1 or tuple(image.shape[1:]) != (3, size, size):
        raise ValueError(
            f"{name} must be one normalised image of shape 3x{size}x{size} (or 1x3x{size}x{size}), "
            f"got {tuple(image.shape)}; preprocess it to the model's image_size first"
        )
    return image.to(device=device, dtype=torch.float32)


@torch.no_grad()
def explain_pair(
    model: ZSESBIR,
    sketch: torch.Tensor,
    photo: torch.Tensor,
    *,
    method: Method = "attention",
    top_m: int = 5,
    top_k: int | None = None,
    assignment: Assignment = "argmax",
    restrict_to_kept: bool = False,
    layer: int = -1,
) -> Explanation:
    """Attention maps, correspondences and synthesis for a sketch and its (retrieved) photo.

    Inputs are normalised tensors in [-1, 1] (mean 0.5, std 0.5). The model must be in eval mode
    so dropout does not make the explanation random.
    """
    if model.training:
        raise ValueError("the model is in training mode (dropout is active); call model.eval() before explaining")
    cfg = model.cfg
    device = next(model.parameters()).device
    sketch_b = _as_batch(sketch, cfg.image_size, "sketch", device)
    photo_b = _as_batch(photo, cfg.image_size, "photo", device)
    sketch_enc = model.encode(sketch_b, "sketch", need_weights=True)
    photo_enc = model.encode(photo_b, "photo", need_weights=True)
    relation = model.relate(sketch_enc, photo_enc)
    corr = sketch_to_photo(model, sketch_enc, photo_enc, method, top_m, layer, relation=relation)
    photo_image = denormalize(photo_b[0])
    synthesis = synthesize(
        photo_image,
        corr.matrix,
        cfg.patch_size,
        assignment,
        corr.sketch_kept,
        corr.photo_kept,
        restrict_to_kept,
    )
    expl = Explanation(
        sketch_image=denormalize(sketch_b[0]),
        photo_image=photo_image,
        sketch_attention=ret_attention_maps(sketch_enc, cfg.grid),
        photo_attention=ret_attention_maps(photo_enc, cfg.grid),
        correspondence=corr,
        synthesis=synthesis,
        score=float(relation.score[0]),
        patch_size=cfg.patch_size,
        top_k=top_k if top_k is not None else default_top_k(cfg.num_patches),
    )
    logger.debug("explained pair: score %.4f, method %s, assignment %s", expl.score, method, assignment)
    return expl


def explanation_images(expl: Explanation, *, scale: int = 1, lines: int = 12) -> dict[str, Image.Image]:
    """The four pictures of an explanation: attention overlays, correspondence lines, patch synthesis."""
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    p = expl.patch_size
    return {
        "sketch_attention": render_attention_overlay(
            expl.sketch_image, expl.sketch_attention, p, expl.top_k, scale=scale
        ),
        "photo_attention": render_attention_overlay(expl.photo_image, expl.photo_attention, p, expl.top_k, scale=scale),
        "correspondences": render_correspondences(
            expl.sketch_image, expl.photo_image, expl.correspondence, p, lines=lines, scale=scale
        ),
        "synthesis": render_synthesis(expl.synthesis, scale=scale),
    }


def render_explanation_pngs(expl: Explanation, *, scale: int = 2, arrays: bool = False) -> dict[str, Any]:
    """The explanation as PNG bytes by name (for the endpoint), with the relation score and, when asked,
    the raw arrays as nested lists (attention maps, correspondence matrix and top cells, synthesis sources)."""
    out: dict[str, Any] = {"score": expl.score, "png": {}}
    for name, image in explanation_images(expl, scale=scale).items():
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        out["png"][name] = buffer.getvalue()
    if arrays:
        corr = expl.correspondence
        out["arrays"] = {
            "sketch_attention": expl.sketch_attention.tolist(),
            "photo_attention": expl.photo_attention.tolist(),
            "correspondence": corr.matrix.tolist(),
            "top_index": corr.top_index.tolist(),
            "top_score": corr.top_score.tolist(),
            "synthesis_source": expl.synthesis.source.tolist(),
        }
    return out


def save_explanation(
    expl: Explanation, out_dir: str | Path, *, scale: int = 1, lines: int = 12, arrays: bool = False
) -> list[Path]:
    """Write the attention overlays, correspondence lines and synthesis as PNGs (and optionally an .npz)."""
    out = Path(out_dir)
    images = explanation_images(expl, scale=scale, lines=lines)
    paths = [save_png(image, out / f"{name}.png") for name, image in images.items()]
    if arrays:
        corr = expl.correspondence
        npz = out / "explanation.npz"
        np.savez_compressed(
            npz,
            sketch_attention=expl.sketch_attention,
            photo_attention=expl.photo_attention,
            correspondence=corr.matrix,
            top_index=corr.top_index,
            top_score=corr.top_score,
            sketch_kept=corr.sketch_kept,
            photo_kept=corr.photo_kept,
            synthesis=expl.synthesis.image,
            synthesis_source=expl.synthesis.source,
            score=np.float32(expl.score),
        )
        paths.append(npz)
    logger.debug("wrote %d explanation files to %s", len(paths), out)
    return paths
