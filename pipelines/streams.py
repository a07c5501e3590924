"""Class-balanced P x K training batches from prepared shards, one Ray Dataset per epoch and worker.

Each epoch's plan (``sbir.data.batches.plan_epoch``) is made on the driver from metadata only, and its
Datasets have one row per planned batch (sketch, photo, sketch_label, photo_label, batch). Rows are
whole batches. ``epoch_shards`` deals an epoch's batches to the training workers by index (worker r gets
batches r, r + n, ...), one Dataset each, so which worker trains which batch depends only on the seed
(and, from the cache, in what order too: multi-worker runs are reproducible), and no worker materialises
the epoch.

Two ways to fill the rows, chosen once per run and logged:

* Cached (the default when it fits): the training images are decoded and preprocessed once per run,
  by Ray Data tasks, into one uint8 array at model resolution (3 x size x size bytes per image) held in
  the Ray object store of the driver's node. Each epoch is then a tiny in-memory table of planned slot
  indices whose map tasks (on that node) gather and normalise their batches from the array: no
  re-reading, no re-decoding and no shuffle. Measured on the 64 px demo data (2 cores): an epoch of 720
  images took 16-38 s to read -> expand -> groupby -> decode, nearly all of it hash-shuffle and
  worker-process start-up, while decoding them in-process takes 0.3 s; a cached epoch takes ~0.4 s.
* Decoded per epoch (the fallback over the budget): read the shards, expand every row into the batch
  slots the plan gives it, group rows by batch and decode each group into one batch row.

The cache is only built when it fits the budget (``cache_budget_bytes``: the smaller of 2 GiB and a
quarter of the cluster's object store, or ``SBIR_STREAM_CACHE_BYTES``; 0 disables it). Building it
briefly holds the array twice on the driver's node (a NumPy copy, then the object-store copy). The
demo's 688 training images need 8 MiB at 64 px; Sketchy-Ext's ~148k images would need ~21 GiB at
224 px, so it decodes per epoch unless the budget is raised. The cache lives as long as the driver (a
resumed run rebuilds it once; Ray Train worker-group restarts reuse it).

Both give bit-identical batches: the cache stores the transform's 8-bit pixels before normalisation
(``ImageTransform.decode_pixels``) and normalises them exactly as ``sbir.inference.transforms.to_tensor`` does.

This module is imported by every process that unpickles an epoch's Dataset (Ray Data tasks, and
formerly the SplitCoordinator actor Ray Train started per split epoch), so its top level imports no torch:
that import alone measured ~2 s of extra start-up per epoch. torch, the preprocessing and the prepared-shard
reader are imported where they are used.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import ray
import ray.data

if TYPE_CHECKING:
    import torch

    from sbir.data.batches import BatchSpec, Slot
    from sbir.inference.transforms import ImageTransform

logger = logging.getLogger(__name__)

META_COLUMNS = ["path", "class_id", "modality", "pair_id", "role"]
MODALITIES = ("sketch", "photo")
STREAM_CPUS = 0.25  # logical CPUs per read/decode/gather task, so streams fit beside training workers
# Concurrent gather tasks per epoch. Gathering is cheap; more tasks only start more worker processes
# (each pays Python/Ray Data imports on first use), which on 2 cores costs more than it brings.
GATHER_CONCURRENCY = 2
NODE_ID_LABEL = "ray.io/node-id"  # the label Ray gives every node: its node id (ray.util.placement_group)
CACHE_BUDGET_ENV = "SBIR_STREAM_CACHE_BYTES"
DEFAULT_CACHE_BUDGET = 2 * 1024**3
CACHE_STORE_FRACTION = 0.25  # at most this share of the cluster's object store holds decoded images
# Decode tasks for the cache: one per ~10 s of single-core decoding (measured ~2,300 images/s at 64 px, i.e.
# ~1e8 output pixels), at most one per logical CPU. Each extra task can cost a worker-process start-up
# (3-5 s on 2 busy cores), so small datasets decode fastest in one task: 688 images at 64 px took 4 s in
# one task against 9-13 s in four.
DECODE_PIXELS_PER_TASK = 100_000_000
BLOCK_BYTES = 32 * 1024**2  # target size of an epoch's gathered blocks (float32 batches)
MIN_BLOCKS = 8  # blocks per epoch when batches are small, so consumers start early and splits stay even


def training_metadata(prepared: str, roles: tuple[str, ...] = ("train",)) -> list[dict]:
    """Path, class id, modality and pair id of every row with one of `roles` (no image bytes)."""
    from pipelines.prepare import read_prepared

    rows = read_prepared(prepared, columns=META_COLUMNS).take_all()
    return [r for r in rows if r["role"] in roles]


# --------------------------------------------------------------------------- pixel (de)normalisation


def _channel(values: tuple[float, ...]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).reshape(3, 1, 1)


def normalise(pixels: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """8-bit images (..., 3, H, W) -> float32, with the same float32 operations as ``preprocess.to_tensor``.

    Kept here in NumPy so the gather tasks never import torch (seconds of start-up per worker process).
    """
    return (np.asarray(pixels, dtype=np.float32) / 255.0 - _channel(mean)) / _channel(std)


# --------------------------------------------------------------------------- decode-once cache


@dataclass(frozen=True)
class DecodedImages:
    """A run's training images decoded once: a uint8 (N, 3, size, size) array in the Ray object store."""

    ref: ray.ObjectRef
    rows: Mapping[str, int]  # path -> row of the array
    node_id: str  # the node whose object store holds the array (the driver's)
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def nbytes(self) -> int:
        return len(self.rows) * 3 * self.size * self.size


