"""Connecting to Ray: an existing cluster when one is given, otherwise a local one sized for this host."""

from __future__ import annotations

import logging
import os

import ray

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


def ensure_ray(address: str | None = None, num_cpus: float | None = None) -> None:
    """Connect once per process: `address` or RAY_ADDRESS if set, else start a local cluster (`local_cpus()`)."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback clusters; must match `ray start`
    if address:
        logger.info("connecting to Ray at %s", address)
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus or local_cpus(), include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True


def unwrap_ray_error(exc: BaseException) -> BaseException:
    """The project error a Ray wrapper (a failed worker group, a Ray Data task, a remote call) carries, or `exc`.

    Ray re-raises a worker's exception wrapped (``TrainingFailedError``/``WorkerGroupError`` with per-rank
    failures, ``RayTaskError`` with ``.cause``, ``UserCodeException`` raised ``from`` the original).
    """
    return project_error(exc) or exc
