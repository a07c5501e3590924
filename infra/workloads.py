"""The commands a cluster runs, built from the cluster spec: what a RayJob's entrypoint and a RayService's
Serve config say, and what docs/deploy.md shows for ``ray job submit`` on a VM cluster.

Every job adds the keys that make it cluster-safe: prepared data and checkpoints under the spec's ``s3://``
storage, a run directory on the head, and no up-front resource check (the autoscaler adds GPU nodes on demand).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from infra.spec import ClusterSpec, JobSpec
from sbir.config import Config, load_config


@dataclass(frozen=True)
class Workload:
    """One command of the deployment: its argv and the config it resolves to (validated when built)."""

    name: str
    argv: list[str]
    config: Config

    @property
    def command(self) -> str:
        return shlex.join(self.argv)


def _config(job: JobSpec, extra: list[str]) -> Config:
    return load_config(job.preset, [*extra, *job.overrides])


def prepared_path(spec: ClusterSpec, config: Config) -> str:
    """Where the setting's prepared shards live (``sbir data prepare --out`` writes them once)."""
    return f"{spec.storage}/prepared/{config.setting}"


def gallery_path(spec: ClusterSpec, config: Config) -> str:
    return f"{spec.storage}/galleries/{config.registered_model_name}"


def _cluster_keys(spec: ClusterSpec, job: JobSpec) -> list[str]:
    return [
        f"data.prepared={prepared_path(spec, load_config(job.preset, job.overrides))}",
        f"run.storage={spec.storage}/runs",
        f"run.dir={spec.run_dir}",
        "run.check_resources=false",
    ]


def train(spec: ClusterSpec) -> Workload:
    keys = _cluster_keys(spec, spec.train)
    argv = ["sbir", "train", "-c", spec.train.preset, *keys, *spec.train.overrides]
    return Workload("train", argv, _config(spec.train, keys))


def sweep(spec: ClusterSpec) -> Workload:
    keys = _cluster_keys(spec, spec.sweep)
    argv = ["sbir", "tune", "-c", spec.sweep.preset, "--space", spec.sweep.space, *keys, *spec.sweep.overrides]
    return Workload("sweep", argv, _config(spec.sweep, keys))


def index(spec: ClusterSpec) -> Workload:
    """The champion's gallery: the unseen test photos of its setting, logged to its MLflow run."""
    keys = [f"run.dir={spec.run_dir}", "run.check_resources=false"]
    config = _config(spec.index, keys)
    argv = [
        "sbir", "index", "build",
        "--checkpoint", spec.service.model,
        "--prepared", prepared_path(spec, config),
        "--out", gallery_path(spec, config),
        "--overwrite",
        "-c", spec.index.preset, *keys, *spec.index.overrides,
    ]  # fmt: skip
    return Workload("index", argv, config)


def service_args(spec: ClusterSpec) -> tuple[dict[str, Any], Config]:
    """The Serve application's builder arguments (as ``sbir serve`` passes them) and the config they give."""
    # Bind beyond loopback in a pod; start a replica only with its model loaded, so an upgrade moves traffic
    # to a cluster that can answer and a new cluster that cannot load fails instead of taking the Service.
    overrides = [
        f"run.dir={spec.run_dir}",
        "serve.host=0.0.0.0",
        "serve.load_before_ready=true",
        *spec.service.overrides,
    ]
    args = {
        "config": spec.service.preset,
        "model": spec.service.model,
        "gallery": spec.service.gallery,
        "overrides": overrides,
    }
    return args, load_config(spec.service.preset, overrides)


def serve_document(spec: ClusterSpec) -> dict[str, Any]:
    """The Serve config of the RayService: exactly what ``sbir serve --write-config`` writes for these settings."""
    from serve.config_file import serve_config

    args, config = service_args(spec)
    return serve_config(config, args)
