"""Score queries against a gallery in every requested mode and compute every named metric.

Shared by validation inside the training loop and by ``sbir eval``: both build a gallery
(``sbir.inference.gallery``) and call :func:`evaluate_gallery`, so a saved gallery that serving
searches ranks exactly as evaluation scored it. Scoring runs on the gallery's device; only the
finished score matrices come back to the CPU for the metrics.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from sbir.config import EvalConfig
from sbir.errors import SbirError
from sbir.inference.gallery import Gallery
from sbir.metrics import compute_metrics
from sbir.models.encoding import Encoding


@dataclass
class Evaluation:
    """Metrics per mode, the (CPU, float32) score matrices they came from (kept for reports), and the
    seconds each mode took to score."""

    metrics: dict[str, dict[str, float]]
    scores: dict[str, torch.Tensor]
    seconds: dict[str, float] = field(default_factory=dict)


def pair_index(query_pairs: Sequence[str | None], gallery_pairs: Sequence[str | None]) -> np.ndarray | None:
    """Gallery column of each query's paired photo (fine-grained), or None when not every query has one."""
    column = {str(p): i for i, p in enumerate(gallery_pairs) if p}
    index = [column.get(str(p), -1) if p else -1 for p in query_pairs]
    return None if not index or min(index) < 0 else np.asarray(index, dtype=np.int64)


def evaluate_gallery(
    gallery: Gallery,
    queries: Encoding,
    query_labels: np.ndarray,
    modes: Sequence[str],
    eval_cfg: EvalConfig,
    pairs: np.ndarray | None = None,
) -> Evaluation:
    """Every metric variant for each retrieval mode (``pairs`` adds the fine-grained accuracies)."""
    if len(query_labels) == 0 or len(gallery) == 0:
        raise SbirError(f"nothing to evaluate: {len(query_labels)} sketches, {len(gallery)} photos")
    metrics: dict[str, dict[str, float]] = {}
    scores: dict[str, torch.Tensor] = {}
    seconds: dict[str, float] = {}
    for mode in modes:
        started = time.perf_counter()
        matrix = (
            gallery.score_matrix(queries, mode, rerank_k=eval_cfg.rerank_k, precision=eval_cfg.eval_precision)
            .float()
            .cpu()
        )
        scores[mode] = matrix
        seconds[mode] = time.perf_counter() - started
        metrics[mode] = compute_metrics(
            matrix.numpy(),
            query_labels,
            gallery.class_ids,
            tie_break=eval_cfg.tie_break,
            tie_seed=eval_cfg.tie_seed,
            query_chunk=eval_cfg.query_chunk,
            pair_index=pairs,
        )
    return Evaluation(metrics, scores, seconds)
