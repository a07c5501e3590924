"""Interpolated precision-recall curves from a score matrix, and their plot as a PNG.

The curve is the standard interpolated PR curve: at recall level r the precision is the highest precision
at any rank whose recall is at least r, averaged over the queries that have at least one relevant item.
Within a row, equal scores are ordered by gallery index (lower first), so the curve is deterministic.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def _score_rows(scores: Any, q0: int, q1: int) -> np.ndarray:
    """Rows q0:q1 as a float NumPy array; accepts NumPy arrays and (CPU or GPU) torch tensors."""
    rows = scores[q0:q1]
    if hasattr(rows, "detach"):  # torch tensor, without importing torch here
        rows = rows.detach().float().cpu().numpy()
    rows = np.asarray(rows)
    if not np.issubdtype(rows.dtype, np.floating) or rows.dtype.itemsize < 4:
        rows = rows.astype(np.float64)
    return rows


def _check_labels(labels: Any, name: str, length: int) -> np.ndarray:
    """A 1-D label array of the given length (torch tensors are converted)."""
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != length:
        raise ValueError(f"{name} must be 1-D with {length} entries, got shape {arr.shape}")
    return arr


#: Rows with more tied relevant items than this are argsorted instead of counting ties item by item.
_TIE_SCAN_LIMIT = 32


def _relevant_ranks(row: np.ndarray, sorted_row: np.ndarray, relevant: np.ndarray) -> tuple[np.ndarray, bool]:
    """Ascending 1-based ranks of the relevant items of one row (best first, ties by lower index).

    rank_j = (items scoring higher) + (items with an equal score and a lower index) + 1. The first term
    comes from a binary search in the sorted values; the second is only non-zero for tied items, which
    are counted one by one, or, when there are many, read off a stable argsort. Returns (ranks, argsorted).
    """
    n_g = row.shape[0]
    by_value = np.argsort(row[relevant])  # sorted needles make the binary searches cache-friendly
    relevant = relevant[by_value]
    values = row[relevant]
    right = np.searchsorted(sorted_row, values, side="right")
    tied = np.flatnonzero(right - np.searchsorted(sorted_row, values, side="left") > 1)
    ranks = (n_g - right) + 1
    if tied.shape[0] > _TIE_SCAN_LIMIT:
        order = np.argsort(-row, kind="stable")
        position = np.empty(n_g, dtype=np.int64)
        position[order] = np.arange(1, n_g + 1)
        return np.sort(position[relevant]), True
    for t in tied:
        j = relevant[t]
        ranks[t] += np.count_nonzero(row[:j] == row[j])
    return np.sort(ranks), False


def _interpolated(ranks: np.ndarray, levels: np.ndarray, steps: int) -> np.ndarray:
    """Interpolated precision of one query at recall levels levels / steps, from its relevant ranks."""
    n_rel = ranks.shape[0]
    precision = np.arange(1, n_rel + 1) / ranks  # precision at the m-th hit
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at this hit or a later one
    # Recall >= i / steps first holds at hit ceil(i * R / steps); level 0 holds from rank 1, where the
    # best later precision is the envelope at the first hit. Precision between hits only falls, so
    # looking at hits alone gives the same maximum as looking at every rank.
    need = np.maximum(-((-levels * n_rel) // steps), 1)
    return envelope[need - 1]


def precision_recall_curve(
    scores: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    recall_points: int = 11,
    query_chunk: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean interpolated precision at `recall_points` evenly spaced recall levels 0..1 over all queries
    (standard 11-point interpolated PR, averaged over queries with at least one relevant item).
    Chunked over queries so a 15k x 17k score matrix fits in memory. Returns (recall, precision).

    Recall level i is i / (recall_points - 1); "recall >= level" is tested in integers
    (TP * (recall_points - 1) >= i * R), so levels such as 0.3 are not affected by rounding.
    Raises ValueError on bad shapes, NaN scores, or when no query has a relevant item.
    """
    if isinstance(recall_points, bool) or int(recall_points) != recall_points or recall_points < 2:
        raise ValueError(f"recall_points must be an integer >= 2, got {recall_points!r}")
    if isinstance(query_chunk, bool) or int(query_chunk) != query_chunk or query_chunk < 1:
        raise ValueError(f"query_chunk must be a positive integer, got {query_chunk!r}")
    if len(getattr(scores, "shape", ())) != 2:
        raise ValueError(f"scores must be a 2-D query x gallery matrix, got shape {getattr(scores, 'shape', None)}")
    n_q, n_g = int(scores.shape[0]), int(scores.shape[1])
    if n_g == 0:
        raise ValueError("the gallery is empty (scores has 0 columns)")
    q_labels = _check_labels(query_labels, "query_labels", n_q)
    g_labels = _check_labels(gallery_labels, "gallery_labels", n_g)
    steps = int(recall_points) - 1
    levels = np.arange(steps + 1, dtype=np.int64)
    total = np.zeros(steps + 1, dtype=np.float64)
    used = fallback = 0
    classes, g_inverse = np.unique(g_labels, return_inverse=True)
    members = [np.flatnonzero(g_inverse == c) for c in range(len(classes))]
    for q0 in range(0, n_q, int(query_chunk)):
        q1 = min(q0 + int(query_chunk), n_q)
        rows = _score_rows(scores, q0, q1)
        if np.isnan(rows).any():
            raise ValueError(f"scores contain NaN (in query rows {q0}..{q1 - 1})")
        sorted_rows = np.sort(rows, axis=1)  # values only: much faster than a (stable) argsort
        for i, label in enumerate(q_labels[q0:q1]):
            c = np.searchsorted(classes, label)
            if c >= len(classes) or classes[c] != label:
                continue  # no relevant item: excluded
            ranks, mixed = _relevant_ranks(rows[i], sorted_rows[i], members[c])
            fallback += mixed
            total += _interpolated(ranks, levels, steps)
            used += 1
    if used == 0:
        raise ValueError(
            "no query has a relevant gallery item: check that query and gallery labels use the same class ids"
        )
    if fallback:
        logger.debug("precision-recall curve: %d rows with many ties were argsorted", fallback)
    if used < n_q:
        logger.debug("precision-recall curve: %d of %d queries have no relevant item and are excluded", n_q - used, n_q)
    return levels / steps, total / used


