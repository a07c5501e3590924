"""Decoded evaluation rows from prepared shards: images of one split role, with labels and pair ids."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import ray
import torch
from ray.data.expressions import col

from pipelines.prepare import read_prepared
from sbir.inference.transforms import ImageTransform

ROW_COLUMNS = ["path", "image", "class_id", "modality", "pair_id", "role"]


def _decode(batch: dict[str, np.ndarray], transform: ImageTransform) -> dict[str, np.ndarray]:
    images = [transform.decode(data, str(m)).numpy() for data, m in zip(batch["image"], batch["modality"], strict=True)]
    return {
        "pixels": np.stack(images).astype(np.float32),
        "class_id": batch["class_id"].astype(np.int64),
        "modality": batch["modality"],
        "path": batch["path"],
        "pair_id": batch["pair_id"],
    }


def role_dataset(prepared: str, roles: tuple[str, ...], transform: ImageTransform) -> ray.data.Dataset:
    """Rows of `roles` decoded and preprocessed for a model (lazy; runs as Ray Data tasks)."""
    ds = read_prepared(prepared, columns=ROW_COLUMNS)
    ds = ds.filter(expr=col("role").is_in(list(roles)))
    return ds.map_batches(
        _decode, fn_kwargs={"transform": transform}, batch_size=64, batch_format="numpy", num_cpus=0.25
    )


@dataclass
class RoleImages:
    """Decoded queries (sketches) and gallery (photos) of a split role, in a deterministic (path) order."""

    sketches: torch.Tensor
    sketch_labels: np.ndarray
    sketch_paths: list[str]
    sketch_pairs: list[str]
    photos: torch.Tensor
    photo_labels: np.ndarray
    photo_paths: list[str]
    photo_pairs: list[str]


def collect(batches) -> RoleImages:
    """Gather decoded batches (an iterable of dicts from ``role_dataset``) into sorted query and gallery sets."""
    rows: dict[str, list] = {"sketch": [], "photo": []}
    for batch in batches:
        for i, modality in enumerate(batch["modality"]):
            rows[str(modality)].append(
                (str(batch["path"][i]), batch["pixels"][i], int(batch["class_id"][i]), str(batch["pair_id"][i] or ""))
            )

    def stack(items: list) -> tuple[torch.Tensor, np.ndarray, list[str], list[str]]:
        items.sort(key=lambda r: r[0])
        if not items:
            return torch.zeros(0), np.zeros(0, np.int64), [], []
        pixels = torch.from_numpy(np.stack([r[1] for r in items]))
        return pixels, np.array([r[2] for r in items], np.int64), [r[0] for r in items], [r[3] for r in items]

    s, sl, sp, spair = stack(rows["sketch"])
    p, pl, pp, ppair = stack(rows["photo"])
    return RoleImages(s, sl, sp, spair, p, pl, pp, ppair)
