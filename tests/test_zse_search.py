"""Retrieval modes ret / rn / rn_rerank over a cached gallery."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sbir.retrieval.zse_search import RERANK_OFFSET, ZSEGallery, encode_in_batches, stable_topk


@pytest.fixture
def gallery_and_queries(tiny_zse, toy_batch):
    sketches, photos, _ = toy_batch
    photos_enc = encode_in_batches(tiny_zse, photos, "photo", batch_size=5)
    queries = encode_in_batches(tiny_zse, sketches[:4], "sketch")
    return ZSEGallery(tiny_zse, photos_enc, ids=np.arange(100, 112)), queries


def test_ret_is_cosine_of_pre_ca_tokens(gallery_and_queries):
    gallery, queries = gallery_and_queries
    scores = gallery.score_matrix(queries, "ret")
    q = torch.nn.functional.normalize(queries.ret, dim=-1)
    p = torch.nn.functional.normalize(gallery.photos.ret, dim=-1)
    assert torch.allclose(scores, q @ p.T, atol=1e-6)


def test_rerank_with_k_equal_gallery_ranks_exactly_like_rn(gallery_and_queries):
    gallery, queries = gallery_and_queries
    rn = gallery.score_matrix(queries, "rn", pair_batch=7)
    rerank = gallery.score_matrix(queries, "rn_rerank", rerank_k=len(gallery), pair_batch=5)
    assert torch.equal(stable_topk(rn, len(gallery)), stable_topk(rerank, len(gallery)))
    assert torch.allclose(rerank - RERANK_OFFSET, rn, atol=1e-5)


def test_rerank_reorders_only_the_top_k(gallery_and_queries):
    gallery, queries = gallery_and_queries
    k = 4
    ret = gallery.score_matrix(queries, "ret")
    rn = gallery.score_matrix(queries, "rn")
    rerank = gallery.score_matrix(queries, "rn_rerank", rerank_k=k)
    order = stable_topk(rerank, len(gallery))
    for row in range(len(queries)):
        top_ret = set(stable_topk(ret[row : row + 1], k)[0].tolist())
        head, tail = order[row, :k].tolist(), order[row, k:].tolist()
        assert set(head) == top_ret  # the same K candidates ...
        assert head == sorted(head, key=lambda j: -rn[row, j].item())  # ... in relation order
        assert tail == sorted(tail, key=lambda j: -ret[row, j].item())  # the rest in ret order


def test_search_top_k_matches_score_matrix(gallery_and_queries):
    gallery, queries = gallery_and_queries
    for mode in ("ret", "rn", "rn_rerank"):
        result = gallery.search(queries, k=5, mode=mode, rerank_k=6)
        full = gallery.score_matrix(queries, mode, rerank_k=6)
        expected = gallery.ids[stable_topk(full, 5).numpy()]
        assert np.array_equal(result.ids, expected), mode
        assert result.scores.shape == (4, 5)


def test_search_uses_an_ann_index_when_given(gallery_and_queries):
    from sbir.retrieval.index import EmbeddingIndex

    gallery, queries = gallery_and_queries
    index = EmbeddingIndex(gallery.embeddings.shape[1])
    index.add(gallery.embeddings.numpy(), gallery.ids)
    with_index = gallery.search(queries, k=5, mode="rn_rerank", rerank_k=6, index=index)
    exact = gallery.search(queries, k=5, mode="rn_rerank", rerank_k=6)
    assert np.array_equal(with_index.ids, exact.ids)


def test_unknown_mode_is_rejected(gallery_and_queries):
    gallery, queries = gallery_and_queries
    with pytest.raises(ValueError, match="ret, rn, rn_rerank"):
        gallery.score_matrix(queries, "exhaustive")  # type: ignore[arg-type]


def test_fp16_scores_are_rounded_to_half_precision(gallery_and_queries):
    gallery, queries = gallery_and_queries
    fp32 = gallery.score_matrix(queries, "rn")
    fp16 = gallery.score_matrix(queries, "rn", precision="fp16")
    assert torch.equal(fp16, fp32.half().float())


def test_ids_from_a_foreign_index_are_rejected(gallery_and_queries):
    from sbir.retrieval.index import EmbeddingIndex

    gallery, queries = gallery_and_queries
    index = EmbeddingIndex(gallery.embeddings.shape[1])
    index.add(gallery.embeddings.numpy(), gallery.ids + 1000)
    with pytest.raises(KeyError, match="not in the gallery"):
        gallery.search(queries, k=3, mode="ret", index=index)