def chance_precision(query_labels: Any, gallery_labels: Any) -> float:
    """Precision of a random ranking at every recall level: the mean share of relevant gallery items
    (R / G) over the queries that have any."""
    q = np.asarray(query_labels)
    g = np.asarray(gallery_labels)
    classes, counts = np.unique(g, return_counts=True)
    relevant = dict(zip(classes.tolist(), counts.tolist(), strict=True))
    shares = [relevant[label] / len(g) for label in q.tolist() if label in relevant]
    if not shares:
        raise ValueError("no query has a relevant gallery item")
    return float(np.mean(shares))


def plot_precision_recall(
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    path: str | Path,
    title: str = "",
    baselines: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    chance: float | None = None,
) -> Path:
    """One PNG with a line per named curve (e.g. {"zse/rn": (r, p), "zse/ret": (r, p)}); Agg backend, no display.

    ``baselines`` (e.g. the untrained model's curves) are drawn dashed and grey-toned, ``chance`` (see
    :func:`chance_precision`) as a dotted horizontal line. Uses an Agg canvas directly (no pyplot), so it
    never opens a window or changes the global backend. The PNG carries no software/date metadata.
    """
    if not curves:
        raise ValueError("plot_precision_recall needs at least one curve")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, (recall, precision) in curves.items():
        recall, precision = np.asarray(recall, dtype=float), np.asarray(precision, dtype=float)
        if recall.shape != precision.shape or recall.ndim != 1:
            raise ValueError(f"curve {name!r}: recall and precision must be 1-D of equal length")
        ax.plot(recall, precision, marker="o", markersize=3, linewidth=1.5, label=str(name))
    for name, (recall, precision) in (baselines or {}).items():
        ax.plot(recall, precision, linestyle="--", linewidth=1.2, alpha=0.7, label=str(name))
    if chance is not None:
        ax.axhline(chance, color="black", linestyle=":", linewidth=1.0, label=f"chance ({chance:.3f})")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("interpolated precision")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})
    logger.debug("wrote precision-recall plot %s", path)
    return path