def cache_bytes(num_images: int, transform: ImageTransform) -> int:
    """Object-store bytes of `num_images` decoded images at the transform's size (uint8, 3 channels)."""
    return num_images * 3 * transform.size * transform.size


def cache_budget_bytes(explicit: int | None = None) -> int:
    """Bytes of decoded images a run may keep in the object store (0 disables the cache).

    `explicit` if given, else ``SBIR_STREAM_CACHE_BYTES``, else the smaller of 2 GiB and a quarter of
    the cluster's object store.
    """
    if explicit is not None:
        return max(0, int(explicit))
    if os.environ.get(CACHE_BUDGET_ENV):
        return max(0, int(float(os.environ[CACHE_BUDGET_ENV])))
    store = ray.cluster_resources().get("object_store_memory", 0)
    return int(min(DEFAULT_CACHE_BUDGET, CACHE_STORE_FRACTION * store))


def _decode_to_uint8(batch: dict[str, np.ndarray], transform: ImageTransform) -> dict[str, np.ndarray]:
    """Ray Data UDF: encoded images -> uint8 pixels at model resolution, before normalisation."""
    pixels = [transform.decode_pixels(data, str(m)) for data, m in zip(batch["image"], batch["modality"], strict=True)]
    return {"path": batch["path"], "pixels": np.stack(pixels)}


def _decode_tasks(num_images: int, size: int) -> int:
    work = math.ceil(num_images * size * size / DECODE_PIXELS_PER_TASK)
    return max(1, min(work, int(ray.cluster_resources().get("CPU", 1))))


def _build_cache(prepared: str, transform: ImageTransform, paths: list[str]) -> DecodedImages:
    from ray.data.expressions import col

    from pipelines.prepare import read_prepared

    rows = {path: i for i, path in enumerate(paths)}
    size = transform.size
    pixels = np.zeros((len(paths), 3, size, size), np.uint8)
    filled = np.zeros(len(paths), bool)
    ds = read_prepared(prepared, columns=["path", "image", "modality"]).filter(expr=col("path").is_in(paths))
    ds = ds.map_batches(
        _decode_to_uint8,
        fn_kwargs={"transform": transform},
        batch_size=64,
        batch_format="numpy",
        num_cpus=STREAM_CPUS,
        compute=ray.data.TaskPoolStrategy(size=_decode_tasks(len(paths), size)),
    )
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        at = np.fromiter((rows[str(p)] for p in batch["path"]), np.int64, len(batch["path"]))
        pixels[at] = batch["pixels"]
        filled[at] = True
    if not filled.all():
        missing = [paths[i] for i in np.flatnonzero(~filled)[:5]]
        raise RuntimeError(f"{int((~filled).sum())} planned images are not in {prepared}, e.g. {missing}")
    node = ray.get_runtime_context().get_node_id()
    mean, std = transform.normalisation
    return DecodedImages(ray.put(pixels), rows, node, size, mean, std)


