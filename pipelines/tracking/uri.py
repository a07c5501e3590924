"""Where MLflow runs are stored: the tracking-URI policy (docs/tracking.md#where-runs-are-stored).

The URI comes from the config (``tracking.uri``), else ``MLFLOW_TRACKING_URI``, else a SQLite file in
the run directory. MLflow's own defaults depend on the cwd (``./mlflow.db``, a ``./mlruns`` file store
MLflow 3 refuses), and a Ray worker has a different cwd from the driver, so relative SQLite paths are
made absolute; a local store keeps its artifacts beside the database in ``<runs_dir>/mlartifacts``.
Every call passes its URI to a client built for it: nothing reads or changes MLflow's global state.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from mlflow import MlflowClient

from sbir.errors import SbirError

logger = logging.getLogger(__name__)

DEFAULT_DB = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"


class TrackingError(SbirError, ValueError):
    """A tracking URI or store that cannot be used, or a run that cannot be found."""


def _quiet_mlflow() -> None:
    """Hide the schema-migration INFO chatter and artifact progress bars; warnings and errors still show."""
    for name in ("alembic", "alembic.runtime.migration", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


_quiet_mlflow()


def resolve_tracking_uri(configured: str | None, runs_dir: str | Path) -> str:
    """The URI to track to: ``configured`` (config) > ``MLFLOW_TRACKING_URI`` > ``sqlite:///<abs runs_dir>/mlflow.db``.

    Never falls back to a ``./mlruns`` file store. Relative SQLite paths are made absolute, and the
    directory of a SQLite file is created. Ray workers and the driver can then share the URI.
    """
    for source, value in (("tracking.uri", configured), ("MLFLOW_TRACKING_URI", os.environ.get("MLFLOW_TRACKING_URI"))):
        if value and value.strip():
            uri = normalise_uri(value.strip(), source)
            logger.debug("tracking URI %s (from %s)", uri, source)
            return uri
    runs = Path(runs_dir).expanduser().resolve()
    try:
        runs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrackingError(f"cannot create the run folder {runs} for the MLflow store: {exc.strerror}") from exc
    return f"sqlite:///{runs / DEFAULT_DB}"


def normalise_uri(uri: str, source: str, create: bool = True) -> str:
    """Absolute SQLite paths (their directory created when `create`); a bare ``*.db`` path means SQLite; file
    stores are refused."""
    if uri.startswith("sqlite:"):
        if not uri.startswith("sqlite:///"):
            raise TrackingError(
                f"{source}={uri!r}: SQLite URIs look like sqlite:///relative.db or sqlite:////abs/path.db"
            )
        path, sep, query = uri[len("sqlite:///") :].partition("?")
        if not path or path == ":memory:":
            return uri
        db = Path(path).expanduser().resolve()
        if create:
            try:
                db.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise TrackingError(f"{source}={uri!r}: cannot create {db.parent} ({exc.strerror})") from exc
        return f"sqlite:///{db}{sep}{query}"
    scheme = urlparse(uri).scheme
    if not scheme or len(scheme) == 1:  # a bare path (or a Windows drive letter)
        if Path(uri).suffix in (".db", ".sqlite", ".sqlite3"):
            return normalise_uri(f"sqlite:///{uri}", source, create)
        scheme = "file"
    if scheme == "file" and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true", "yes"):
        raise TrackingError(
            f"{source}={uri!r} is an MLflow file store, which MLflow 3 refuses by default; use a SQLite file "
            "(sqlite:///path/mlflow.db or a bare path ending in .db), a server URI (http://host:5000), "
            "or set MLFLOW_ALLOW_FILE_STORE=true"
        )
    return uri


def local_sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a local ``sqlite:///`` URI, or None for anything else (servers, :memory:)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri[len("sqlite:///") :].partition("?")[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def default_artifact_location(tracking_uri: str) -> str | None:
    """``<db dir>/mlartifacts`` for a local SQLite store; None lets a server choose its own artifact root."""
    db = local_sqlite_path(tracking_uri)
    return (db.parent / ARTIFACTS_DIR).resolve().as_uri() if db is not None else None


REACH_TIMEOUT_S = 5.0


def check_reachable(tracking_uri: str, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """Fail in seconds when a tracking server does not accept connections: MLflow's own client retries
    for minutes with only urllib3 warnings to show for it."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme not in ("http", "https"):
        return
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError as exc:
        raise TrackingError(f"tracking URI {display(tracking_uri)}: {exc}") from exc
    try:
        socket.create_connection((parsed.hostname or "localhost", port), timeout=timeout_s).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise TrackingError(
            f"cannot reach the MLflow server at {display(tracking_uri)} ({reason}); start it, or fix tracking.uri "
            "/ MLFLOW_TRACKING_URI"
        ) from exc


def make_client(tracking_uri: str) -> MlflowClient:
    """A client for this store (a server is checked to answer first); the registry URI is given explicitly,
    or MLflow would pick its global default."""
    check_reachable(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def display(tracking_uri: str) -> str:
    """The URI without credentials, for log lines and error messages."""
    parsed = urlparse(tracking_uri)
    if parsed.password or parsed.username:
        return parsed._replace(netloc=parsed.hostname or "").geturl()
    return tracking_uri
