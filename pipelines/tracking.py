"""MLflow tracking and model registry for sbir runs, with a local SQLite store by default.

Three parts use this module: the driver, rank 0 inside Ray Train workers, and the CLI. It never imports Ray.

Three choices shape it:

* **Where runs are stored.** The tracking URI comes from the config (``tracking.uri``), else from
  ``MLFLOW_TRACKING_URI``, else it is a SQLite file inside the run directory. MLflow's own defaults
  depend on the cwd: ``./mlflow.db`` and, for artifacts, ``./mlruns``, a store that MLflow 3 refuses
  unless ``MLFLOW_ALLOW_FILE_STORE=true``. A Ray worker has a different cwd from the driver.
  Relative SQLite paths are therefore made absolute. For a local SQLite store, the artifacts go
  next to the database, in ``<runs_dir>/mlartifacts``.
* **Every call passes its URI.** All calls go through an :class:`mlflow.MlflowClient` built for one
  explicit URI, for both tracking and the registry. Nothing reads or changes MLflow's global
  "current" URI. ``mlflow.artifacts.download_artifacts("models:/...")``, for example, would look in
  the default registry and create ``./mlflow.db`` as a side effect.
* **What a model is.** A registered model version points at the project's checkpoint directory
  (``model.safetensors`` + ``checkpoint.json``), which is logged as the run artifact ``checkpoint``.
  ``mlflow.pytorch.log_model`` is slow and loads a GraphModule. These checkpoints load with
  :func:`sbir.checkpoint.load_checkpoint`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

from sbir.checkpoint import META_FILE
from sbir.config import build_config

logger = logging.getLogger(__name__)

DEFAULT_DB = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
CHECKPOINT_ARTIFACT = "checkpoint"
CHAMPION_ALIAS = "champion"

# MLflow's limits (mlflow.utils.validation); checked against mlflow 3.17.
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_KEY_LENGTH = 250
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
TRUNCATION_MARKER = "...[truncated]"

_TERMINAL = frozenset({"FINISHED", "FAILED", "KILLED"})
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
# MLflow accepts word characters, '-', '.', ' ', '/' and, except on Windows, ':' in metric/param/tag keys.
_BAD_KEY_CHARS = re.compile(r"[^\w\-. /]" if os.name == "nt" else r"[^\w\-. /:]")


def _quiet_mlflow() -> None:
    """Hide the schema-migration INFO chatter and artifact progress bars; warnings and errors still show."""
    for name in ("alembic", "alembic.runtime.migration", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


_quiet_mlflow()


# --------------------------------------------------------------------------- URIs


def resolve_tracking_uri(configured: str | None, runs_dir: str | Path) -> str:
    """The URI to track to: ``configured`` (config) > ``MLFLOW_TRACKING_URI`` > ``sqlite:///<abs runs_dir>/mlflow.db``.

    Never falls back to a ``./mlruns`` file store. Relative SQLite paths are made absolute, and the
    directory of a SQLite file is created. Ray workers and the driver can then share the URI.
    """
    for source, value in (("tracking.uri", configured), ("MLFLOW_TRACKING_URI", os.environ.get("MLFLOW_TRACKING_URI"))):
        if value and value.strip():
            uri = _normalise_uri(value.strip(), source)
            logger.debug("tracking URI %s (from %s)", uri, source)
            return uri
    runs = Path(runs_dir).expanduser().resolve()
    runs.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{runs / DEFAULT_DB}"


def _normalise_uri(uri: str, source: str) -> str:
    """Absolute SQLite paths (their directory created); a bare ``*.db`` path means SQLite; file stores are refused."""
    if uri.startswith("sqlite:"):
        if not uri.startswith("sqlite:///"):
            raise ValueError(f"{source}={uri!r}: SQLite URIs look like sqlite:///relative.db or sqlite:////abs/path.db")
        path, sep, query = uri[len("sqlite:///") :].partition("?")
        if not path or path == ":memory:":
            return uri
        db = Path(path).expanduser().resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{db}{sep}{query}"
    scheme = urlparse(uri).scheme
    if not scheme or len(scheme) == 1:  # a bare path (or a Windows drive letter)
        if Path(uri).suffix in (".db", ".sqlite", ".sqlite3"):
            return _normalise_uri(f"sqlite:///{uri}", source)
        scheme = "file"
    if scheme == "file" and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true", "yes"):
        raise ValueError(
            f"{source}={uri!r} is an MLflow file store, which MLflow 3 refuses by default; use a SQLite file "
            "(sqlite:///path/mlflow.db or a bare path ending in .db), a server URI (http://host:5000), "
            "or set MLFLOW_ALLOW_FILE_STORE=true"
        )
    return uri


def _local_sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a local ``sqlite:///`` URI, or None for anything else (servers, :memory:)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri[len("sqlite:///") :].partition("?")[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def _default_artifact_location(tracking_uri: str) -> str | None:
    """``<db dir>/mlartifacts`` for a local SQLite store; None lets a server choose its own artifact root."""
    db = _local_sqlite_path(tracking_uri)
    return (db.parent / ARTIFACTS_DIR).resolve().as_uri() if db is not None else None


def _make_client(tracking_uri: str) -> MlflowClient:
    # The registry URI is given explicitly: MLflow would otherwise pick its global default.
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


# --------------------------------------------------------------------------- params and names


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


def model_name(method: str, setting: str) -> str:
    """The registered-model name for a method and a benchmark setting, e.g. ``sbir-zse-sketchy25``.

    The name is lowercase and uses only ``[a-z0-9-]``. It is also safe in URLs and in ``models:/`` references.
    """
    parts = [re.sub(r"[^a-z0-9]+", "-", str(p).lower()).strip("-") for p in ("sbir", method, setting)]
    if not parts[1] or not parts[2]:
        raise ValueError(f"model_name needs a method and a setting, got method={method!r} setting={setting!r}")
    return "-".join(parts)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --------------------------------------------------------------------------- tracker


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
            self._client = _make_client(self.tracking_uri)
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
            "MLflow run %s (%s) in experiment %r at %s", run_name, tracker.run_id, experiment, _display(tracking_uri)
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
            raise ValueError(
                f"cannot attach to MLflow run {run_id!r} at {_display(tracking_uri)}: {exc.message}"
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


def _display(tracking_uri: str) -> str:
    """The URI without credentials, for log lines and error messages."""
    parsed = urlparse(tracking_uri)
    if parsed.password or parsed.username:
        return parsed._replace(netloc=parsed.hostname or "").geturl()
    return tracking_uri


def _is(exc: MlflowException, code: int) -> bool:
    return exc.error_code == ErrorCode.Name(code)


def _ensure_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """The id of experiment ``name``, created (with artifacts next to a local SQLite store) or restored if needed."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=_default_artifact_location(tracking_uri))
        except MlflowException as exc:  # another process created it meanwhile
            if not _is(exc, RESOURCE_ALREADY_EXISTS):
                raise
            experiment = client.get_experiment_by_name(name)
            assert experiment is not None
    if experiment.lifecycle_stage == "deleted":
        logger.warning("MLflow experiment %r was deleted; restoring it", name)
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


