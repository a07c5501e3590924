"""Score queries against a gallery in every requested mode and compute every named metric.

Shared by validation inside the training loop and by ``sbir eval``: both build a gallery
(``sbir.inference.gallery``) and call :func:`evaluate_gallery`, so a saved gallery that serving
searches ranks exactly as evaluation scored it. Scoring runs on the gallery's device; only the
finished score matrices come back to the CPU for the metrics.
"""

from __future__ import annotations

import logging
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

logger = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Metrics per mode, the (CPU, float32) score matrices they came from (kept for reports), and the
    seconds each mode took to score."""

    metrics: dict[str, dict[str, float]]
    scores: dict[str, torch.Tensor]
    seconds: dict[str, float] = field(default_factory=dict)


def pair_index(query_pairs: Sequence[str | None], gallery_pairs: Sequence[str | None]) -> np.ndarray | None:
    """Gallery column of each query's paired photo (the first photo with its pair id), -1 for a query whose
    photo is not in the gallery or that has no pair id; None when no query has a pair id (category level)."""
    if not any(query_pairs):
        return None
    column: dict[str, int] = {}
    for i, p in enumerate(gallery_pairs):
        if p:
            column.setdefault(str(p), i)
    return np.asarray([column.get(str(p), -1) if p else -1 for p in query_pairs], dtype=np.int64)


def fine_grained_metrics(
    scores: np.ndarray,
    query_labels: np.ndarray,
    query_pairs: Sequence[str | None],
    gallery: Gallery,
    eval_cfg: EvalConfig,
) -> dict[str, float]:
    """``acc_K`` on the two fine-grained galleries (docs/metrics.md#fine-grained-galleries).

    ``pooled``: every photo with a pair id, each pair id once (copies and unpaired photos, such as Sketchy's
    EXTEND photos, are left out). ``in_class``: of those, only the photos of the query's own class. Queries
    whose photo is in neither are counted (``n_queries_no_pair``), not scored.
    """
    seen: set[str] = set()
    columns = []
    for i, item in enumerate(gallery.items):
        if item.pair_id and item.pair_id not in seen:
            seen.add(item.pair_id)
            columns.append(i)
    if not columns:
        return {}
    columns_arr = np.asarray(columns)
    pooled = scores[:, columns_arr]
    pairs = pair_index(query_pairs, [gallery.items[i].pair_id for i in columns])
    if pairs is None or not (pairs >= 0).any():
        return {}
    other_class = np.asarray(query_labels)[:, None] != gallery.class_ids[columns_arr][None, :]
    in_class = np.where(other_class, -np.inf, pooled)
    out: dict[str, float] = {}
    for name, matrix in (("pooled", pooled), ("in_class", in_class)):
        found = compute_metrics(
            matrix, None, None, pair_index=pairs, tie_break=eval_cfg.tie_break, tie_seed=eval_cfg.tie_seed
        )
        out |= {f"{k}_{name}": v for k, v in found.items() if k.startswith("acc_")}
        out |= {k: v for k, v in found.items() if k.startswith("n_queries_") and "pair" in k}
    return out


def evaluate_gallery(
    gallery: Gallery,
    queries: Encoding,
    query_labels: np.ndarray,
    modes: Sequence[str],
    eval_cfg: EvalConfig,
    query_pairs: Sequence[str | None] | None = None,
) -> Evaluation:
    """Every metric variant for each retrieval mode; the queries' pair ids add the fine-grained
    accuracies on both fine-grained galleries."""
    if len(query_labels) == 0 or len(gallery) == 0:
        raise SbirError(f"nothing to evaluate: {len(query_labels)} sketches, {len(gallery)} photos")
    metrics: dict[str, dict[str, float]] = {}
    scores: dict[str, torch.Tensor] = {}
    seconds: dict[str, float] = {}
    for mode in modes:
        estimate = gallery.exhaustive_seconds(queries, mode)
        if estimate is not None:
            logger.info(
                "scoring %s exhaustively: %d sketches x %d photos = %s pairs, estimated %.0f s",
                mode,
                len(queries),
                len(gallery),
                f"{len(queries) * len(gallery):,}",
                estimate,
            )
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
        )
        if query_pairs is not None:
            metrics[mode] |= fine_grained_metrics(matrix.numpy(), query_labels, query_pairs, gallery, eval_cfg)
    return Evaluation(metrics, scores, seconds)
