"""`sbir index build`: encode a gallery's photos with Ray Data and save the gallery for serving.

The photos come from roles of a prepared dataset (with their classes) or from a plain folder (a user's own
collection, no classes). The saved gallery (``sbir.inference.gallery``) holds the encodings, the FAISS index
(``index.*`` of the config), the items, the photos themselves (``images/``) and a manifest tying it to the
checkpoint's weights. When the checkpoint came from an MLflow run, the gallery is logged there as the
artifact ``gallery``, so a registered model can be served with the gallery built for it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines import storage
from pipelines.embed import ENCODING_PREFIX, encode_rows, gather, image_folder_dataset
from pipelines.prepare import read_manifest, read_prepared
from pipelines.rows import ROW_COLUMNS
from pipelines.tracking import GALLERY_ARTIFACT, ResolvedCheckpoint
from sbir.checkpoint import load_checkpoint, read_checkpoint_meta, weights_sha256
from sbir.config import Config
from sbir.errors import SbirError
from sbir.inference.encoder import resolve_device
from sbir.inference.gallery import items_from_rows
from sbir.inference.saved_gallery import Provenance, save_gallery, write_images
from sbir.methods import family_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GalleryBuild:
    """What `sbir index build` wrote."""

    out: str
    photos: int
    kind: str
    index_kind: str
    seconds: float
    encode_seconds: float  # the part spent reading, decoding and encoding the photos
    mlflow_run: str | None = None

    @property
    def images_per_second(self) -> float:
        return self.photos / self.seconds if self.seconds > 0 else 0.0


def _photo_rows(prepared: str | None, roles: tuple[str, ...], images: Path | None):
    from ray.data.expressions import col

    if (prepared is None) == (images is None):
        raise SbirError(
            "build a gallery from a prepared dataset (--prepared) or a folder of images (--images), one of them"
        )
    if images is not None:
        return image_folder_dataset(images), {}
    manifest = read_manifest(prepared)
    unknown = sorted(set(roles) - set(manifest.counts))
    if unknown:
        raise SbirError(f"{prepared} has no role {', '.join(unknown)}; it has {', '.join(manifest.counts)}")
    ds = read_prepared(prepared, columns=ROW_COLUMNS).filter(
        expr=col("role").is_in(list(roles)) & (col("modality") == "photo")
    )
    return ds, manifest.classes.by_id


def build_gallery(
    resolved: ResolvedCheckpoint,
    out: str,
    config: Config,
    *,
    prepared: str | None = None,
    roles: tuple[str, ...] = ("test",),
    images: Path | None = None,
    echo=logger.info,
) -> GalleryBuild:
    """Encode the photos, build the method's gallery and save it (with its photos) to `out` (local or s3://)."""
    storage.check_writable(out)
    started = time.perf_counter()
    meta = read_checkpoint_meta(resolved.directory)
    family = family_of(meta.config)
    model, _ = load_checkpoint(resolved.directory, device=resolve_device(config.eval.device))
    transform = family.image_transform(config, model)
    ds, class_names = _photo_rows(prepared, roles, images)
    rows = gather(encode_rows(ds, resolved.directory, transform, config.eval, keep_images=True), ("photo",))["photo"]
    encoded_s = time.perf_counter() - started
    echo(f"encoded {len(rows['path'])} photos in {encoded_s:.1f} s ({len(rows['path']) / encoded_s:.0f} images/s)")
    arrays = {k.removeprefix(ENCODING_PREFIX): v for k, v in rows.items() if k.startswith(ENCODING_PREFIX)}
    items = items_from_rows(rows, class_names)
    gallery = family.gallery(model, family.encoding.from_arrays(arrays), items, config.index)
    provenance = Provenance(
        family.name, resolved.reference, weights_sha256(resolved.directory), config.model.model_dump(mode="json")
    )
    local = Path(out) if not storage.is_s3(out) else Path(tempfile.mkdtemp(prefix="sbir-gallery-"))
    try:
        save_gallery(gallery, local, provenance)
        write_images(local, {item.id: bytes(data) for item, data in zip(items, rows["image"], strict=True)})
        if storage.is_s3(out):
            _upload(local, out)
        mlflow_run = _log_to_run(resolved, local)
    finally:
        if storage.is_s3(out):
            shutil.rmtree(local, ignore_errors=True)
    build = GalleryBuild(
        out, len(gallery), gallery.kind, gallery.index_config.kind, time.perf_counter() - started, encoded_s, mlflow_run
    )
    logger.info("gallery of %d photos built at %.0f images/s", build.photos, build.images_per_second)
    return build


def _upload(local: Path, out: str) -> None:
    import pyarrow.fs as pafs

    fs, base = storage.resolve(out)
    pafs.copy_files(str(local), base, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def _log_to_run(resolved: ResolvedCheckpoint, local: Path) -> str | None:
    """Log the gallery as the artifact `gallery` of the checkpoint's MLflow run, when it has one."""
    if resolved.run_id is None or resolved.tracking_uri is None:
        return None
    from pipelines.tracking import Tracker

    Tracker.attach(resolved.tracking_uri, resolved.run_id).log_artifact(local, GALLERY_ARTIFACT)
    return resolved.run_id
