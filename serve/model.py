"""What the endpoint serves: a checkpoint and the saved gallery built for it, resolved from references.

A model reference (path, run id, ``runs:/``, ``models:/name@alias``) resolves through the MLflow registry;
the gallery is the one given, or the ``gallery`` artifact that ``sbir index build`` logged to the model
version's run. The gallery must have been built with exactly these weights (its manifest holds their
SHA-256). The result is a small picklable :class:`ServingModel` every deployment loads by itself.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipelines import storage
from pipelines.tracking import GALLERY_ARTIFACT, ResolvedCheckpoint, resolve_reference
from sbir.checkpoint import read_checkpoint_meta, weights_sha256
from sbir.errors import SbirError
from sbir.inference.gallery import GalleryError
from sbir.inference.saved_gallery import read_gallery_meta

logger = logging.getLogger(__name__)

CACHE_DIR = "serve-cache"  # under run.dir: galleries downloaded from MLflow runs, and their updates


class ServingError(SbirError):
    """The endpoint cannot serve what it was given (no gallery, a gallery for other weights …)."""


@dataclass(frozen=True)
class ServingModel:
    """One servable version: where its checkpoint and gallery are, and who it is."""

    reference: str  # what the user asked for (e.g. models:/sbir-zse-synthetic@champion)
    checkpoint_dir: str
    gallery_dir: str  # a local folder (an s3:// gallery is copied to a local cache first)
    method: str
    weights_sha256: str
    version: str | None = None  # the registry version, for models:/ references
    run_id: str | None = None
    gallery_source: str = ""  # the gallery as given (local path or s3://)
    writable: bool = True  # False for a gallery copied from S3: updates would not persist

    @property
    def model_id(self) -> str:
        """Identity of what is loaded: the version for registry references, else the weights."""
        return f"{self.reference}#{self.version}" if self.version else f"{self.reference}#{self.weights_sha256[:12]}"


def _local_gallery(source: str) -> tuple[str, bool]:
    """A local folder holding the gallery: the folder itself, or a cached copy of an s3:// prefix."""
    if not storage.is_s3(source):
        return str(Path(source).resolve()), True
    import pyarrow.fs as pafs

    cache = Path(tempfile.gettempdir()) / "sbir-galleries" / hashlib.sha256(source.encode()).hexdigest()[:16]
    if not (cache / "gallery.json").is_file():
        fs, base = storage.resolve(source)
        cache.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(base, str(cache), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return str(cache), False


def _artifact_gallery(resolved: ResolvedCheckpoint, runs_dir: str | Path) -> str:
    """The `gallery` artifact of the checkpoint's run, in a cache folder of its own under ``<run.dir>``.

    The folder is kept: updates to the gallery (its journal) are written there and survive a restart.
    """
    if resolved.run_id is None or resolved.tracking_uri is None:
        raise ServingError(
            f"no gallery given for {resolved.reference}, and it is not from an MLflow run that could hold one; "
            "build one with `sbir index build` and pass --gallery"
        )
    cache = Path(runs_dir).resolve() / CACHE_DIR / resolved.run_id
    if (cache / GALLERY_ARTIFACT / "gallery.json").is_file():
        return str(cache / GALLERY_ARTIFACT)
    from pipelines.tracking.uri import make_client

    client = make_client(resolved.tracking_uri)
    cache.mkdir(parents=True, exist_ok=True)
    try:
        return client.download_artifacts(resolved.run_id, GALLERY_ARTIFACT, str(cache))
    except Exception as exc:  # MLflow raises several types for a missing artifact
        raise ServingError(
            f"run {resolved.run_id} of {resolved.reference} has no '{GALLERY_ARTIFACT}' artifact ({exc}); build one "
            f"with `sbir index build --checkpoint {resolved.reference}` or pass --gallery"
        ) from None


def resolve_serving(
    model: str, gallery: str | None, tracking_uri: str | None = None, runs_dir: str | Path = "runs"
) -> ServingModel:
    """Resolve what to serve and check that the gallery was built with these weights."""
    resolved = resolve_reference(model, tracking_uri, runs_dir=runs_dir)
    meta = read_checkpoint_meta(resolved.directory)
    source = gallery or _artifact_gallery(resolved, runs_dir)
    local, writable = _local_gallery(source)
    try:
        gallery_meta = read_gallery_meta(local)
    except GalleryError as exc:
        raise ServingError(f"gallery {source}: {exc}") from exc
    sha = weights_sha256(resolved.directory)
    if gallery_meta.provenance.checkpoint_sha256 != sha:
        raise ServingError(
            f"gallery {source} was built for other weights ({gallery_meta.provenance.checkpoint}) than "
            f"{model}; rebuild it with `sbir index build --checkpoint {model}`"
        )
    return ServingModel(
        reference=model,
        checkpoint_dir=str(resolved.directory),
        gallery_dir=local,
        method=meta.method,
        weights_sha256=sha,
        version=resolved.version,
        run_id=resolved.run_id,
        gallery_source=source,
        writable=writable,
    )
