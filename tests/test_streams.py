"""Class-balanced P x K training batches streamed from prepared shards with Ray Data."""

from __future__ import annotations

import threading

import pytest
import torch

from pipelines.prepare import prepare_dataset
from pipelines.streams import epoch_batches, iter_epoch, training_metadata
from sbir.data.batches import BatchSpec, zse_quadruplets
from sbir.data.preprocess import ImageTransform

pytestmark = pytest.mark.slow


@pytest.fixture
def prepared(ray_cluster, toy_split, tmp_path):
    out = str(tmp_path / "prepared")
    prepare_dataset(toy_split, out)
    return out


def test_batches_are_class_balanced_and_decoded(prepared, toy_split):
    spec = BatchSpec(classes_per_batch=3, items_per_class=2)
    meta = training_metadata(prepared)
    assert {m["role"] for m in meta} == {"train"}
    batches = list(
        iter_epoch(epoch_batches(prepared, spec, ImageTransform("zse", 64), 4, seed=0, epoch=0, metadata=meta))
    )
    assert sorted(int(b["batch"]) for b in batches) == [0, 1, 2, 3]
    train_ids = {toy_split.class_id(c) for c in toy_split.train_classes}
    for b in batches:
        assert b["sketch"].shape == (6, 3, 64, 64) and b["photo"].shape == (6, 3, 64, 64)
        labels = b["sketch_label"].tolist()
        assert labels == b["photo_label"].tolist()
        assert len(set(labels)) == 3 and set(labels) <= train_ids  # never val or test classes
        assert b["sketch"].min() >= -1 and b["sketch"].max() <= 1 and b["sketch"].std() > 0
        quads = zse_quadruplets(b, torch.Generator().manual_seed(0))
        assert all(q.shape == (6, 3, 64, 64) for q in quads)


def test_fine_grained_batches_pair_sketches_with_their_photos(prepared):
    spec = BatchSpec(2, 2, fine_grained=True)
    ds = epoch_batches(prepared, spec, ImageTransform("clip", 64, pad_fill=0), 2, seed=3, epoch=0)
    for b in iter_epoch(ds):
        assert b["sketch_label"].tolist() == b["photo_label"].tolist()


def test_workers_get_disjoint_complete_batches(prepared):
    ds = epoch_batches(prepared, BatchSpec(2, 2), ImageTransform("zse", 64), 6, seed=1, epoch=1)
    shards = ds.streaming_split(2, equal=False)
    seen: list[list[int]] = [[], []]

    def consume(i: int) -> None:  # Ray Train workers consume their shards concurrently
        seen[i] = [int(b["batch"]) for b in iter_epoch(shards[i])]

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(6))


def test_training_input_reads_from_s3(ray_cluster, s3_server, toy_split):
    import boto3

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="sbir-stream")
    prepare_dataset(toy_split, "s3://sbir-stream/toy")
    ds = epoch_batches("s3://sbir-stream/toy", BatchSpec(2, 2), ImageTransform("zse", 64), 2, seed=0, epoch=0)
    batches = list(iter_epoch(ds))
    assert len(batches) == 2 and batches[0]["photo"].shape == (4, 3, 64, 64)
