"""Pictures of retrieval results: top-k rankings, a spread-out choice of sample queries, and a grid image.

These are for looking at, not for scoring: the metrics in ``sbir.metrics`` use their own tie rule.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageOps

logger = logging.getLogger(__name__)

#: Width in pixels of the coloured frame around each gallery thumbnail.
FRAME = 4
#: Gap in pixels between cells and around the edge of the grid.
GAP = 6
#: Height in pixels of the caption band under each row: two text lines (rank and score, then the class).
LABEL_HEIGHT = 30
#: Side in pixels of the hit/miss mark drawn in each result's corner (a tick or a cross: not colour alone).
MARK = 12
#: Frame colours: same class as the query, a different class, and the query itself.
HIT_COLOUR = (0, 170, 0)
MISS_COLOUR = (215, 0, 0)
QUERY_COLOUR = (90, 90, 90)
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)

#: Query rows handled per chunk by :func:`top_k_rankings`, which keeps memory at a few chunk x G arrays.
_RANK_CHUNK = 256


def top_k_rankings(scores: np.ndarray, k: int) -> np.ndarray:
    """(n_queries, k) gallery indices, best first, ties broken by lower index (stable). For pictures, not metrics.

    k is capped at the gallery size. Torch tensors are accepted; NaN scores rank last.
    """
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if len(getattr(scores, "shape", ())) != 2:
        raise ValueError(f"scores must be a 2-D query x gallery matrix, got shape {getattr(scores, 'shape', None)}")
    n_q, n_g = int(scores.shape[0]), int(scores.shape[1])
    k = min(int(k), n_g)
    out = np.empty((n_q, k), dtype=np.int64)
    for q0 in range(0, n_q, _RANK_CHUNK):
        rows = scores[q0 : q0 + _RANK_CHUNK]
        if hasattr(rows, "detach"):  # torch tensor, without importing torch here
            rows = rows.detach().float().cpu().numpy()
        rows = np.asarray(rows, dtype=np.float64)
        out[q0 : q0 + rows.shape[0]] = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    return out


def sample_queries(query_labels: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """Indices of `count` queries spread over as many classes as possible, deterministic by seed.

    Classes are visited in a seeded random order, one query per class per round, so no class gets a second
    query before every class has one. count is capped at the number of queries; the result is sorted.
    """
    if isinstance(count, bool) or int(count) != count or count < 0:
        raise ValueError(f"count must be a non-negative integer, got {count!r}")
    labels = np.asarray(query_labels)
    if labels.ndim != 1:
        raise ValueError(f"query_labels must be 1-D, got shape {labels.shape}")
    count = min(int(count), labels.shape[0])
    rng = np.random.default_rng(seed)
    classes, inverse = np.unique(labels, return_inverse=True)
    pools = [rng.permutation(np.flatnonzero(inverse == c)) for c in range(len(classes))]
    class_order = rng.permutation(len(classes))
    chosen: list[int] = []
    depth = 0
    while len(chosen) < count:
        for c in class_order:
            if depth < len(pools[c]):
                chosen.append(int(pools[c][depth]))
                if len(chosen) == count:
                    break
        depth += 1
    return np.sort(np.asarray(chosen, dtype=np.int64))


def grid_size(n_rows: int, k: int, thumb: int = 96) -> tuple[int, int]:
    """(width, height) in pixels of a :func:`retrieval_grid` with n_rows queries and k results each."""
    cell = thumb + 2 * FRAME
    return (k + 1) * cell + (k + 2) * GAP, n_rows * (cell + LABEL_HEIGHT) + (n_rows + 1) * GAP


def _thumbnail(image: Any, thumb: int) -> Image.Image:
    """An RGB thumb x thumb copy of an image (PIL or H x W x 3 uint8 array), aspect kept, padded white."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    return ImageOps.pad(image.convert("RGB"), (thumb, thumb), method=Image.Resampling.BILINEAR, color=BACKGROUND)


