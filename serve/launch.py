"""Start the endpoint on a Ray cluster (`sbir serve`, `make demo`, tests) and wait until it is ready."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from sbir.config import Config
from sbir.errors import SbirError
from serve.app import build_app
from serve.config_file import APP_NAME
from serve.model import resolve_serving
from serve.settings import AppArgs, settings_from_args

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0
GCS_CHECK_INTERVAL_S = 0.5


class EndpointError(SbirError):
    """The endpoint did not start or did not become ready."""


class StartStopped(SbirError):
    """A stop (Ctrl-C, SIGTERM) came while the endpoint was still starting."""


@dataclass(frozen=True)
class Endpoint:
    url: str
    model_id: str
    method: str
    api_key: str | None = None


def serve_until_stopped(config: Config, args: dict[str, Any], stopped: threading.Event, echo=logger.info) -> None:
    """`sbir serve`: start the endpoint, serve until ``stopped`` is set (by a signal), then stop it; a stop
    asked for while it still starts ends the start at once."""
    if stopped.is_set():
        echo("stopped before the endpoint started")
        return
    echo("starting the endpoint …")
    try:
        try:
            endpoint = start_endpoint(config, args, stopped=stopped)
        except StartStopped:
            echo("stopping the endpoint (it was still starting)")
            return
        echo(f"serving {endpoint.model_id} ({endpoint.method}) at {endpoint.url}  (Ctrl-C to stop)")
        echo(f"API: {endpoint.url}/docs   metrics: {endpoint.url}/metrics")
        while not stopped.wait(1.0):
            pass
        echo("stopping the endpoint")
    finally:
        stop_endpoint()


def start_endpoint(
    config: Config,
    args: dict[str, Any],
    timeout_s: float = READY_TIMEOUT_S,
    stopped: threading.Event | None = None,
) -> Endpoint:
    """Deploy the application on the connected Ray cluster (Ray must be initialised) and wait for /readyz;
    StartStopped when ``stopped`` is set before it is ready."""
    from ray import serve

    app_args = AppArgs.parse(args)
    settings, _ = settings_from_args(app_args)
    serving = resolve_serving(settings.model, settings.gallery, settings.tracking_uri, settings.runs_dir)
    cfg = config.serve
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    host, port = _serving_address(cfg.host, cfg.port)
    serve.run(build_app(app_args), name=APP_NAME, route_prefix="/", blocking=False)
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{host}:{port}"
    if not wait_ready(url, timeout_s, stopped):
        raise StartStopped(f"the endpoint at {url} was stopped while it started")
    return Endpoint(url, serving.model_id, serving.method, settings.api_key)


def _serving_address(host: str, port: int) -> tuple[str, int]:
    """Where Serve listens: a cluster whose Serve already runs keeps its own HTTP options (Ray ignores ours)."""
    from ray.serve.context import _get_global_client

    http = _get_global_client().http_config
    if (http.host, http.port) != (host, port):
        logger.warning(
            "Ray Serve on this cluster already listens on %s:%d; serving there (serve.host/serve.port apply only "
            "when Serve starts: `serve shutdown` first to change them)",
            http.host,
            http.port,
        )
    return http.host, http.port


def wait_ready(url: str, timeout_s: float = READY_TIMEOUT_S, stopped: threading.Event | None = None) -> bool:
    """Poll /readyz until it answers 200 (True) or ``stopped`` is set (False); a load error reported there
    ends the wait at once."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if stopped is not None and stopped.is_set():
            return False
        try:
            response = httpx.get(f"{url}/readyz", timeout=5)
            if response.status_code == 200:
                return True
            last = response.json().get("error", response.text)
            if "loading" not in last:
                raise EndpointError(f"the endpoint at {url} cannot serve: {last}")
        except (httpx.HTTPError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.5)
    raise EndpointError(f"the endpoint at {url} was not ready after {timeout_s:.0f} s ({last})")


def stop_endpoint(timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Delete the application; bounded, and given up as soon as the cluster's GCS stops answering (a terminal
    closed sends SIGTERM to a local cluster's daemons too: there is nothing left to delete, and Ray's own calls
    would wait a minute for the GCS)."""
    import ray
    from ray import serve

    def delete() -> None:
        try:
            serve.delete(APP_NAME)
        except Exception as exc:  # already gone
            logger.debug("serve.delete: %s", exc)

    gcs = ray.get_runtime_context().gcs_address if ray.is_initialized() else None
    worker = threading.Thread(target=delete, name="serve-delete", daemon=True)
    worker.start()
    deadline = time.monotonic() + timeout_s
    while worker.is_alive() and time.monotonic() < deadline:
        worker.join(GCS_CHECK_INTERVAL_S)
        if worker.is_alive() and gcs is not None and not _answers(gcs):
            logger.info("the Ray cluster is gone (its GCS at %s does not answer): the endpoint went with it", gcs)
            return
    if worker.is_alive():
        logger.warning("Ray did not delete the endpoint within %.0f s (its processes may be gone); leaving", timeout_s)


def _answers(address: str) -> bool:
    """Whether the GCS at host:port accepts a connection within a second (the project's reachability check)."""
    from pipelines.ray_runtime import ClusterError, check_reachable

    try:
        check_reachable(address, 1.0)
    except ClusterError:
        return False
    return True
