"""KubeRay ``ray.io/v1`` objects of the deployment: the training, sweep and gallery RayJobs, the RayService of
the endpoint and a RayCluster for interactive use, all from one cluster spec and one pod-template builder."""

from __future__ import annotations

from typing import Any

import yaml

from infra import workloads
from infra.spec import ClusterSpec, PodSize, WorkerGroup
from serve.config_file import render as render_serve_config

API_VERSION = "ray.io/v1"
RAY_UID, RAY_GID = 1000, 100  # the `ray` user and `users` group of the official Ray images
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": RAY_UID, "runAsGroup": RAY_GID, "fsGroup": RAY_GID}
SERVE_PORT = 8000
DASHBOARD_AGENT_PORT = 52365  # Ray's default dashboard-agent port, where the raylet health check lives
HEAD_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001, "metrics": 8080}


def _resources(size: PodSize) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": size.cpu, "memory": size.memory}
    if size.gpus:
        amounts["nvidia.com/gpu"] = size.gpus
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _pod_template(
    spec: ClusterSpec, container: str, size: PodSize, ports: dict[str, int], readiness: bool = False
) -> dict[str, Any]:
    """A Ray pod: the image, env from the ConfigMap and the S3 Secret (never inline), as the image's non-root user."""
    body: dict[str, Any] = {
        "name": container,
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "envFrom": env_from(spec),
        "resources": _resources(size),
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    if ports:
        body["ports"] = [{"name": name, "containerPort": port} for name, port in ports.items()]
    if readiness:
        body["readinessProbe"] = readiness_probe()
    # KubeRay adds the /dev/shm volume for Ray's object store itself (sized to the memory limit).
    pod: dict[str, Any] = {"securityContext": POD_SECURITY, "containers": [body]}
    if size.gpus:
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"spec": pod}


def readiness_probe() -> dict[str, Any]:
    """A serving worker is ready when its raylet and Serve proxy are healthy (KubeRay's own checks, which a probe
    of ours replaces; the proxy's /-/healthz fails while it drains) and the endpoint answers /readyz."""
    checks = [
        f"wget -T 2 -q -O- http://localhost:{DASHBOARD_AGENT_PORT}/api/local_raylet_healthz | grep success",
        f"wget -T 2 -q -O- http://localhost:{SERVE_PORT}/-/healthz | grep success",
        f"wget -T 2 -q -O /dev/null http://localhost:{SERVE_PORT}/readyz",
    ]
    return {
        "exec": {"command": ["bash", "-c", " && ".join(checks)]},
        "initialDelaySeconds": 10,
        "periodSeconds": 5,
        "timeoutSeconds": 5,
        "failureThreshold": 3,
    }


def env_from(spec: ClusterSpec) -> list[dict[str, Any]]:
    """The ConfigMap, and the S3 Secret unless the pods get the bucket from their identity."""
    sources: list[dict[str, Any]] = [{"configMapRef": {"name": spec.env_configmap}}]
    if spec.s3_secret:
        sources.append({"secretRef": {"name": spec.s3_secret}})
    return sources


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
            spec, "ray-worker", group, {"serve": SERVE_PORT} if serving else {}, readiness=serving
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
