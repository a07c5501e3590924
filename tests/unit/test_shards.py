"""Sharded galleries in the core: shards merge into exactly the unsharded ranking; the journal's head; batching."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch

from sbir.inference.gallery import GalleryError
from sbir.inference.saved_gallery import Journal, Provenance, ShardSpec, save_gallery
from sbir.inference.search import SearchPlan, merge_candidates, merge_relation
from sbir.inference.shard import GalleryShard
from sbir.methods import registered
from serve.batching import GreedyBatcher
from tests.unit.test_gallery import _family_setup, _items


def _saved(name, toy_batch, tmp_path):
    config, family, model, _, queries, photos, labels = _family_setup(name, toy_batch)
    gallery = family.gallery(model, photos, _items(range(len(photos)), labels), config.index)
    root = save_gallery(gallery, tmp_path / "g", Provenance(family.name, "ckpt", "ab" * 32, {}))
    return family, model, queries, gallery, root


def _shards(family, model, root, count: int) -> list[GalleryShard]:
    return [
        GalleryShard(root, model, method=family.name, encoding=family.encoding, spec=ShardSpec(i, count))
        for i in range(count)
    ]


def _sharded_search(shards: list[GalleryShard], queries, k: int, mode: str, rerank_mode, rerank_k: int):
    """What the endpoint does over shard deployments: candidates from every shard, merged; re-rank where held."""
    plan = SearchPlan.for_mode(k, mode, rerank_mode, rerank_k, sum(len(s) for s in shards))
    embeddings = queries.retrieval_embeddings().numpy()
    scores, ids = merge_candidates([s.candidates(embeddings, plan.depth) for s in shards], plan.depth)
    relation = None
    if plan.rerank:
        head = plan.rerank_ids(ids)
        relation = merge_relation([s.relation_scores(queries, head) for s in shards])
    return plan.finish(ids, scores, relation)


@pytest.mark.parametrize("name", registered())
@pytest.mark.parametrize("count", [2, 3])
def test_exact_shards_merge_into_the_unsharded_ranking_item_for_item(name, count, toy_batch, tmp_path):
    family, model, queries, gallery, root = _saved(name, toy_batch, tmp_path)
    shards = _shards(family, model, root, count)
    assert sorted(i for s in shards for i in s.gallery.ids.tolist()) == sorted(gallery.ids.tolist())
    assert all(set(np.asarray(s.gallery.ids) % count) <= {s.spec.index} for s in shards)
    for mode in family.served_modes:
        whole = gallery.search(queries, k=7, mode=mode, rerank_k=5)
        split = _sharded_search(shards, queries, 7, mode, family.rerank_mode, 5)
        assert np.array_equal(whole.ids, split.ids), mode
        np.testing.assert_allclose(whole.scores, split.scores, atol=1e-5)


def test_merges_keep_the_index_tie_rule_and_the_held_scores():
    a = (np.array([[0.9, 0.5, -np.inf]], np.float32), np.array([[4, 2, -1]]))
    b = (np.array([[0.9, 0.7]], np.float32), np.array([[1, 3]]))
    scores, ids = merge_candidates([a, b], 4)
    assert ids.tolist() == [[1, 4, 3, 2]]  # equal scores: the smaller id first, as every index search orders
    np.testing.assert_allclose(scores, [[0.9, 0.9, 0.7, 0.5]])
    merged = merge_relation([np.array([[0.2, np.nan]], np.float32), np.array([[np.nan, 0.4]], np.float32)])
    np.testing.assert_allclose(merged, [[0.2, 0.4]])


def test_a_shard_applies_the_journal_only_for_its_own_ids_and_only_up_to_what_it_is_told(toy_batch, tmp_path):
    family, model, _, gallery, root = _saved("clip_at", toy_batch, tmp_path)
    even, odd = _shards(family, model, root, 2)
    journal = Journal(root)
    arrays = {k: v[:3] for k, v in gallery.photos.to_arrays().items()}
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 16
    added = journal.add([(f"n{i}.png", None, png) for i in range(3)], arrays)
    assert [item.id for item in added] == [12, 13, 14]
    assert even.sync(0) == 0 and len(even) == 6  # told sequence 0: nothing to do, no file read
    assert even.sync(1) == 1 and odd.sync() == 1  # up to entry 1; or to the journal's head
    assert sorted(even.gallery.ids.tolist())[-2:] == [12, 14] and 13 in odd.gallery.ids
    seq = journal.remove([13, 0])
    assert even.sync(seq) == odd.sync(seq) == 2
    assert 0 not in even.gallery.ids and 13 not in odd.gallery.ids and len(even) + len(odd) == 13


def test_the_journal_head_names_the_last_entry_and_the_next_id_and_needs_no_listing(toy_batch, tmp_path):
    _, _, _, gallery, root = _saved("clip_at", toy_batch, tmp_path)
    journal = Journal(root)
    assert (journal.head().seq, journal.head().next_id) == (0, 12)
    arrays = {k: v[:1] for k, v in gallery.photos.to_arrays().items()}
    journal.add([("a.png", "cat", b"\x89PNG\r\n\x1a\n")], arrays)
    journal.remove([12])
    head = json.loads((root / "journal" / "HEAD").read_text())
    assert head == {"seq": 2, "next_id": 13}  # a removed id is never given out again
    (root / "journal" / "00000009.json").write_text("{}")  # a stray file: entries go by the head, not a listing
    assert [e.seq for e in journal.entries()] == [1, 2] and journal.entries(after=2) == []


def test_a_shard_that_does_not_exist_is_refused():
    with pytest.raises(GalleryError, match="shard 2 of 2"):
        ShardSpec(2, 2)


def test_greedy_batching_adds_no_wait_alone_and_batches_what_queues_while_busy():
    batches: list[list[int]] = []

    async def process(items: list[int]) -> list[int]:
        batches.append(items)
        await asyncio.sleep(0.05)
        if 13 in items:
            raise ValueError("bad item")
        return [i * 10 for i in items]

    async def scenario():
        batcher = GreedyBatcher(process, max_batch=4)
        alone = await batcher.submit(1)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(2, 8)), return_exceptions=True)
        failed = await asyncio.gather(batcher.submit(13), batcher.submit(14), return_exceptions=True)
        return alone, results, failed

    loop = asyncio.new_event_loop()
    try:
        alone, results, failed = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert alone == 10 and results == [20, 30, 40, 50, 60, 70]
    # The lone request waits for nobody; six that queue together go as max_batch and the rest.
    assert batches == [[1], [2, 3, 4, 5], [6, 7], [13, 14]]
    assert all(isinstance(f, ValueError) for f in failed)


def test_relation_scores_of_padded_batches_equal_each_query_alone(toy_batch, tmp_path):
    _, _, queries, gallery, _ = _saved("zse", toy_batch, tmp_path)
    ids = np.array([[3, 1, 4, -1], [5, 9, 2, 6]])
    together = gallery.relation_scores(queries.select(torch.tensor([0, 1])), ids)
    first = gallery.relation_scores(queries.select(torch.tensor([0])), ids[:1, :3])
    second = gallery.relation_scores(queries.select(torch.tensor([1])), ids[1:])
    np.testing.assert_allclose(together[0, :3], first[0], atol=1e-6)
    np.testing.assert_allclose(together[1], second[0], atol=1e-6)
    assert np.isnan(together[0, 3])
