"""`prepare`: any layout -> Parquet shards + manifest with Ray Data, locally and on S3."""

from __future__ import annotations

import hashlib
import io
import os

import pytest
from PIL import Image

from pipelines.prepare import BadFilesError, prepare_dataset, read_manifest, read_prepared
from sbir.data.records import DatasetSplit, ImageRecord


def _with_bad_file(split: DatasetSplit) -> DatasetSplit:
    with open(os.path.join(split.root, "square", "broken.png"), "wb") as f:
        f.write(b"this is not an image")
    extra = [
        ImageRecord("square/broken.png", "square", "sketch", "train"),
        ImageRecord("square/gone.png", "square", "sketch", "train"),
    ]
    return DatasetSplit(
        split.root,
        split.layout,
        split.split,
        split.train_classes,
        split.val_classes,
        split.test_classes,
        [*split.records, *extra],
    )


def test_prepare_writes_shards_and_manifest(ray_cluster, toy_split, tmp_path):
    out = str(tmp_path / "prepared")
    manifest = prepare_dataset(toy_split, out, rows_per_file=10)
    assert manifest.num_rows == 48 and manifest.bad_files == []
    assert manifest.counts["train"]["sketch"].total == 15
    assert manifest.counts["test"]["photo"].per_class == {"cross": 3, "arrow": 3}
    assert manifest.classes.val == ["ellipse"]
    rows = read_prepared(out).take_all()
    assert len(rows) == 48
    row = next(r for r in rows if r["class_name"] == "star" and r["modality"] == "photo")
    with open(os.path.join(toy_split.root, row["path"]), "rb") as f:
        original = f.read()
    assert row["image"] == original  # encoded bytes, untouched: preprocessing happens at load time
    assert row["sha256"] == hashlib.sha256(original).hexdigest()
    assert row["class_id"] == toy_split.class_names.index(row["class_name"])
    Image.open(io.BytesIO(row["image"])).load()
    assert len(os.listdir(os.path.join(out, manifest.data_dir))) >= 2  # sharded


def test_bad_files_fail_or_are_skipped_and_reported(ray_cluster, toy_split, tmp_path):
    split = _with_bad_file(toy_split)
    out = str(tmp_path / "prepared")
    with pytest.raises(BadFilesError) as err:
        prepare_dataset(split, out)
    assert "square/broken.png: unreadable" in str(err.value) and "square/gone.png: missing" in str(err.value)
    with pytest.raises(FileNotFoundError, match="not a prepared dataset"):
        read_manifest(out)  # a failed run never looks complete
    manifest = prepare_dataset(split, out, on_bad_file="skip")
    assert [b.model_dump() for b in manifest.bad_files] == [
        {"path": "square/broken.png", "reason": "unreadable: not a recognised image format"},
        {"path": "square/gone.png", "reason": "missing"},
    ]
    assert manifest.num_rows == 48


def test_rerun_is_idempotent_and_notices_changed_files(ray_cluster, toy_split, tmp_path):
    """A changed input is prepared again and the superseded shards go; folders of the user's stay (even named
    data-*: only shard folders this project wrote and recorded are ever removed)."""
    out = str(tmp_path / "prepared")
    (tmp_path / "prepared" / "data-mine").mkdir(parents=True)
    (tmp_path / "prepared" / "data-mine" / "keep.txt").write_text("mine")
    first = prepare_dataset(toy_split, out)
    again = prepare_dataset(toy_split, out)
    assert again.data_dir == first.data_dir and again.created == first.created
    path = os.path.join(toy_split.root, toy_split.records[0].path)
    Image.new("RGB", (64, 64), "white").save(path)
    os.utime(path, ns=(1, 1))
    changed = prepare_dataset(toy_split, out)
    assert changed.data_dir != first.data_dir
    assert not os.path.exists(os.path.join(out, first.data_dir))  # old shards are removed
    assert (tmp_path / "prepared" / "data-mine" / "keep.txt").read_text() == "mine"
    assert sorted(os.listdir(out)) == sorted(["data-mine", changed.data_dir, "manifest.json"])
    assert changed.content_sha256 != first.content_sha256


def test_prepare_to_s3_and_read_back(ray_cluster, s3_server, toy_split):
    import boto3
    import pyarrow.fs as pafs

    from pipelines.storage import resolve

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="sbir-test")
    fs, _ = resolve("s3://sbir-test/x")
    manifest = prepare_dataset(toy_split, "s3://sbir-test/prepared/toy")
    assert read_manifest("s3://sbir-test/prepared/toy").fingerprint == manifest.fingerprint
    ds = read_prepared("s3://sbir-test/prepared/toy", columns=["path", "role", "class_id"])
    assert ds.count() == 48
    assert fs.get_file_info("sbir-test/prepared/toy/manifest.json").type == pafs.FileType.File
