"""KubeRay ``ray.io/v1`` objects of the deployment: the training, sweep and gallery RayJobs, the RayService of
the endpoint and a RayCluster for interactive use, all from one cluster spec and one pod-template builder."""

from __future__ import annotations

from typing import Any

import yaml

from infra import workloads
from infra.spec import ClusterSpec, PodSize, WorkerGroup
from serve.config_file import render as render_serve_config

API_VERSION = "ray.io/v1"
RAY_UID = 1000  # the `ray` user of the official Ray images
SERVE_PORT = 8000
HEAD_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001, "metrics": 8080}


def _resources(size: PodSize) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": size.cpu, "memory": size.memory}
    if size.gpus:
        amounts["nvidia.com/gpu"] = size.gpus
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _pod_template(
    spec: ClusterSpec, container: str, size: PodSize, ports: dict[str, int], readiness: str | None = None
) -> dict[str, Any]:
    """A Ray pod: the image, env from the ConfigMap and the S3 Secret (never inline), non-root, shared memory."""
    body: dict[str, Any] = {
        "name": container,
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "envFrom": [{"configMapRef": {"name": spec.env_configmap}}, {"secretRef": {"name": spec.s3_secret}}],
        "resources": _resources(size),
        "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    if ports:
        body["ports"] = [{"name": name, "containerPort": port} for name, port in ports.items()]
    if readiness:
        # Ready only when the endpoint has its model and gallery loaded (the proxy alone is not enough).
        body["readinessProbe"] = {
            "httpGet": {"path": readiness, "port": SERVE_PORT},
            "initialDelaySeconds": 10,
            "periodSeconds": 5,
            "failureThreshold": 3,
        }
    pod: dict[str, Any] = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": RAY_UID, "fsGroup": 100},
        "containers": [body],
        "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory"}}],
    }
    if size.gpus:
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"spec": pod}


def _head_group(spec: ClusterSpec, serving: bool) -> dict[str, Any]:
    ports = dict(HEAD_PORTS) | ({"serve": SERVE_PORT} if serving else {})
    return {
        # No CPUs on the head: drivers run there, Ray Data and Train go to the workers.
        "rayStartParams": {"num-cpus": "0"},
        "template": _pod_template(spec, "ray-head", spec.head, ports),
    }


def _worker_group(spec: ClusterSpec, group: WorkerGroup, serving: bool) -> dict[str, Any]:
    return {
        "groupName": group.name,
        "replicas": group.replicas,
        "minReplicas": group.min_replicas,
        "maxReplicas": group.max_replicas,
        "rayStartParams": {},
        "template": _pod_template(
            spec, "ray-worker", group, {"serve": SERVE_PORT} if serving else {}, "/readyz" if serving else None
        ),
    }


def ray_cluster_spec(spec: ClusterSpec, serving: bool = False) -> dict[str, Any]:
    """The ``RayClusterSpec`` shared by every object: head, autoscaling worker groups, Ray token auth."""
    return {
        "rayVersion": spec.ray_version,
        "enableInTreeAutoscaling": True,
        "authOptions": {"mode": "token", "secretName": spec.ray_token_secret},
        "headGroupSpec": _head_group(spec, serving),
        "workerGroupSpecs": [_worker_group(spec, group, serving) for group in spec.worker_groups],
    }


def ray_job(spec: ClusterSpec, workload: workloads.Workload) -> dict[str, Any]:
    """A RayJob that starts its own cluster, runs one command and deletes the cluster when it ends."""
    return {
        "apiVersion": API_VERSION,
        "kind": "RayJob",
        "metadata": spec.metadata(f"{spec.name}-{workload.name}", workload.name),
        "spec": {
            "entrypoint": workload.command,
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": spec.job_ttl_seconds,
            "rayClusterSpec": ray_cluster_spec(spec),
        },
    }


def ray_service(spec: ClusterSpec) -> dict[str, Any]:
    """The endpoint: the Serve config of ``sbir serve --write-config``, workers ready on ``/readyz``."""
    return {
        "apiVersion": API_VERSION,
        "kind": "RayService",
        "metadata": spec.metadata(f"{spec.name}-serve", "serve"),
        "spec": {
            "serveConfigV2": render_serve_config(workloads.serve_document(spec)),
            "excludeHeadPodFromServeSvc": True,
            "serveService": {
                "metadata": {"name": f"{spec.name}-serve"},
                "spec": {"type": "ClusterIP", "ports": [{"name": "serve", "port": SERVE_PORT}]},
            },
            "rayClusterConfig": ray_cluster_spec(spec, serving=True),
        },
    }


def ray_cluster(spec: ClusterSpec) -> dict[str, Any]:
    """A long-lived cluster for ``ray job submit`` and notebooks (docs/deploy.md#interactive)."""
    return {
        "apiVersion": API_VERSION,
        "kind": "RayCluster",
        "metadata": spec.metadata(spec.name, "cluster"),
        "spec": ray_cluster_spec(spec),
    }


def serve_config_of(service: dict[str, Any]) -> dict[str, Any]:
    """The Serve config a RayService carries (its ``serveConfigV2`` string, parsed)."""
    return yaml.safe_load(service["spec"]["serveConfigV2"])
