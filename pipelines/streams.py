"""Class-balanced P x K training batches streamed from prepared shards with Ray Data.

Each epoch's plan (``sbir.data.batches.plan_epoch``) is made on the driver from metadata only. Ray
Data then reads the image shards, expands every row into the batch slots the plan gives it, groups
rows by batch, and decodes/preprocesses each group into one row holding a whole batch. Rows are
whole batches, so Ray Train's per-worker dataset shards (``get_dataset_shard``) hand each worker
distinct, complete batches and no worker materialises the dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

import numpy as np
import pyarrow as pa
import ray
import torch

from pipelines.prepare import read_prepared
from sbir.data.batches import BatchSpec, Slot, plan_epoch
from sbir.data.preprocess import ImageTransform

logger = logging.getLogger(__name__)

META_COLUMNS = ["path", "class_id", "modality", "pair_id", "role"]
STREAM_CPUS = 0.25  # logical CPUs per read/expand/decode task, so streams fit beside training workers


def training_metadata(prepared: str, roles: tuple[str, ...] = ("train",)) -> list[dict]:
    """Path, class id, modality and pair id of every row with one of `roles` (no image bytes)."""
    rows = read_prepared(prepared, columns=META_COLUMNS).take_all()
    return [r for r in rows if r["role"] in roles]


class ExpandToSlots:
    """Ray Data UDF logic: keep planned rows, one output row per slot the plan assigns them."""

    def __init__(self, plan: Mapping[str, list[Slot]]) -> None:
        self.plan = plan

    def __call__(self, table: pa.Table) -> pa.Table:
        paths = table.column("path").to_pylist()
        take, batch_ids, modalities, positions = [], [], [], []
        for i, path in enumerate(paths):
            for b, modality, pos in self.plan.get(path, ()):
                take.append(i)
                batch_ids.append(b)
                modalities.append(modality)
                positions.append(pos)
        out = table.select(["image", "class_id"]).take(pa.array(take, type=pa.int64()))
        return (
            out.append_column("batch", pa.array(batch_ids, pa.int64()))
            .append_column("slot_modality", pa.array(modalities, pa.string()))
            .append_column("slot", pa.array(positions, pa.int64()))
        )


class AssembleBatch:
    """Ray Data UDF logic for ``map_groups``: decode one batch's images into stacked arrays."""

    def __init__(self, transform: ImageTransform, batch_size: int) -> None:
        self.transform = transform
        self.batch_size = batch_size

    def __call__(self, group: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = self.batch_size
        size = self.transform.size
        out = {
            "sketch": np.zeros((n, 3, size, size), np.float32),
            "photo": np.zeros((n, 3, size, size), np.float32),
            "sketch_label": np.full(n, -1, np.int64),
            "photo_label": np.full(n, -1, np.int64),
        }
        for data, cid, modality, slot in zip(
            group["image"], group["class_id"], group["slot_modality"], group["slot"], strict=True
        ):
            out[modality][slot] = self.transform.decode(data, modality).numpy()
            out[f"{modality}_label"][slot] = cid
        if (out["sketch_label"] < 0).any() or (out["photo_label"] < 0).any():
            raise RuntimeError(f"batch {group['batch'][0]} is incomplete; the plan and the shards disagree")
        return {key: value[None] for key, value in out.items()} | {"batch": np.array([group["batch"][0]])}


def epoch_batches(
    prepared: str,
    spec: BatchSpec,
    transform: ImageTransform,
    num_batches: int,
    seed: int,
    epoch: int,
    metadata: list[dict] | None = None,
) -> ray.data.Dataset:
    """A Dataset whose rows are the `num_batches` planned batches of one epoch."""
    meta = metadata if metadata is not None else training_metadata(prepared)
    plan = plan_epoch(meta, spec, num_batches, seed, epoch)
    ds = read_prepared(prepared, columns=["path", "image", "class_id"])
    # Stateless tasks, not actor pools: an actor costs a fresh process per epoch; tasks reuse pooled workers.
    ds = ds.map_batches(_expand, fn_kwargs={"plan": plan}, batch_format="pyarrow", num_cpus=STREAM_CPUS)
    # Bounded partitions: the default hash-shuffle parallelism (200 aggregators) starves small clusters.
    partitions = max(1, min(num_batches, int(ray.cluster_resources().get("CPU", 1))))
    return ds.groupby("batch", num_partitions=partitions).map_groups(
        _assemble,
        fn_kwargs={"transform": transform, "batch_size": spec.batch_size},
        batch_format="numpy",
        num_cpus=STREAM_CPUS,
    )


def _expand(table: pa.Table, plan: Mapping[str, list[Slot]]) -> pa.Table:
    return ExpandToSlots(plan)(table)


def _assemble(group: dict[str, np.ndarray], transform: ImageTransform, batch_size: int) -> dict[str, np.ndarray]:
    return AssembleBatch(transform, batch_size)(group)


def iter_epoch(ds: ray.data.Dataset) -> Iterator[dict[str, torch.Tensor]]:
    """Iterate a (shard of an) epoch dataset as torch batches, one planned batch at a time."""
    for row in ds.iter_batches(batch_size=1, batch_format="numpy"):
        yield {key: torch.from_numpy(np.ascontiguousarray(value[0])) for key, value in row.items()}
