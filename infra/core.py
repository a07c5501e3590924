"""Core Kubernetes objects beside the Ray ones: the environment ConfigMap, the Secret templates (placeholders
only) and the MLflow tracking server (a Deployment + Service over a database and the S3 artifact store)."""

from __future__ import annotations

from typing import Any

from infra.kuberay import POD_SECURITY
from infra.spec import ClusterSpec
from sbir.config.cluster_env import SERVE_CLUSTER_ENV

PLACEHOLDER = "REPLACE-ME"


def env_configmap(spec: ClusterSpec) -> dict[str, Any]:
    """What every Ray pod reads with envFrom: the tracking server, the bucket's region (no credentials) and Ray
    Serve's cluster settings (HAProxy in front, a short drain)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": spec.metadata(spec.env_configmap, "config"),
        "data": {
            "MLFLOW_TRACKING_URI": spec.mlflow.uri,
            "AWS_REGION": spec.providers.aws_region,
            "AWS_DEFAULT_REGION": spec.providers.aws_region,
            **SERVE_CLUSTER_ENV,
        },
    }


def secret_templates(spec: ClusterSpec) -> list[dict[str, Any]]:
    """The Secrets the manifests reference, with placeholder values: fill a copy, never commit it."""

    def secret(name: str, component: str, data: dict[str, str]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": spec.metadata(name, component),
            "type": "Opaque",
            "stringData": data,
        }

    secrets = [secret(spec.ray_token_secret, "ray-auth", {"auth_token": PLACEHOLDER})]
    if spec.s3_secret:
        keys = {"AWS_ACCESS_KEY_ID": PLACEHOLDER, "AWS_SECRET_ACCESS_KEY": PLACEHOLDER}
        secrets.insert(0, secret(spec.s3_secret, "s3", keys))
    if spec.mlflow.deploy:
        uri = f"postgresql://mlflow:{PLACEHOLDER}@your-postgres-host:5432/mlflow"
        secrets.append(secret(spec.mlflow.db_secret, "mlflow", {"uri": uri}))
    return secrets


def _allowed_hosts(spec: ClusterSpec) -> str:
    """An explicit list replaces MLflow's default (localhost and private IPs): the Service's names, and loopback
    for `kubectl port-forward`."""
    name, namespace = spec.mlflow_service_name, spec.namespace
    names = [name, f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"]
    return ",".join([*(f"{n}:*" for n in names), *names, "localhost:*", "127.0.0.1:*"])


def mlflow_server(spec: ClusterSpec) -> list[dict[str, Any]]:
    """The tracking server and registry: one Deployment of the project image and its ClusterIP Service."""
    name, port = spec.mlflow_service_name, spec.mlflow.port
    metadata = spec.metadata(name, "mlflow")
    labels = metadata["labels"]
    container = {
        "name": "mlflow",
        "image": spec.image,
        "command": ["mlflow", "server"],
        "args": [
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--backend-store-uri",
            "$(MLFLOW_BACKEND_STORE_URI)",
            "--artifacts-destination",
            spec.mlflow.artifacts,
            "--serve-artifacts",
            "--allowed-hosts",
            _allowed_hosts(spec),
        ],
        "env": [
            {
                "name": "MLFLOW_BACKEND_STORE_URI",
                "valueFrom": {"secretKeyRef": {"name": spec.mlflow.db_secret, "key": "uri"}},
            },
            {"name": "AWS_DEFAULT_REGION", "value": spec.providers.aws_region},
        ],
        "envFrom": [{"secretRef": {"name": spec.s3_secret}}] if spec.s3_secret else [],
        "ports": [{"name": "http", "containerPort": port}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": port}, "periodSeconds": 10},
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"securityContext": POD_SECURITY, "containers": [container]},
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {"selector": labels, "ports": [{"name": "http", "port": port, "targetPort": port}]},
    }
    return [deployment, service]
