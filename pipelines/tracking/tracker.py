"""The run tracker: one MLflow run bound to one tracking URI, with params, metrics, tags and artifacts.

Used by the driver (``Tracker.start``) and by rank 0 inside Ray Train workers (``Tracker.attach``).
Values are cut to MLflow's limits and keys sanitised, so a long class list or an odd metric name can
never fail a run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

from pipelines.tracking.uri import TrackingError, default_artifact_location, display, make_client

logger = logging.getLogger(__name__)

# MLflow's limits (mlflow.utils.validation); checked against mlflow 3.17.
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_KEY_LENGTH = 250
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
TRUNCATION_MARKER = "...[truncated]"

_TERMINAL = frozenset({"FINISHED", "FAILED", "KILLED"})
# MLflow accepts word characters, '-', '.', ' ', '/' and, except on Windows, ':' in metric/param/tag keys.
_BAD_KEY_CHARS = re.compile(r"[^\w\-. /]" if os.name == "nt" else r"[^\w\-. /:]")


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config dict as MLflow params: ``{"model.zse.depth": "12", ...}``.

    Lists become JSON. Empty mappings become ``"{}"`` so the key still shows. Values are cut to
    MLflow's 6000-character limit and end with a marker, so a long class list cannot fail the run.
    """
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, name))
        else:
            out[name] = _truncate(_param_str(value), MAX_PARAM_VAL_LENGTH)
    return out


def _param_str(value: Any) -> str:
    if isinstance(value, Mapping | list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return json.dumps(items if isinstance(value, Mapping) else list(items), default=str)
    return str(value)


def _truncate(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER


def _sanitise_key(name: str) -> str:
    """A metric/param/tag key that MLflow accepts.

    Invalid characters become ``_``. Empty, ``.`` and ``..`` path segments are dropped, because MLflow
    rejects keys that change under normpath. The key is cut to 250 characters.
    """
    cleaned = _BAD_KEY_CHARS.sub("_", str(name))
    cleaned = "/".join(part for part in cleaned.split("/") if part not in ("", ".", "..")) or "_"
    return cleaned[:MAX_KEY_LENGTH]


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class Tracker:
    """Thin wrapper around :class:`MlflowClient` bound to one tracking URI and one run.

    It pickles without its client (the client is rebuilt lazily). Still, workers should prefer
    :meth:`attach` with the URI and the run id.
    """

    tracking_uri: str
    run_id: str
    _client: MlflowClient | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = make_client(self.tracking_uri)
        return self._client

    def __getstate__(self) -> dict[str, Any]:
        return {"tracking_uri": self.tracking_uri, "run_id": self.run_id, "_client": None}

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.finish("FINISHED" if exc_type is None else "FAILED")

    @classmethod
    def start(
        cls,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        params: Mapping[str, str],
        tags: Mapping[str, str],
    ) -> Tracker:
        """Create the experiment if it is missing, start a run in it, and log its params (in batches) and tags."""
        tracker = cls(tracking_uri, "")
        experiment_id = _ensure_experiment(tracker.client, experiment, tracking_uri)
        run = tracker.client.create_run(experiment_id, run_name=run_name)
        tracker.run_id = run.info.run_id
        logger.info(
            "MLflow run %s (%s) in experiment %r at %s", run_name, tracker.run_id, experiment, display(tracking_uri)
        )
        cleaned = {_sanitise_key(k): _truncate(str(v), MAX_PARAM_VAL_LENGTH) for k, v in params.items()}
        for batch in _chunks([Param(k, v) for k, v in cleaned.items()], MAX_PARAMS_TAGS_PER_BATCH):
            tracker.client.log_batch(tracker.run_id, params=list(batch), synchronous=True)
        tracker.set_tags(tags)
        return tracker

    @classmethod
    def attach(cls, tracking_uri: str, run_id: str) -> Tracker:
        """Bind to an existing run, for example from rank 0 in a Ray worker. Fails clearly if the run is unknown."""
        tracker = cls(tracking_uri, run_id)
        try:
            tracker.client.get_run(run_id)
        except MlflowException as exc:
            raise TrackingError(
                f"cannot attach to MLflow run {run_id!r} at {display(tracking_uri)}: {exc.message}"
            ) from exc
        return tracker

    @property
    def artifact_uri(self) -> str:
        """Root artifact URI of the run (``file:///.../mlartifacts/<run_id>/artifacts`` for the local store)."""
        return self.client.get_run(self.run_id).info.artifact_uri

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log metrics at one step. Non-finite or non-numeric values are skipped with a warning; names are sanitised."""
        timestamp = int(time.time() * 1000)
        entries: dict[str, Metric] = {}
        for name, raw in metrics.items():
            try:
                value = float(raw)
            except (TypeError, ValueError):
                logger.warning("metric %r: %r is not a number; not logged", name, raw)
                continue
            if not math.isfinite(value):
                logger.warning("metric %r is %s at step %s; not logged", name, value, step)
                continue
            key = _sanitise_key(name)
            entries[key] = Metric(key, value, timestamp, int(step or 0))
        for batch in _chunks(list(entries.values()), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=list(batch), synchronous=True)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file, or a directory tree, under ``artifact_path``.

        Without ``artifact_path``, a file keeps its name at the artifact root and a directory is
        uploaded under its own name.
        """
        local = Path(path)
        if local.is_dir():
            self.client.log_artifacts(self.run_id, str(local), artifact_path or local.name)
        elif local.is_file():
            self.client.log_artifact(self.run_id, str(local), artifact_path)
        else:
            raise FileNotFoundError(f"cannot log artifact {local}: no such file or directory")

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set run tags (values are cut to MLflow's 8000-character limit)."""
        cleaned = {_sanitise_key(k): _truncate(str(v), MAX_TAG_VAL_LENGTH) for k, v in tags.items()}
        for batch in _chunks([RunTag(k, v) for k, v in cleaned.items()], MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=list(batch), synchronous=True)

    def finish(self, status: str = "FINISHED") -> None:
        """End the run with a terminal status: FINISHED, FAILED or KILLED."""
        status = status.upper()
        if status not in _TERMINAL:
            raise ValueError(f"finish() needs a terminal run status, got {status!r}; use one of {sorted(_TERMINAL)}")
        self.client.set_terminated(self.run_id, status)


def is_error(exc: MlflowException, code: int) -> bool:
    return exc.error_code == ErrorCode.Name(code)


def _ensure_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """The id of experiment ``name``, created (with artifacts next to a local SQLite store) or restored if needed."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=default_artifact_location(tracking_uri))
        except MlflowException as exc:  # another process created it meanwhile
            if not is_error(exc, RESOURCE_ALREADY_EXISTS):
                raise
            experiment = client.get_experiment_by_name(name)
            assert experiment is not None
    if experiment.lifecycle_stage == "deleted":
        logger.warning("MLflow experiment %r was deleted; restoring it", name)
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id
