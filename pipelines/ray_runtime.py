"""Connecting to Ray: an existing cluster when one is given, otherwise a local one sized for this host."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from urllib.parse import urlparse

import ray
import ray.util.debug

from pipelines.reaper import MARKER_ENV, watch_and_reap
from sbir.config.cluster_env import SERVE_CLUSTER_ENV
from sbir.errors import SbirError, project_error

logger = logging.getLogger(__name__)


MIN_LOCAL_CPUS = 4


def local_cpus() -> int:
    """Logical CPUs for a local cluster: at least MIN_LOCAL_CPUS.

    Training workers reserve CPUs for their whole life; Ray Data's read, shuffle and decode tasks need
    logical CPUs beside them or the input pipeline never starts (measured: 2 workers x 0.5 CPU plus
    a P x K stream hang forever on a 2-CPU cluster). Oversubscribing a small host is harmless.
    """
    return max(MIN_LOCAL_CPUS, os.cpu_count() or 1)


VERBOSE_ENV = "SBIR_VERBOSE"  # set by `sbir -v`: Ray's own logs and worker output reach the terminal


class ClusterError(SbirError):
    """The Ray cluster cannot be reached, or lacks the resources a workload asks for."""


def ensure_ray(
    address: str | None = None, num_cpus: float | None = None, timeout_s: float = 30.0, dashboard: bool = False
) -> None:
    """Connect once per process: `address` or RAY_ADDRESS if set, else start a local cluster (`local_cpus()`).

    A local cluster starts without the dashboard unless `dashboard` is set: Ray Tune driving Ray Train
    needs it, or every trial leaks a placement group and the sweep stalls (docs/tuning.md#on-a-cluster).

    An address that does not answer within `timeout_s` is an error naming it (Ray itself would retry for
    minutes). A normal run shows the project's own progress and Ray's warnings; Ray's INFO chatter,
    worker output and the error dumps of Ray Data (the CLI reports the error itself) need ``sbir -v``.
    """
    if ray.is_initialized():
        return
    verbose = os.environ.get(VERBOSE_ENV, "") == "1"
    level = logging.INFO if verbose else logging.WARNING
    address = address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback clusters; must match `ray start`
    # Serve behind HAProxy with a short drain (sbir/config/cluster_env.py). Read by the cluster's processes, so
    # set before a local cluster starts; a value already in the environment wins.
    for name, value in SERVE_CLUSTER_ENV.items():
        os.environ.setdefault(name, value)
    if address:
        check_reachable(address, timeout_s)
        logger.info("connecting to Ray at %s", address)
        ray.init(address=address, log_to_driver=verbose, logging_level=level)
    else:
        # Fractional-CPU data tasks start many worker processes at once; the raylet's default start-up
        # concurrency (the core count) makes it warn about every burst on a small machine.
        os.environ.setdefault("RAY_worker_maximum_startup_concurrency", str(2 * local_cpus()))
        _mark_local_cluster()
        try:
            ray.init(
                address="local",  # a cluster of its own, even when `ray start` runs one on this machine
                num_cpus=num_cpus or local_cpus(),
                include_dashboard=dashboard,
                log_to_driver=verbose,
                logging_level=level,
            )
        except Exception as exc:
            if "timed out during startup" not in str(exc):
                raise
            raise ClusterError(_local_start_failed()) from None
    configure_ray_data(verbose)


LOCAL_CLUSTER_ENV = MARKER_ENV  # inherited by every process of a local cluster this process starts


def _mark_local_cluster() -> None:
    """Before a local cluster starts: a marker its processes inherit (``pipelines/reaper.py`` reaps them after
    we exit), and HAProxy stats and metrics ports of its own, so two local endpoints do not both want 8404."""
    inherited = LOCAL_CLUSTER_ENV in os.environ  # started by an sbir process: its ports were chosen, not set
    marker = os.environ[LOCAL_CLUSTER_ENV] = f"{os.getpid()}-{time.monotonic_ns()}"
    watch_and_reap(os.getpid(), marker)
    for name in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT"):
        if inherited or name not in os.environ:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                os.environ[name] = str(sock.getsockname()[1])


RAY_AGENT_PORT = 52365  # every Ray node's dashboard agent listens here unless told otherwise


def _local_start_failed() -> str:
    """Why a local cluster may not start, and what to do: most often another Ray node on this machine."""
    message = "the local Ray cluster did not start in time"
    try:
        with socket.create_connection(("127.0.0.1", RAY_AGENT_PORT), timeout=1.0):
            another = True
    except OSError:
        another = False
    if another:
        return (
            f"{message}: another Ray cluster is running on this machine (its agent holds port {RAY_AGENT_PORT}; "
            "another sbir command, or `ray start`). Run the commands on one cluster: `ray start --head`, then "
            "RAY_ADDRESS=auto (or run.ray_address) for each; or wait for the other command, or `ray stop`"
        )
    return f"{message}; the machine may be overloaded: retry, or start one with `ray start --head` and set RAY_ADDRESS"


class _ReportedByTheCaller(logging.Filter):
    """Drops Ray Data's error records: the failing call raises the error, and sbir reports it once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


def configure_ray_data(verbose: bool) -> None:
    """Ray Data's console output: warnings always, its INFO lines and error dumps only when verbose."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = verbose or sys.stderr.isatty()
    if not ctx.enable_progress_bars:
        ray.util.debug.log_once("ray_data_progress_manager_disabled")  # Ray's one-time "bars disabled" warning
    ctx.print_on_execution_start = verbose
    # A UDF's own exception (a project error) reaches the driver inside Ray's wrapper, not replaced by it.
    ctx.raise_original_map_exception = True
    for handler in logging.getLogger("ray.data").handlers:
        if handler.name != "console":
            continue
        handler.setLevel(logging.INFO if verbose else logging.WARNING)
        if not verbose and not any(isinstance(f, _ReportedByTheCaller) for f in handler.filters):
            handler.addFilter(_ReportedByTheCaller())


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a Ray address (`host:port`, `ray://host:port`, `http://host:port`); None for `auto`."""
    if address in ("auto", "local"):
        return None
    parsed = urlparse(address if "://" in address else f"gcs://{address}")
    if not parsed.hostname or not parsed.port:
        raise ClusterError(f"Ray address {address!r} is not of the form host:port, ray://host:port or auto")
    return parsed.hostname, parsed.port


def check_reachable(address: str, timeout_s: float) -> None:
    """Fail within `timeout_s` when nothing listens at a Ray address (run.ray_connect_timeout_s)."""
    target = _host_port(address)
    if target is None:
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(target, timeout=min(5.0, timeout_s)):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise ClusterError(
                    f"cannot reach the Ray cluster at {address} within {timeout_s:g} s ({exc}); check the address "
                    "(run.ray_address or RAY_ADDRESS) or raise run.ray_connect_timeout_s"
                ) from None
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def check_resources(workers: int, cpus_per_worker: float, gpus_per_worker: float, what: str) -> None:
    """Refuse at once, naming what is missing, when the cluster cannot ever place `workers` workers."""
    have = ray.cluster_resources()
    need = {"CPU": workers * cpus_per_worker, "GPU": workers * gpus_per_worker}
    missing = [f"{need[k]:g} {k}s (the cluster has {have.get(k, 0):g})" for k in need if need[k] > have.get(k, 0)]
    if missing:
        raise ClusterError(
            f"{what} needs {' and '.join(missing)}; use fewer workers or resources per worker, a bigger cluster, "
            "or run.check_resources=false on an autoscaling cluster that adds nodes on demand"
        )


def unwrap_ray_error(exc: BaseException) -> BaseException:
    """The project error a Ray wrapper (a failed worker group, a Ray Data task, a remote call) carries, or `exc`.

    Ray re-raises a worker's exception wrapped (``TrainingFailedError``/``WorkerGroupError`` with per-rank
    failures, ``RayTaskError`` with ``.cause``, ``UserCodeException`` raised ``from`` the original).
    """
    return project_error(exc) or exc
