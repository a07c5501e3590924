"""Connecting to Ray: an existing cluster when one is given, otherwise a local one sized for this host."""

from __future__ import annotations

import logging
import os

import ray

logger = logging.getLogger(__name__)


def ensure_ray(address: str | None = None, num_cpus: float | None = None) -> None:
    """Connect once per process: `address` or RAY_ADDRESS if set, else start a local cluster."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback clusters; must match `ray start`
    if address:
        logger.info("connecting to Ray at %s", address)
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