_CACHED: dict[tuple, DecodedImages] = {}  # the latest run's cache, so every epoch of a run shares it


def decoded_images(
    prepared: str, transform: ImageTransform, metadata: list[dict], budget: int | None = None
) -> DecodedImages | None:
    """The decoded images of `metadata`'s rows, built once per (data, transform, rows), or None if over budget.

    Only the latest cache is remembered (older ones are freed once no Dataset refers to them). The
    decision and its sizes are logged.
    """
    from pipelines.prepare import read_manifest

    paths = sorted({str(m["path"]) for m in metadata})
    needed, allowed = cache_bytes(len(paths), transform), cache_budget_bytes(budget)
    mib = 1024**2
    if needed > allowed:
        logger.info(
            "not caching decoded images: %d images need %.0f MiB at %d px, over the %.0f MiB budget (%s%s); "
            "every epoch reads and decodes its images",
            len(paths),
            needed / mib,
            transform.size,
            allowed / mib,
            CACHE_BUDGET_ENV,
            ", 0 disables the cache" if allowed == 0 else "",
        )
        return None
    digest = hashlib.sha256("\n".join(paths).encode()).hexdigest()
    key = (ray.get_runtime_context().get_job_id(), prepared, read_manifest(prepared).data_dir, transform, digest)
    if key in _CACHED:
        return _CACHED[key]
    _CACHED.clear()
    images = _build_cache(prepared, transform, paths)
    logger.info(
        "cached %d decoded images (%.0f MiB uint8 at %d px, budget %.0f MiB) in the object store for every epoch",
        len(paths),
        needed / mib,
        transform.size,
        allowed / mib,
    )
    _CACHED[key] = images
    return images


# --------------------------------------------------------------------------- cached epochs


def slot_table(
    plan: Mapping[str, list[Slot]],
    batch_size: int,
    num_batches: int,
    rows: Mapping[str, int],
    labels: Mapping[str, int],
) -> dict[str, np.ndarray]:
    """The plan as arrays: per batch and modality, the cache row and class id of every position."""
    table: dict[str, np.ndarray] = {"batch": np.arange(num_batches, dtype=np.int64)}
    for modality in MODALITIES:
        table[f"{modality}_index"] = np.full((num_batches, batch_size), -1, np.int64)
        table[f"{modality}_label"] = np.full((num_batches, batch_size), -1, np.int64)
    for path, slots in plan.items():
        if path not in rows:
            raise RuntimeError(f"{path} is planned but not among the decoded images")
        for b, modality, pos in slots:
            table[f"{modality}_index"][b, pos] = rows[path]
            table[f"{modality}_label"][b, pos] = labels[path]
    for modality in MODALITIES:
        if (table[f"{modality}_index"] < 0).any():
            raise RuntimeError(f"the plan leaves {modality} positions empty; the plan and the metadata disagree")
    return table


def _gather(
    batch: dict[str, np.ndarray], pixels: list[ray.ObjectRef], mean: tuple, std: tuple
) -> dict[str, np.ndarray]:
    """Ray Data UDF: planned slot indices -> normalised batches gathered from the decoded-image array."""
    images = ray.get(pixels[0])  # zero-copy view of the shared array on this node
    out = {"batch": np.asarray(batch["batch"], np.int64)}
    for modality in MODALITIES:
        index = np.asarray(batch[f"{modality}_index"], np.int64)
        out[modality] = normalise(images[index], mean, std)
        out[f"{modality}_label"] = np.asarray(batch[f"{modality}_label"], np.int64)
    return out


