"""Connecting to Ray: an existing cluster when one is given, otherwise a local one sized for this host."""

from __future__ import annotations

import logging
import os
import sys

import ray
import ray.util.debug

from sbir.errors import project_error

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


def ensure_ray(address: str | None = None, num_cpus: float | None = None) -> None:
    """Connect once per process: `address` or RAY_ADDRESS if set, else start a local cluster (`local_cpus()`).

    A normal run shows the project's own progress and Ray's warnings; Ray's INFO chatter, worker output
    and the error dumps of Ray Data (the CLI reports the error itself) appear only with ``sbir -v``.
    """
    if ray.is_initialized():
        return
    verbose = os.environ.get(VERBOSE_ENV, "") == "1"
    level = logging.INFO if verbose else logging.WARNING
    address = address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback clusters; must match `ray start`
    if address:
        logger.info("connecting to Ray at %s", address)
        ray.init(address=address, log_to_driver=verbose, logging_level=level)
    else:
        # Fractional-CPU data tasks start many worker processes at once; the raylet's default start-up
        # concurrency (the core count) makes it warn about every burst on a small machine.
        os.environ.setdefault("RAY_worker_maximum_startup_concurrency", str(2 * local_cpus()))
        ray.init(num_cpus=num_cpus or local_cpus(), include_dashboard=False, log_to_driver=verbose, logging_level=level)
    configure_ray_data(verbose)


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


def unwrap_ray_error(exc: BaseException) -> BaseException:
    """The project error a Ray wrapper (a failed worker group, a Ray Data task, a remote call) carries, or `exc`.

    Ray re-raises a worker's exception wrapped (``TrainingFailedError``/``WorkerGroupError`` with per-rank
    failures, ``RayTaskError`` with ``.cause``, ``UserCodeException`` raised ``from`` the original).
    """
    return project_error(exc) or exc
