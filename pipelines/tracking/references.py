"""Turning a user's checkpoint reference into a local checkpoint directory.

Accepted: a local directory, ``models:/<name>@<alias>``, ``models:/<name>/<version>``,
``runs:/<run_id>/<path>`` or a bare 32-hex run id (docs/tracking.md#checkpoint-references).
A lookup never creates a tracking store.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from pipelines.tracking.registry import CHECKPOINT_ARTIFACT
from pipelines.tracking.uri import DEFAULT_DB, display, local_sqlite_path, make_client, normalise_uri
from sbir.checkpoint import META_FILE, CheckpointError

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """A checkpoint reference that names nothing (the message says what was tried)."""


class BadCheckpointReference(CheckpointError, ValueError):
    """A checkpoint reference that is malformed."""


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """Where a reference led: the local checkpoint folder, and the MLflow run and model version behind it."""

    reference: str
    directory: Path
    run_id: str | None = None  # the run whose artifact it is (None for a plain folder)
    model_name: str | None = None  # for models:/ references
    version: str | None = None
    tracking_uri: str | None = None


def resolve_checkpoint(
    ref: str, tracking_uri: str | None = None, dst: str | Path | None = None, runs_dir: str | Path = "runs"
) -> Path:
    """Turn a user reference into a local checkpoint directory (one that holds ``checkpoint.json``).

    Accepted references:

    * an existing local directory, returned as it is;
    * ``models:/<name>@<alias>`` or ``models:/<name>/<version>``;
    * ``runs:/<run_id>/<artifact path>``;
    * a bare 32-hex run id, meaning that run's ``checkpoint`` artifact.

    Artifacts are downloaded to ``dst``. If ``dst`` is not given, a local store's files are used in
    place and anything else goes to a new temporary directory. The store is ``tracking_uri``, else
    ``MLFLOW_TRACKING_URI``, else ``<runs_dir>/mlflow.db`` if that file exists. A reference that does not
    resolve raises BadCheckpointReference (malformed) or CheckpointNotFound; the message names the
    reference and what was tried.
    """
    return resolve_reference(ref, tracking_uri, dst, runs_dir).directory


def is_tracked_reference(ref: str) -> bool:
    """Whether ``ref`` names an MLflow model version or run artifact (else it must be a local folder)."""
    ref = str(ref).strip()
    return ref.startswith(("models:/", "runs:/")) or (bool(_RUN_ID.match(ref)) and not Path(ref).exists())


def resolve_reference(
    ref: str, tracking_uri: str | None = None, dst: str | Path | None = None, runs_dir: str | Path = "runs"
) -> ResolvedCheckpoint:
    """:func:`resolve_checkpoint`, also saying which run and model version the checkpoint came from."""
    ref = str(ref).strip()
    local = Path(ref).expanduser()
    if local.exists():
        if not local.is_dir():
            raise CheckpointNotFound(f"checkpoint {ref!r}: {local} is a file; expected a checkpoint directory")
        return ResolvedCheckpoint(ref, _check_checkpoint_dir(local, ref, f"local directory {local}"))

    if ref.startswith("models:/"):
        uri = _lookup_uri(ref, tracking_uri, runs_dir)
        client = make_client(uri)
        version = _model_version(client, ref, uri)
        source = version.source
        tried = f"{ref} -> version {version.version}, source {source} (store {display(uri)})"
        if source.startswith("runs:/"):
            run_id, artifact = _parse_runs_uri(source, ref)
            directory = _download_run_artifact(client, run_id, artifact, dst, ref, tried)
        else:
            run_id, directory = version.run_id, _download_uri(source, dst, ref, tried)
        return ResolvedCheckpoint(
            ref, _check_checkpoint_dir(directory, ref, tried), run_id, version.name, str(version.version), uri
        )

    if ref.startswith("runs:/"):
        run_id, artifact = _parse_runs_uri(ref, ref)
    elif _RUN_ID.match(ref):
        run_id, artifact = ref, CHECKPOINT_ARTIFACT
    else:
        raise BadCheckpointReference(
            f"checkpoint {ref!r} is not an existing directory, a models:/<name>@<alias> or models:/<name>/<version> "
            "URI, a runs:/<run_id>/<path> URI, or a 32-character MLflow run id"
        )
    uri = _lookup_uri(ref, tracking_uri, runs_dir)
    client = make_client(uri)
    tried = f"artifact {artifact!r} of run {run_id} (store {display(uri)})"
    directory = _download_run_artifact(client, run_id, artifact, dst, ref, tried)
    return ResolvedCheckpoint(ref, _check_checkpoint_dir(directory, ref, tried), run_id, tracking_uri=uri)


def _lookup_uri(ref: str, tracking_uri: str | None, runs_dir: str | Path) -> str:
    """The store to look ``ref`` up in: ``tracking_uri`` > ``MLFLOW_TRACKING_URI`` > ``<runs_dir>/mlflow.db``.

    Unlike :func:`resolve_tracking_uri` it never creates anything: a local SQLite store must already exist.
    """
    for source, value in (
        ("tracking.uri", tracking_uri),
        ("MLFLOW_TRACKING_URI", os.environ.get("MLFLOW_TRACKING_URI")),
    ):
        if value and value.strip():
            uri = normalise_uri(value.strip(), source, create=False)
            db = local_sqlite_path(uri)
            if db is not None and not db.is_file():
                raise CheckpointNotFound(f"checkpoint {ref!r}: the MLflow store {db} ({source}) does not exist")
            return uri
    db = (Path(runs_dir) / DEFAULT_DB).resolve()
    if not db.is_file():
        raise CheckpointNotFound(
            f"checkpoint {ref!r} needs an MLflow store, but no tracking URI was given, MLFLOW_TRACKING_URI is unset "
            f"and the default store {db} does not exist; pass the tracking URI (config tracking.uri) or set "
            "MLFLOW_TRACKING_URI"
        )
    return f"sqlite:///{db}"


def _model_version(client: MlflowClient, ref: str, uri: str) -> ModelVersion:
    rest = ref[len("models:/") :]
    try:
        if "@" in rest:
            name, alias = rest.rsplit("@", 1)
            if not name or not alias:
                raise BadCheckpointReference(f"checkpoint {ref!r}: expected models:/<name>@<alias>")
            return client.get_model_version_by_alias(name, alias)
        name, _, version = rest.rpartition("/")
        if not name or not version.isdigit():
            raise BadCheckpointReference(
                f"checkpoint {ref!r}: expected models:/<name>@<alias> or models:/<name>/<version>"
            )
        return client.get_model_version(name, version)
    except MlflowException as exc:
        raise CheckpointNotFound(
            f"checkpoint {ref!r}: not found in the model registry at {display(uri)}: {exc.message}"
        ) from exc


def _parse_runs_uri(uri: str, ref: str) -> tuple[str, str]:
    run_id, _, artifact = uri[len("runs:/") :].partition("/")
    artifact = artifact.strip("/")
    if not run_id or not artifact:
        raise BadCheckpointReference(f"checkpoint {ref!r}: expected runs:/<run_id>/<artifact path>, got {uri!r}")
    return run_id, artifact


def _download_run_artifact(
    client: MlflowClient, run_id: str, artifact: str, dst: str | Path | None, ref: str, tried: str
) -> Path:
    try:
        root = client.get_run(run_id).info.artifact_uri
    except MlflowException as exc:
        raise CheckpointNotFound(f"checkpoint {ref!r}: tried {tried}: {exc.message}") from exc
    in_place = _local_path(f"{root.rstrip('/')}/{artifact}")
    if dst is None and in_place is not None:
        if not in_place.is_dir():
            raise CheckpointNotFound(f"checkpoint {ref!r}: tried {tried}: {in_place} does not exist")
        return in_place
    target = _target_dir(dst)
    try:
        return Path(client.download_artifacts(run_id, artifact, str(target)))
    except (MlflowException, OSError) as exc:
        raise CheckpointNotFound(f"checkpoint {ref!r}: tried {tried}: download failed: {exc}") from exc


def _download_uri(source: str, dst: str | Path | None, ref: str, tried: str) -> Path:
    """Fetch a model-version source that is a plain artifact URI (not runs:/); no tracking store is involved."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    in_place = _local_path(source)
    if dst is None and in_place is not None:
        if not in_place.is_dir():
            raise CheckpointNotFound(f"checkpoint {ref!r}: tried {tried}: {in_place} does not exist")
        return in_place
    try:
        return Path(get_artifact_repository(source).download_artifacts("", str(_target_dir(dst))))
    except (MlflowException, OSError) as exc:
        raise CheckpointNotFound(f"checkpoint {ref!r}: tried {tried}: download failed: {exc}") from exc


def _local_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if not parsed.scheme:
        return Path(uri)
    return None


def _target_dir(dst: str | Path | None) -> Path:
    if dst is None:
        return Path(tempfile.mkdtemp(prefix="sbir-checkpoint-"))
    target = Path(dst)
    target.mkdir(parents=True, exist_ok=True)
    return target


def _check_checkpoint_dir(path: Path, ref: str, tried: str) -> Path:
    if not (path / META_FILE).is_file():
        raise CheckpointNotFound(
            f"checkpoint {ref!r}: tried {tried}, got {path}, which is not an sbir checkpoint directory "
            f"({META_FILE} is missing)"
        )
    return path
