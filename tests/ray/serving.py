"""Builders for the serving tests: a prepared dataset, registered checkpoints, their galleries, an endpoint."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from tests.helpers import SMALL_VAL_FRACTION, write_small_synthetic


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Served:
    """What a serving test needs: the dataset, the MLflow store, the registered model and its checkpoint."""

    root: Path
    prepared: str
    tracking_uri: str
    runs_dir: Path
    model_name: str
    checkpoints: list[Path]
    preset: str

    @property
    def reference(self) -> str:
        return f"models:/{self.model_name}@champion"


def prepare_small(tmp: Path):
    """The small synthetic dataset and its prepared shards (the test role holds the unseen classes)."""
    from pipelines.prepare import prepare_dataset
    from sbir.data.readers import read_split

    root = write_small_synthetic(tmp / "data")
    split = read_split("synthetic", root, "zeroshot1", val_fraction=SMALL_VAL_FRACTION, val_seed=0)
    prepared = str(tmp / "prepared")
    prepare_dataset(split, prepared, source=f"synthetic:{root}")
    return root, split, prepared


def register_random_checkpoint(served: Served, seed: int, metric: float) -> Path:
    """A randomly initialised checkpoint of the preset, registered (champion if `metric` is the best)."""
    from pipelines.tracking import Tracker, register_checkpoint
    from sbir.checkpoint import save_checkpoint
    from sbir.config import load_config
    from sbir.methods import family_of

    config = load_config(served.preset, [f"data.root={served.root}", f"data.prepared={served.prepared}"])
    torch.manual_seed(seed)
    model = family_of(config).build_model(config.model, load_pretrained=False)
    directory = save_checkpoint(served.runs_dir / f"ckpt-{seed}", model, config)
    tracker = Tracker.start(served.tracking_uri, "serve-tests", f"seed-{seed}", {}, {})
    register_checkpoint(tracker, directory, served.model_name, metric_name="val_map", metric_value=metric)
    tracker.finish()
    served.checkpoints.append(directory)
    return directory


def build_registered_gallery(served: Served, reference: str) -> str:
    """`sbir index build` for a registered version: the gallery of the test role, logged to its run."""
    from pipelines.gallery import build_gallery
    from pipelines.tracking import resolve_reference
    from sbir.config import load_config

    resolved = resolve_reference(reference, served.tracking_uri)
    config = load_config(served.preset, [f"data.prepared={served.prepared}"])
    out = served.runs_dir / f"gallery-{resolved.version or 'local'}"
    build_gallery(resolved, str(out), config, prepared=served.prepared, roles=("test",))
    return str(out)


def build_local_gallery(checkpoint: Path, photos: list[Path], out: Path) -> Path:
    """A saved gallery of these photos built in this process (no Ray), as `sbir index build` saves one."""
    from sbir.checkpoint import weights_sha256
    from sbir.config import IndexConfig
    from sbir.inference.encoder import Encoder
    from sbir.inference.gallery import GalleryItem
    from sbir.inference.saved_gallery import Provenance, save_gallery, write_images

    encoder = Encoder.from_checkpoint(checkpoint, device="cpu")
    data = [p.read_bytes() for p in photos]
    encoding = encoder.encode_bytes(data, "photo")
    items = [GalleryItem(i, str(p), p.parent.name) for i, p in enumerate(photos)]
    gallery = encoder.family.gallery(encoder.model, encoding, items, IndexConfig())
    save_gallery(gallery, out, Provenance(encoder.family.name, str(checkpoint), weights_sha256(checkpoint), {}))
    write_images(out, dict(enumerate(data)))
    return out


def offline_ids(checkpoint: Path, gallery_dir: Path, sketch: Path) -> list[int]:
    """The gallery ids in the order the offline `ret` score row of one sketch ranks them."""
    from sbir.inference.encoder import Encoder
    from sbir.inference.search import stable_topk

    encoder = Encoder.from_checkpoint(checkpoint, device="cpu")
    gallery = encoder.open_gallery(gallery_dir)
    scores = gallery.score_matrix(encoder.encode_bytes([sketch.read_bytes()], "sketch"), "ret")
    return gallery.ids[stable_topk(scores, scores.shape[1]).numpy()[0]].tolist()
