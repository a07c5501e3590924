"""Fine-grained evaluation: the `pooled` and `in_class` galleries, unpaired queries, and pair sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sbir.config import EvalConfig
from sbir.inference.evaluate import fine_grained_metrics, pair_index
from sbir.inference.gallery import Gallery, GalleryItem
from sbir.models.encoding import EmbeddingEncoding

# A gallery in the Sketchy layout: basic photos (pair id = their own path) and an EXTEND copy of c0/p1
# (no pair id, same picture) that a good model ranks as high as the original.
ITEMS = [
    GalleryItem(0, "256x256/photo/tx_000000000000_ready/c0/p1.jpg", "c0", 0, "c0/p1"),
    GalleryItem(1, "256x256/photo/tx_000000000000_ready/c0/p3.jpg", "c0", 0, "c0/p3"),
    GalleryItem(2, "256x256/photo/tx_000000000000_ready/c1/p2.jpg", "c1", 1, "c1/p2"),
    GalleryItem(3, "256x256/photo/tx_000000000000_ready/c1/p4.jpg", "c1", 1, "c1/p4"),
    GalleryItem(4, "EXTEND_image_sketchy_ready/c0/p1.jpg", "c0", 0, None),
]
QUERY_LABELS = np.array([0, 1, 1])
QUERY_PAIRS = ["c0/p1", "c1/p2", None]  # the third sketch has no paired photo
SCORES = np.array(
    [
        [0.90, 0.10, 0.20, 0.30, 0.95],  # q0: its copy first, its own photo second overall, first once pooled
        [0.20, 0.80, 0.70, 0.10, 0.00],  # q1: a c0 photo above its own: rank 2 pooled, rank 1 within c1
        [0.50, 0.40, 0.30, 0.20, 0.10],
    ]
)


@pytest.fixture
def gallery(tiny_zse):
    photos = EmbeddingEncoding(torch.nn.functional.normalize(torch.randn(len(ITEMS), 8), dim=-1))
    return Gallery(tiny_zse, photos, ITEMS)


def test_pooled_and_in_class_galleries(gallery):
    metrics = fine_grained_metrics(SCORES, QUERY_LABELS, QUERY_PAIRS, gallery, EvalConfig())
    assert metrics["acc_1_pooled"] == pytest.approx(50.0)  # q0 yes (its copy is not in the pooled gallery), q1 no
    assert metrics["acc_1_in_class"] == pytest.approx(100.0)  # within its class q1's photo is first too
    assert metrics["acc_5_pooled"] == metrics["acc_5_in_class"] == pytest.approx(100.0)
    assert metrics["n_queries_pair"] == 2 and metrics["n_queries_no_pair"] == 1  # counted, not dropping acc_K


def test_the_whole_role_gallery_would_count_the_copy_as_a_miss():
    """What the evaluator did before: acc_1 over every photo, copies included."""
    from sbir.metrics import compute_metrics

    pairs = pair_index(QUERY_PAIRS, [item.pair_id for item in ITEMS])
    assert pairs.tolist() == [0, 2, -1]
    whole = compute_metrics(SCORES, None, None, pair_index=pairs)
    assert whole["acc_1"] == pytest.approx(0.0)


def test_category_level_queries_have_no_pair_index():
    assert pair_index([None, ""], ["a", "b"]) is None
    assert pair_index(["a", None], ["b", "a", "a"]).tolist() == [1, -1]  # the first photo with the pair id
