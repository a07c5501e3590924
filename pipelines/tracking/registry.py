"""The model registry: one registered model per method and setting, and the ``champion`` rule.

A version points at the project's checkpoint directory, logged as the run artifact ``checkpoint``
(``mlflow.pytorch.log_model`` is slow and loads a GraphModule). The alias ``champion`` moves only to a
strictly better version by the selection metric (docs/tracking.md#the-model-registry).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS

from pipelines.tracking.tracker import Tracker, is_error
from sbir.checkpoint import META_FILE, CheckpointError, read_checkpoint_meta
from sbir.errors import SbirError

logger = logging.getLogger(__name__)

CHECKPOINT_ARTIFACT = "checkpoint"
GALLERY_ARTIFACT = "gallery"  # the saved gallery `sbir index build` logs beside a run's checkpoint
CHAMPION_ALIAS = "champion"


class RegistryError(SbirError, ValueError):
    """A checkpoint that cannot be registered (not a checkpoint, or a selection metric that is not finite)."""


class NotACheckpoint(RegistryError, FileNotFoundError):
    """The directory to register holds no checkpoint.json."""


@dataclass(frozen=True)
class Registration:
    """What :func:`register_checkpoint` did. ``previous_champion`` is the version that held the alias before."""

    name: str
    version: str
    champion: bool
    previous_champion: str | None


def register_checkpoint(
    tracker: Tracker,
    checkpoint_dir: str | Path,
    model_name: str,
    *,
    metric_name: str,
    metric_value: float,
    higher_is_better: bool = True,
    tags: Mapping[str, str] | None = None,
) -> Registration:
    """Register a checkpoint as a new model version and move the ``champion`` alias only if the version is better.

    The directory is logged as the run artifact ``checkpoint``. The version's source is
    ``runs:/<run_id>/checkpoint``. The version's tags are ``method``, ``preset`` and ``setting`` (read
    from ``checkpoint.json``), then the given ``tags`` (which override those three), then
    ``<metric_name>=<value>``, ``selection_metric`` and ``higher_is_better``.

    The alias moves when there is no champion yet, or when the value strictly beats the champion's
    tag for the same metric. If the champion has no such tag, the alias stays where it is and a
    warning is logged.
    """
    directory = Path(checkpoint_dir)
    if not (directory / META_FILE).is_file():
        raise NotACheckpoint(f"{directory} is not an sbir checkpoint directory: {META_FILE} is missing")
    value = float(metric_value)
    if not math.isfinite(value):
        raise RegistryError(f"cannot register {directory}: {metric_name}={metric_value} is not finite")

    version_tags = {**_checkpoint_tags(directory), **(tags or {})}
    version_tags.update(
        {
            metric_name: repr(value),
            "selection_metric": metric_name,
            "higher_is_better": str(bool(higher_is_better)).lower(),
        }
    )
    version_tags = {k: str(v) for k, v in version_tags.items()}

    tracker.log_artifact(directory, CHECKPOINT_ARTIFACT)
    client = tracker.client
    try:
        client.create_registered_model(model_name)
    except MlflowException as exc:
        if not is_error(exc, RESOURCE_ALREADY_EXISTS):
            raise
    version = client.create_model_version(
        model_name, f"runs:/{tracker.run_id}/{CHECKPOINT_ARTIFACT}", run_id=tracker.run_id, tags=version_tags
    ).version

    previous = _champion(client, model_name)
    if previous is None:
        champion = True
    else:
        prev_raw = previous.tags.get(metric_name)
        try:
            prev_value = float(prev_raw) if prev_raw is not None else math.nan
        except ValueError:
            prev_value = math.nan
        if math.isnan(prev_value):
            logger.warning(
                "%s: champion v%s has no usable %r tag (%r); leaving the alias on it",
                model_name,
                previous.version,
                metric_name,
                prev_raw,
            )
            champion = False
        else:
            champion = value > prev_value if higher_is_better else value < prev_value
    if champion:
        client.set_registered_model_alias(model_name, CHAMPION_ALIAS, str(version))
    logger.info(
        "registered %s v%s (%s=%.6g)%s",
        model_name,
        version,
        metric_name,
        value,
        " as champion" if champion else f"; champion stays v{previous.version}" if previous else "",
    )
    return Registration(model_name, str(version), champion, str(previous.version) if previous else None)


def _checkpoint_tags(directory: Path) -> dict[str, str]:
    """method / preset / setting of the checkpoint, from its checkpoint.json."""
    try:
        meta = read_checkpoint_meta(directory)
    except CheckpointError as exc:
        raise RegistryError(f"cannot register {directory}: {exc}") from exc
    return {"method": meta.method, "preset": meta.preset, "setting": meta.config.setting}


def _champion(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException:
        return None
