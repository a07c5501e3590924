"""Batch inference with Ray Data: encode the images of a prepared role, or of a plain folder, with an actor pool.

One ``sbir.inference.Encoder`` per actor, loaded once; the driver gathers the encoded rows in a
deterministic (path) order. ``sbir eval`` and ``sbir index build`` share it, so a gallery built for
serving holds exactly the encodings evaluation scores.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray

from pipelines.prepare import read_prepared
from pipelines.rows import ROW_COLUMNS
from sbir.checkpoint import load_checkpoint
from sbir.config import EvalConfig
from sbir.errors import DeviceError, SbirError
from sbir.files import files_inside
from sbir.inference.encoder import Encoder, resolve_device
from sbir.inference.transforms import ImageTransform
from sbir.methods import MethodFamily, family_of
from sbir.models.encoding import Encoding

logger = logging.getLogger(__name__)

ENCODING_PREFIX = "enc_"  # columns of encoded rows that hold the encoding's arrays
META_COLUMNS = ("path", "class_id", "modality", "pair_id")


@dataclass
class EncodedRole:
    """One role's queries and gallery photos, encoded, with their row metadata (sorted by path)."""

    sketches: dict[str, np.ndarray]
    photos: dict[str, np.ndarray]

    def encoding(self, family: MethodFamily, modality: str) -> Encoding:
        rows = self.sketches if modality == "sketch" else self.photos
        arrays = {k.removeprefix(ENCODING_PREFIX): v for k, v in rows.items() if k.startswith(ENCODING_PREFIX)}
        return family.encoding.from_arrays(arrays)


class EmbedBatch:
    """Ray Data UDF (actor): load the checkpoint once, then encode batches of encoded image bytes."""

    def __init__(
        self,
        checkpoint: str,
        transform: ImageTransform,
        device: str,
        batch_size: int,
        keep_images: bool = False,
        threads: int = 1,
    ) -> None:
        import torch

        if device == "cpu":
            torch.set_num_threads(threads)  # the actor's own CPUs (Ray gives a fractional actor one thread)
        model, meta = load_checkpoint(checkpoint, device=resolve_device(device))
        self.encoder = Encoder(model, family_of(meta.config), transform, batch_size=batch_size)
        self.columns = (*META_COLUMNS, "image") if keep_images else META_COLUMNS

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {key: [] for key in self.columns}
        encoded: dict[str, list[np.ndarray]] = {}
        for modality in ("sketch", "photo"):
            rows = [i for i, m in enumerate(batch["modality"]) if m == modality]
            if not rows:
                continue
            encoding = self.encoder.encode_bytes([batch["image"][i] for i in rows], modality)
            for name, value in encoding.to_arrays().items():
                encoded.setdefault(ENCODING_PREFIX + name, []).append(value)
            for key in out:
                out[key] += [batch[key][i] for i in rows]
        result = {key: np.asarray(values, dtype=object if key == "image" else None) for key, values in out.items()}
        return result | {name: np.concatenate(parts) for name, parts in encoded.items()}


def gather(ds: ray.data.Dataset, modalities: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
    """Concatenate the encoded rows per modality, sorted by path (a deterministic gallery order)."""
    parts: dict[str, list[dict[str, np.ndarray]]] = {m: [] for m in modalities}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for modality in modalities:
            keep = batch["modality"] == modality
            if keep.any():
                parts[modality].append({k: v[keep] for k, v in batch.items()})
    gathered = {}
    for modality, chunks in parts.items():
        if not chunks:
            raise SbirError(
                f"there are no {modality}es to encode" if modality == "sketch" else "there are no photos to encode"
            )
        joined = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        order = np.argsort(joined["path"], kind="stable")
        gathered[modality] = {k: v[order] for k, v in joined.items()}
    return gathered


def check_eval_resources(eval_cfg: EvalConfig) -> None:
    """Fail at once, naming what is missing, when the encoder actors ask for GPUs the cluster lacks."""
    if eval_cfg.gpus_per_worker > 0:
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus < eval_cfg.gpus_per_worker:
            raise DeviceError(
                f"eval.gpus_per_worker={eval_cfg.gpus_per_worker} but the Ray cluster has {gpus:g} GPU(s); "
                "set eval.gpus_per_worker=0 to encode on CPUs"
            )


def encode_rows(
    ds: ray.data.Dataset, checkpoint: Path, transform: ImageTransform, eval_cfg: EvalConfig, keep_images: bool = False
) -> ray.data.Dataset:
    """Rows (path, image, class_id, modality, pair_id) with their encodings: an actor pool from ``eval.*``."""

    check_eval_resources(eval_cfg)
    device = "cuda" if eval_cfg.gpus_per_worker > 0 else "cpu"
    with warnings.catch_warnings():
        # Actor restarts have no named parameter yet; the deprecated keyword route is the only one.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated", category=DeprecationWarning)
        return _map_encoder(ds, checkpoint, transform, eval_cfg, keep_images, device)


def _map_encoder(
    ds: ray.data.Dataset,
    checkpoint: Path,
    transform: ImageTransform,
    eval_cfg: EvalConfig,
    keep_images: bool,
    device: str,
) -> ray.data.Dataset:
    from ray.data import ActorPoolStrategy

    return ds.map_batches(
        EmbedBatch,
        fn_constructor_args=(
            str(checkpoint),
            transform,
            device,
            eval_cfg.batch_size,
            keep_images,
            max(1, math.ceil(eval_cfg.cpus_per_worker)),
        ),
        batch_size=eval_cfg.batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=eval_cfg.num_workers),
        num_cpus=eval_cfg.cpus_per_worker,
        num_gpus=eval_cfg.gpus_per_worker,
        max_restarts=eval_cfg.actor_restarts,
    )


def embed_role(
    checkpoint: Path, prepared: str, role: str, transform: ImageTransform, eval_cfg: EvalConfig
) -> EncodedRole:
    """Batch inference over the prepared shards of one role (its sketches and its photos)."""
    from ray.data.expressions import col

    ds = read_prepared(prepared, columns=ROW_COLUMNS).filter(expr=col("role") == role)
    rows = gather(encode_rows(ds, checkpoint, transform, eval_cfg), ("sketch", "photo"))
    return EncodedRole(rows["sketch"], rows["photo"])


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


def image_folder_dataset(folder: str | Path) -> ray.data.Dataset:
    """A user's own photo collection: every image file under `folder`, as photo rows without classes."""
    root = Path(folder).resolve()
    paths = [str(p) for p in files_inside(root, IMAGE_SUFFIXES)]
    if not paths:
        raise SbirError(f"{root} holds no image files ({', '.join(IMAGE_SUFFIXES)})")

    def to_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["path"])
        rel = [str(Path(p).relative_to(root)) for p in batch["path"]]
        return {
            "path": np.asarray(rel),
            "image": batch["bytes"],
            "class_id": np.full(n, -1, dtype=np.int64),
            "modality": np.asarray(["photo"] * n),
            "pair_id": np.asarray([""] * n),
        }

    return ray.data.read_binary_files(paths, include_paths=True).map_batches(to_rows, batch_format="numpy")
