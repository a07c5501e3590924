"""Score a sketch query set against a photo gallery with a trained model and compute every metric.

Shared by validation inside the training loop and by ``sbir eval``; encodings may come from any
source (in-process here, Ray Data batch inference in ``pipelines.evaluate``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sbir.config import EvalConfig
from sbir.metrics import compute_metrics
from sbir.models.zse.model import ZSEEncoding

Encoding = ZSEEncoding | torch.Tensor  # ZSE-SBIR caches tokens; CLIP-AT has unit-norm embeddings


@dataclass
class Evaluation:
    """Metrics per mode and the score matrices they came from (kept for reports)."""

    metrics: dict[str, dict[str, float]]
    scores: dict[str, torch.Tensor]


def modes_for(method: str, modes: Sequence[str]) -> list[str]:
    """CLIP-AT is a bi-encoder: only ``ret`` applies; ZSE-SBIR uses the configured modes."""
    return list(modes) if method == "zse" else ["ret"]


@torch.no_grad()
def encode_images(model: nn.Module, method: str, images: torch.Tensor, modality: str, batch_size: int = 64) -> Encoding:
    """Encode normalised images in bounded batches (no gradients)."""
    parts = [model.encode(images[i : i + batch_size], modality) for i in range(0, len(images), batch_size)]
    if method == "zse":
        return ZSEEncoding.cat(parts)
    return torch.cat(parts) if parts else torch.zeros(0)


@torch.no_grad()
def score(model: nn.Module, method: str, sketches: Encoding, photos: Encoding, mode: str, eval_cfg: EvalConfig):
    """Q x G score matrix for one mode (higher = more similar; rank-faithful for ``rn_rerank``)."""
    if method == "zse":
        from sbir.retrieval.zse_search import ZSEGallery

        gallery = ZSEGallery(model, photos)  # type: ignore[arg-type]
        return gallery.score_matrix(sketches, mode, rerank_k=eval_cfg.rerank_k, precision=eval_cfg.eval_precision)
    if mode != "ret":
        raise ValueError(f"CLIP-AT supports only the 'ret' mode, got {mode!r}")
    return sketches @ photos.T  # type: ignore[operator]


def evaluate_encoded(
    model: nn.Module,
    method: str,
    sketches: Encoding,
    sketch_labels: np.ndarray,
    photos: Encoding,
    photo_labels: np.ndarray,
    eval_cfg: EvalConfig,
    modes: Sequence[str],
    pair_index: np.ndarray | None = None,
) -> Evaluation:
    """Every metric variant for each retrieval mode (``pair_index`` adds the fine-grained accuracies)."""
    if len(sketch_labels) == 0 or len(photo_labels) == 0:
        raise ValueError(f"nothing to evaluate: {len(sketch_labels)} sketches, {len(photo_labels)} photos")
    metrics: dict[str, dict[str, float]] = {}
    scores: dict[str, torch.Tensor] = {}
    model.eval()
    for mode in modes_for(method, modes):
        matrix = score(model, method, sketches, photos, mode, eval_cfg)
        scores[mode] = matrix
        metrics[mode] = compute_metrics(
            matrix.float().numpy(),
            sketch_labels,
            photo_labels,
            tie_break=eval_cfg.tie_break,
            tie_seed=eval_cfg.tie_seed,
            query_chunk=eval_cfg.query_chunk,
            pair_index=pair_index,
        )
    return Evaluation(metrics, scores)