def _cached_epoch(
    images: DecodedImages, table: Mapping[str, np.ndarray], batch_ids: Sequence[int], spec: BatchSpec
) -> ray.data.Dataset:
    """The batches `batch_ids` of an epoch's slot table, gathered from the decoded-image array."""
    items = [{key: value[b] for key, value in table.items()} for b in batch_ids]
    num_batches = len(items)
    batch_bytes = 2 * spec.batch_size * 3 * images.size * images.size * 4
    per_block = max(1, min(BLOCK_BYTES // batch_bytes, math.ceil(num_batches / MIN_BLOCKS)))
    ds = ray.data.from_items(items, override_num_blocks=math.ceil(num_batches / per_block))
    return ds.map_batches(
        _gather,
        # The reference goes in a list so Ray never resolves it early; tasks map the array read-only.
        fn_kwargs={"pixels": [images.ref], "mean": images.mean, "std": images.std},
        batch_size=None,
        batch_format="numpy",
        num_cpus=STREAM_CPUS,
        compute=ray.data.TaskPoolStrategy(size=GATHER_CONCURRENCY),
        # Gather where the array lives: a task elsewhere would first copy the whole array to its node. (The array
        # was put by the driver, so it lives as long as that node does.)
        label_selector={NODE_ID_LABEL: images.node_id},
    )


# --------------------------------------------------------------------------- decode-per-epoch fallback


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


def _decoding_epoch(
    prepared: str, plan: Mapping[str, list[Slot]], spec: BatchSpec, transform: ImageTransform, num_batches: int
) -> ray.data.Dataset:
    from pipelines.prepare import read_prepared

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


# --------------------------------------------------------------------------- public API


def epoch_shards(
    prepared: str,
    spec: BatchSpec,
    transform: ImageTransform,
    num_batches: int,
    seed: int,
    epoch: int,
    metadata: list[dict] | None = None,
    *,
    shards: int = 1,
    cache_budget: int | None = None,
) -> list[ray.data.Dataset]:
    """The `num_batches` planned batches of one epoch, dealt into `shards` Datasets by batch index.

    Shard r holds batches r, r + shards, r + 2 * shards, ... (one shard per training worker). From the cache,
    read with ``preserve_order`` (as training does), a shard yields them in that order on every run; decoded
    per epoch, their order follows the group-by shuffle.
    Gathered from the run's decoded-image cache when it fits `cache_budget` bytes (see ``cache_budget_bytes()``
    for the default; 0 disables it), else read and decoded from the shards for this epoch alone.
    """
    from sbir.data.batches import plan_epoch

    if shards < 1 or num_batches < shards:
        raise ValueError(f"cannot deal {num_batches} batches to {shards} shards: every shard needs at least one")
    meta = metadata if metadata is not None else training_metadata(prepared)
    plan = plan_epoch(meta, spec, num_batches, seed, epoch)
    dealt = [range(r, num_batches, shards) for r in range(shards)]
    images = decoded_images(prepared, transform, meta, cache_budget)
    if images is None:
        return [_decoding_epoch(prepared, _restrict(plan, ids), spec, transform, len(ids)) for ids in dealt]
    labels = {str(m["path"]): int(m["class_id"]) for m in meta}
    table = slot_table(plan, spec.batch_size, num_batches, images.rows, labels)
    return [_cached_epoch(images, table, ids, spec) for ids in dealt]


def epoch_batches(
    prepared: str,
    spec: BatchSpec,
    transform: ImageTransform,
    num_batches: int,
    seed: int,
    epoch: int,
    metadata: list[dict] | None = None,
    *,
    cache_budget: int | None = None,
) -> ray.data.Dataset:
    """A Dataset whose rows are all `num_batches` planned batches of one epoch (``epoch_shards`` with one shard)."""
    return epoch_shards(
        prepared, spec, transform, num_batches, seed, epoch, metadata, shards=1, cache_budget=cache_budget
    )[0]


def _restrict(plan: Mapping[str, list[Slot]], batch_ids: range) -> dict[str, list[Slot]]:
    """The part of a plan that fills the batches `batch_ids`."""
    keep = set(batch_ids)
    restricted = {path: [slot for slot in slots if slot[0] in keep] for path, slots in plan.items()}
    return {path: slots for path, slots in restricted.items() if slots}


def iter_epoch(ds: ray.data.Dataset) -> Iterator[dict[str, torch.Tensor]]:
    """Iterate a (shard of an) epoch dataset as torch batches, one planned batch at a time."""
    import torch

    for row in ds.iter_batches(batch_size=1, batch_format="numpy"):
        # Writable, contiguous copies only where needed: object-store views are read-only.
        yield {key: torch.from_numpy(np.require(value[0], requirements=["C", "W"])) for key, value in row.items()}
