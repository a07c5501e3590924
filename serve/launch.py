"""Start the endpoint on a Ray cluster (`sbir serve`, `make demo`, tests) and wait until it is ready."""

from __future__ import annotations

import logging
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


class EndpointError(SbirError):
    """The endpoint did not start or did not become ready."""


@dataclass(frozen=True)
class Endpoint:
    url: str
    model_id: str
    method: str
    api_key: str | None = None


def start_endpoint(config: Config, args: dict[str, Any], timeout_s: float = READY_TIMEOUT_S) -> Endpoint:
    """Deploy the application on the connected Ray cluster (Ray must be initialised) and wait for /readyz."""
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
    wait_ready(url, timeout_s)
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


def wait_ready(url: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Poll /readyz until it answers 200; a load error reported there ends the wait at once."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/readyz", timeout=5)
            if response.status_code == 200:
                return
            last = response.json().get("error", response.text)
            if "loading" not in last:
                raise EndpointError(f"the endpoint at {url} cannot serve: {last}")
        except (httpx.HTTPError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.5)
    raise EndpointError(f"the endpoint at {url} was not ready after {timeout_s:.0f} s ({last})")


def stop_endpoint() -> None:
    from ray import serve

    try:
        serve.delete(APP_NAME)
    except Exception as exc:  # already gone
        logger.debug("serve.delete: %s", exc)