# --------------------------------------------------------------------------- registry


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
        raise FileNotFoundError(f"{directory} is not an sbir checkpoint directory: {META_FILE} is missing")
    value = float(metric_value)
    if not math.isfinite(value):
        raise ValueError(f"cannot register {directory}: {metric_name}={metric_value} is not finite")

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
        if not _is(exc, RESOURCE_ALREADY_EXISTS):
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
    """method / preset / setting (``Config.setting``) from checkpoint.json, best effort: missing ones are left out."""
    try:
        meta = json.loads((directory / META_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        logger.warning("%s: cannot read %s for tags (%s)", directory, META_FILE, exc)
        return {}
    tags = {k: str(meta[k]) for k in ("method", "preset") if meta.get(k)}
    try:
        tags["setting"] = getattr(build_config(meta.get("config") or {}), "setting", "")
    except Exception as exc:  # an older or foreign config: fall back to the raw data section
        logger.debug("%s: stored config does not validate (%s); setting from layout/split", directory, exc)
        data = (meta.get("config") or {}).get("data") or {}
        tags["setting"] = data.get("setting") or "-".join(str(data[k]) for k in ("layout", "split") if data.get(k))
    return {k: v for k, v in tags.items() if v}


def _champion(client: MlflowClient, name: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException:
        return None


# --------------------------------------------------------------------------- resolving references


def resolve_checkpoint(ref: str, tracking_uri: str | None = None, dst: str | Path | None = None) -> Path:
    """Turn a user reference into a local checkpoint directory (one that holds ``checkpoint.json``).

    Accepted references:

    * an existing local directory, returned as it is;
    * ``models:/<name>@<alias>`` or ``models:/<name>/<version>``;
    * ``runs:/<run_id>/<artifact path>``;
    * a bare 32-hex run id, meaning that run's ``checkpoint`` artifact.

    Artifacts are downloaded to ``dst``. If ``dst`` is not given, a local store's files are used in
    place and anything else goes to a new temporary directory. If ``tracking_uri`` is not given,
    ``MLFLOW_TRACKING_URI`` is used, else ``./runs/mlflow.db`` if that file exists. A reference that
    does not resolve raises ValueError (malformed) or FileNotFoundError (not found). The message
    names the reference and what was tried.
    """
    ref = str(ref).strip()
    local = Path(ref).expanduser()
    if local.exists():
        if not local.is_dir():
            raise FileNotFoundError(f"checkpoint {ref!r}: {local} is a file; expected a checkpoint directory")
        return _check_checkpoint_dir(local, ref, f"local directory {local}")

    if ref.startswith("models:/"):
        uri = _lookup_uri(ref, tracking_uri)
        client = _make_client(uri)
        version = _model_version(client, ref, uri)
        source = version.source
        tried = f"{ref} -> version {version.version}, source {source} (store {_display(uri)})"
        if source.startswith("runs:/"):
            run_id, artifact = _parse_runs_uri(source, ref)
            return _check_checkpoint_dir(_download_run_artifact(client, run_id, artifact, dst, ref, tried), ref, tried)
        return _check_checkpoint_dir(_download_uri(source, dst, ref, tried), ref, tried)

    if ref.startswith("runs:/"):
        run_id, artifact = _parse_runs_uri(ref, ref)
    elif _RUN_ID.match(ref):
        run_id, artifact = ref, CHECKPOINT_ARTIFACT
    else:
        raise ValueError(
            f"checkpoint {ref!r} is not an existing directory, a models:/<name>@<alias> or models:/<name>/<version> "
            "URI, a runs:/<run_id>/<path> URI, or a 32-character MLflow run id"
        )
    uri = _lookup_uri(ref, tracking_uri)
    client = _make_client(uri)
    tried = f"artifact {artifact!r} of run {run_id} (store {_display(uri)})"
    return _check_checkpoint_dir(_download_run_artifact(client, run_id, artifact, dst, ref, tried), ref, tried)


def _lookup_uri(ref: str, tracking_uri: str | None) -> str:
    """The store to look ``ref`` up in. Unlike :func:`resolve_tracking_uri`, it never creates an empty database."""
    if tracking_uri:
        return _normalise_uri(tracking_uri, "tracking_uri")
    if os.environ.get("MLFLOW_TRACKING_URI", "").strip():
        return _normalise_uri(os.environ["MLFLOW_TRACKING_URI"].strip(), "MLFLOW_TRACKING_URI")
    db = Path("runs", DEFAULT_DB).resolve()
    if not db.is_file():
        raise FileNotFoundError(
            f"checkpoint {ref!r} needs an MLflow store, but no tracking URI was given, MLFLOW_TRACKING_URI is unset "
            f"and the default store {db} does not exist; pass the tracking URI (config tracking.uri) or set "
            "MLFLOW_TRACKING_URI"
        )
    return f"sqlite:///{db}"


def _model_version(client: MlflowClient, ref: str, uri: str) -> Any:
    rest = ref[len("models:/") :]
    try:
        if "@" in rest:
            name, alias = rest.rsplit("@", 1)
            if not name or not alias:
                raise ValueError(f"checkpoint {ref!r}: expected models:/<name>@<alias>")
            return client.get_model_version_by_alias(name, alias)
        name, _, version = rest.rpartition("/")
        if not name or not version.isdigit():
            raise ValueError(f"checkpoint {ref!r}: expected models:/<name>@<alias> or models:/<name>/<version>")
        return client.get_model_version(name, version)
    except MlflowException as exc:
        raise FileNotFoundError(
            f"checkpoint {ref!r}: not found in the model registry at {_display(uri)}: {exc.message}"
        ) from exc


def _parse_runs_uri(uri: str, ref: str) -> tuple[str, str]:
    run_id, _, artifact = uri[len("runs:/") :].partition("/")
    artifact = artifact.strip("/")
    if not run_id or not artifact:
        raise ValueError(f"checkpoint {ref!r}: expected runs:/<run_id>/<artifact path>, got {uri!r}")
    return run_id, artifact


def _download_run_artifact(
    client: MlflowClient, run_id: str, artifact: str, dst: str | Path | None, ref: str, tried: str
) -> Path:
    try:
        root = client.get_run(run_id).info.artifact_uri
    except MlflowException as exc:
        raise FileNotFoundError(f"checkpoint {ref!r}: tried {tried}: {exc.message}") from exc
    in_place = _local_path(f"{root.rstrip('/')}/{artifact}")
    if dst is None and in_place is not None:
        if not in_place.is_dir():
            raise FileNotFoundError(f"checkpoint {ref!r}: tried {tried}: {in_place} does not exist")
        return in_place
    target = _target_dir(dst)
    try:
        return Path(client.download_artifacts(run_id, artifact, str(target)))
    except (MlflowException, OSError) as exc:
        raise FileNotFoundError(f"checkpoint {ref!r}: tried {tried}: download failed: {exc}") from exc


def _download_uri(source: str, dst: str | Path | None, ref: str, tried: str) -> Path:
    """Fetch a model-version source that is a plain artifact URI (not runs:/); no tracking store is involved."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    in_place = _local_path(source)
    if dst is None and in_place is not None:
        if not in_place.is_dir():
            raise FileNotFoundError(f"checkpoint {ref!r}: tried {tried}: {in_place} does not exist")
        return in_place
    try:
        return Path(get_artifact_repository(source).download_artifacts("", str(_target_dir(dst))))
    except (MlflowException, OSError) as exc:
        raise FileNotFoundError(f"checkpoint {ref!r}: tried {tried}: download failed: {exc}") from exc


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
        raise FileNotFoundError(
            f"checkpoint {ref!r}: tried {tried}, got {path}, which is not an sbir checkpoint directory "
            f"({META_FILE} is missing)"
        )
    return path
