"""Class-balanced P x K training batches streamed from prepared shards with Ray Data."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
import torch

from pipelines.prepare import prepare_dataset, read_prepared
from pipelines.streams import (
    cache_bytes,
    decoded_images,
    epoch_batches,
    epoch_shards,
    iter_epoch,
    normalise,
    training_metadata,
)
from sbir.data.batches import BatchSpec, plan_epoch, zse_quadruplets
from sbir.methods.clip_at import ClipATFamily
from sbir.methods.zse import ZSEFamily

CLIP = ClipATFamily.transform_for(64, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
ZSE = ZSEFamily.transform_for(64)


@pytest.fixture
def prepared(ray_cluster, toy_split, tmp_path):
    out = str(tmp_path / "prepared")
    prepare_dataset(toy_split, out)
    return out


def test_batches_are_class_balanced_and_decoded(prepared, toy_split):
    spec = BatchSpec(classes_per_batch=3, items_per_class=2)
    meta = training_metadata(prepared)
    assert {m["role"] for m in meta} == {"train"}
    batches = list(iter_epoch(epoch_batches(prepared, spec, ZSE, 4, seed=0, epoch=0, metadata=meta)))
    assert sorted(int(b["batch"]) for b in batches) == [0, 1, 2, 3]
    train_ids = {toy_split.class_id(c) for c in toy_split.train_classes}
    for b in batches:
        assert b["sketch"].shape == (6, 3, 64, 64) and b["photo"].shape == (6, 3, 64, 64)
        assert b["sketch"].dtype == torch.float32 and b["sketch_label"].dtype == torch.int64
        labels = b["sketch_label"].tolist()
        assert labels == b["photo_label"].tolist()
        assert len(set(labels)) == 3 and set(labels) <= train_ids  # never val or test classes
        assert b["sketch"].min() >= -1 and b["sketch"].max() <= 1 and b["sketch"].std() > 0
        quads = zse_quadruplets(b, torch.Generator().manual_seed(0))
        assert all(q.shape == (6, 3, 64, 64) for q in quads)


@pytest.mark.parametrize("transform", [ZSE, CLIP], ids=["zse", "clip"])
def test_cached_and_per_epoch_decoded_batches_are_the_plans_images_bit_for_bit(prepared, transform):
    spec, seed, epoch, n = BatchSpec(3, 2), 5, 2, 3
    meta = training_metadata(prepared)
    cached = {int(b["batch"]): b for b in iter_epoch(epoch_batches(prepared, spec, transform, n, seed, epoch, meta))}
    decoded = {
        int(b["batch"]): b
        for b in iter_epoch(epoch_batches(prepared, spec, transform, n, seed, epoch, meta, cache_budget=0))
    }
    assert sorted(cached) == sorted(decoded) == list(range(n))
    for b in range(n):
        assert cached[b].keys() == decoded[b].keys() == {"sketch", "photo", "sketch_label", "photo_label", "batch"}
        for key in cached[b]:
            assert torch.equal(cached[b][key], decoded[b][key]), (b, key)

    # Every position holds exactly the image and class the plan put there.
    rows = {r["path"]: r for r in read_prepared(prepared, columns=["path", "image", "class_id"]).take_all()}
    for path, slots in plan_epoch(meta, spec, n, seed, epoch).items():
        for b, modality, pos in slots:
            assert torch.equal(cached[b][modality][pos], transform.decode(rows[path]["image"], modality))
            assert int(cached[b][f"{modality}_label"][pos]) == rows[path]["class_id"]


def test_the_cache_is_built_once_per_run_and_only_within_its_budget(prepared, caplog):
    transform = ZSE
    meta = training_metadata(prepared)
    needed = cache_bytes(len(meta), transform)
    assert needed == len(meta) * 3 * 64 * 64
    with caplog.at_level(logging.INFO, logger="pipelines.streams"):
        assert decoded_images(prepared, transform, meta, budget=needed - 1) is None
        assert "not caching decoded images" in caplog.text
        first = decoded_images(prepared, transform, meta, budget=needed)
        assert first is not None and first.nbytes == needed and "cached" in caplog.text
    assert decoded_images(prepared, transform, meta, budget=needed) is first  # later epochs reuse it
    assert set(first.rows) == {m["path"] for m in meta}
    other = decoded_images(prepared, ZSEFamily.transform_for(32), meta)  # another transform: another cache
    assert other is not None and other is not first and other.size == 32


def test_planned_images_missing_from_the_shards_fail_loudly(prepared):
    meta = training_metadata(prepared)
    ghost = dict(meta[0], path="nowhere/ghost.png")
    with pytest.raises(RuntimeError, match="not in"):
        decoded_images(prepared, ZSE, [*meta, ghost])


def test_cached_pixels_normalise_to_exactly_the_decoded_tensor(toy_split):
    from pathlib import Path

    for record in toy_split.records[:4]:  # sketches (png) and photos (jpg)
        data = (Path(toy_split.root) / record.path).read_bytes()
        for transform in (ZSE, CLIP):
            pixels = transform.decode_pixels(data, record.modality)
            assert pixels.dtype == np.uint8 and pixels.shape == (3, 64, 64)
            restored = normalise(pixels, *transform.normalisation)
            assert np.array_equal(restored, transform.decode(data, record.modality).numpy())


def test_fine_grained_batches_pair_sketches_with_their_photos(prepared):
    spec = BatchSpec(2, 2, fine_grained=True)
    half = (0.5, 0.5, 0.5)
    ds = epoch_batches(prepared, spec, ClipATFamily.transform_for(64, half, half, pad_fill=0), 2, seed=3, epoch=0)
    for b in iter_epoch(ds):
        assert b["sketch_label"].tolist() == b["photo_label"].tolist()


@pytest.mark.parametrize("cache_budget", [None, 0], ids=["cached", "decoded"])
def test_independent_quadruplet_batches_stream_as_planned(prepared, cache_budget):
    spec = BatchSpec(quadruplets=3)
    ds = epoch_batches(prepared, spec, ZSE, 2, seed=3, epoch=0, cache_budget=cache_budget)
    batches = list(iter_epoch(ds))
    assert len(batches) == 2
    for b in batches:
        assert b["sketch"].shape == (6, 3, 64, 64) and b["photo"].shape == (6, 3, 64, 64)
        sk, ph = b["sketch_label"].tolist(), b["photo_label"].tolist()
        assert all(sk[i] == sk[3 + i] == ph[i] != ph[3 + i] for i in range(3))


@pytest.mark.parametrize("cache_budget", [None, 0], ids=["cached", "decoded"])
def test_epoch_shards_deal_batches_by_index(prepared, cache_budget):
    spec, transform, meta = BatchSpec(2, 2), ZSE, training_metadata(prepared)
    whole = {int(b["batch"]): b for b in iter_epoch(epoch_batches(prepared, spec, transform, 6, 1, 1, meta))}

    def read_shards() -> list[list[dict]]:
        shards = epoch_shards(prepared, spec, transform, 6, 1, 1, meta, shards=2, cache_budget=cache_budget)
        got: list[list[dict]] = [[], []]

        def consume(rank: int) -> None:  # Ray Train workers read their own shards concurrently, in order
            shards[rank].context.execution_options.preserve_order = True
            got[rank] = list(iter_epoch(shards[rank]))

        threads = [threading.Thread(target=consume, args=(rank,)) for rank in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        return got

    first, again = read_shards(), read_shards()
    order = [[int(b["batch"]) for b in batches] for batches in first]
    assert [sorted(ids) for ids in order] == [[0, 2, 4], [1, 3, 5]]  # the same batches on every read
    if cache_budget is None:  # from the cache, also in index order on every read
        assert order == [[int(b["batch"]) for b in batches] for batches in again] == [[0, 2, 4], [1, 3, 5]]
    for batch in first[0] + first[1]:  # whole batches, the same as in the unsharded epoch
        assert all(torch.equal(batch[key], whole[int(batch["batch"])][key]) for key in batch)

    with pytest.raises(ValueError, match="3 batches to 4 shards"):
        epoch_shards(prepared, spec, transform, 3, 1, 1, meta, shards=4)


def test_training_input_reads_from_s3(ray_cluster, s3_server, toy_split, caplog):
    import boto3

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="sbir-stream")
    prepare_dataset(toy_split, "s3://sbir-stream/toy")
    transform = ZSE
    with caplog.at_level(logging.INFO, logger="pipelines.streams"):
        cached = list(iter_epoch(epoch_batches("s3://sbir-stream/toy", BatchSpec(2, 2), transform, 2, seed=0, epoch=0)))
    assert "cached" in caplog.text
    assert len(cached) == 2 and cached[0]["photo"].shape == (4, 3, 64, 64)
    ds = epoch_batches("s3://sbir-stream/toy", BatchSpec(2, 2), transform, 2, seed=0, epoch=0, cache_budget=0)
    decoded = {int(b["batch"]): b for b in iter_epoch(ds)}
    for b in cached:
        assert torch.equal(b["sketch"], decoded[int(b["batch"])]["sketch"])