def _fit_text(draw: ImageDraw.ImageDraw, text: str, width: int) -> str:
    """The text, shortened with '...' if needed so that it fits in `width` pixels."""
    if draw.textlength(text) <= width:
        return text
    while text and draw.textlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def _mark(draw: ImageDraw.ImageDraw, x: int, y: int, hit: bool) -> None:
    """A tick (hit) or a cross (miss) on a white square at (x, y): readable without colour."""
    colour = HIT_COLOUR if hit else MISS_COLOUR
    draw.rectangle([x, y, x + MARK - 1, y + MARK - 1], fill=BACKGROUND, outline=colour)
    if hit:
        draw.line(
            [(x + 2, y + MARK // 2), (x + MARK // 2 - 1, y + MARK - 3), (x + MARK - 3, y + 2)], fill=colour, width=2
        )
    else:
        draw.line([(x + 2, y + 2), (x + MARK - 3, y + MARK - 3)], fill=colour, width=2)
        draw.line([(x + 2, y + MARK - 3), (x + MARK - 3, y + 2)], fill=colour, width=2)


def _name(class_names: list[str] | None, label: Any) -> str:
    known = class_names is not None and 0 <= int(label) < len(class_names)
    return str(class_names[int(label)]) if known else f"class {label}"


def retrieval_grid(
    query_images: list[Image.Image],
    gallery_images: Callable[[int], Image.Image],
    rankings: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    class_names: list[str] | None = None,
    thumb: int = 96,
    scores: np.ndarray | None = None,
) -> Image.Image:
    """Rows = sample queries: the query sketch, then its top-k gallery photos (rankings[i], best first).

    Each photo is framed green and ticked when it has the query's class, framed red and crossed when not;
    under it are its rank, its score (``scores[i, r]``, when given) and its class. The query's class is
    written under the query. gallery_images(j) loads gallery item j lazily, so only the shown photos are
    read. The size is :func:`grid_size`; save it with ``sbir.explain.render.save_png`` or ``Image.save``.
    """
    rankings = np.asarray(rankings)
    if isinstance(thumb, bool) or int(thumb) != thumb or thumb < 8:
        raise ValueError(f"thumb must be an integer >= 8 pixels, got {thumb!r}")
    n_rows = len(query_images)
    if rankings.ndim != 2 or rankings.shape[0] != n_rows:
        raise ValueError(f"rankings must be {n_rows} x k (one row per query image), got shape {rankings.shape}")
    if scores is not None and np.shape(scores) != rankings.shape:
        raise ValueError(f"scores must have the shape of rankings {rankings.shape}, got {np.shape(scores)}")
    q_labels = np.asarray(query_labels)
    g_labels = np.asarray(gallery_labels)
    if q_labels.shape != (n_rows,):
        raise ValueError(f"query_labels must have one entry per query image ({n_rows}), got shape {q_labels.shape}")
    if rankings.size and (rankings.min() < 0 or rankings.max() >= g_labels.shape[0]):
        raise ValueError(f"rankings hold gallery indices outside 0..{g_labels.shape[0] - 1}")
    k = rankings.shape[1]
    cell = thumb + 2 * FRAME
    canvas = Image.new("RGB", grid_size(n_rows, k, thumb), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for i, query in enumerate(query_images):
        y = GAP + i * (cell + LABEL_HEIGHT + GAP)
        label = q_labels[i]
        draw.rectangle([GAP, y, GAP + cell - 1, y + cell - 1], fill=QUERY_COLOUR)
        canvas.paste(_thumbnail(query, thumb), (GAP + FRAME, y + FRAME))
        draw.text((GAP, y + cell + 2), _fit_text(draw, _name(class_names, label), cell), fill=TEXT_COLOUR)
        draw.text((GAP, y + cell + 15), "query", fill=QUERY_COLOUR)
        for rank, j in enumerate(rankings[i], start=1):
            x = GAP + rank * (cell + GAP)
            hit = bool(g_labels[j] == label)
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=HIT_COLOUR if hit else MISS_COLOUR)
            canvas.paste(_thumbnail(gallery_images(int(j)), thumb), (x + FRAME, y + FRAME))
            if thumb >= 3 * MARK:
                _mark(draw, x + FRAME + 1, y + FRAME + 1, hit)
            head = f"#{rank}" + (f"  {float(scores[i, rank - 1]):.3f}" if scores is not None else "")
            draw.text((x, y + cell + 2), _fit_text(draw, head, cell), fill=TEXT_COLOUR)
            draw.text((x, y + cell + 15), _fit_text(draw, _name(class_names, g_labels[j]), cell), fill=TEXT_COLOUR)
    logger.debug("retrieval grid: %d queries x %d results at %d px", n_rows, k, thumb)
    return canvas
