"""Ray cluster-launcher configs (``ray up``) for AWS and GCP from the cluster spec: a CPU-free head, the spec's
autoscaling worker groups, the project image in Docker, and credentials only by reference (an instance role
or service account, and files synced from the user's machine)."""

from __future__ import annotations

from typing import Any

from infra.spec import ClusterSpec, WorkerGroup

HEAD_TYPE = "head"
TOKEN_FILE = "~/.ray/auth_token"  # Ray's default token path, on the laptop and in the containers
DISK_GB = 200


def _docker(spec: ClusterSpec, extra_env: dict[str, str]) -> dict[str, Any]:
    env = {"MLFLOW_TRACKING_URI": spec.providers.mlflow_uri, "RAY_AUTH_MODE": "token", **extra_env}
    return {
        "image": spec.image,
        "container_name": spec.name,
        "pull_before_run": True,
        "run_options": ["--ulimit nofile=65536:65536", *(f"--env {key}={value}" for key, value in env.items())],
    }


def _common(spec: ClusterSpec, provider: dict[str, Any], extra_env: dict[str, str]) -> dict[str, Any]:
    return {
        "cluster_name": spec.name,
        "max_workers": sum(group.max_replicas for group in spec.worker_groups),
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 10,
        "provider": provider,
        "auth": {"ssh_user": "ubuntu"},
        "docker": _docker(spec, extra_env),
        "head_node_type": HEAD_TYPE,
        "file_mounts": {TOKEN_FILE: TOKEN_FILE},
        "initialization_commands": [],
        # The image holds everything; this only proves it is the image the manifests were made for.
        "setup_commands": [f"python -c \"import ray, sbir; assert ray.__version__ == '{spec.ray_version}'\""],
        "head_setup_commands": [],
        "worker_setup_commands": [],
    }


def _node_type(node_config: dict[str, Any], cpus: int, gpus: int, group: WorkerGroup | None) -> dict[str, Any]:
    resources = {"CPU": cpus} | ({"GPU": gpus} if gpus else {})
    node: dict[str, Any] = {"node_config": node_config, "resources": resources}
    if group is not None:
        node |= {"min_workers": group.min_replicas, "max_workers": group.max_replicas}
    return node


def aws(spec: ClusterSpec) -> dict[str, Any]:
    """AWS: EC2 nodes with the spec's instance types and an instance profile that reaches the bucket."""
    providers = spec.providers

    def node_config(instance_type: str, profile: str | None) -> dict[str, Any]:
        config: dict[str, Any] = {
            "InstanceType": instance_type,
            "BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": DISK_GB, "VolumeType": "gp3"}}],
        }
        if profile:  # a head without one gets Ray's ray-autoscaler-v1 role, which may launch the workers
            config["IamInstanceProfile"] = {"Arn": profile}
        if providers.aws_image_id:
            config["ImageId"] = providers.aws_image_id
        return config

    config = _common(spec, {"type": "aws", "region": providers.aws_region, "cache_stopped_nodes": False}, {})
    config["available_node_types"] = {
        HEAD_TYPE: _node_type(
            node_config(spec.head.aws_instance_type, providers.aws_head_instance_profile), 0, 0, None
        ),
        **{
            group.name: _node_type(
                node_config(group.aws_instance_type, providers.aws_instance_profile), group.ray_cpus, group.gpus, group
            )
            for group in spec.worker_groups
        },
    }
    return config


GCS_S3_ENDPOINT = "https://storage.googleapis.com"
# GCS HMAC keys in the AWS shared-credentials format: a file on the laptop, synced to where boto and Arrow look.
GCS_HMAC_LOCAL = "~/.config/sbir/gcs-hmac-credentials"
GCS_HMAC_NODE = "~/.aws/credentials"


def gcp(spec: ClusterSpec) -> dict[str, Any]:
    """GCP: Compute Engine nodes; the s3:// storage is a GCS bucket through its S3-compatible endpoint."""
    providers = spec.providers

    def node_config(machine_type: str, accelerator: str | None, gpus: int) -> dict[str, Any]:
        image = providers.gcp_gpu_image if gpus else providers.gcp_cpu_image
        config: dict[str, Any] = {
            "machineType": machine_type,
            "disks": [
                {
                    "boot": True,
                    "autoDelete": True,
                    "type": "PERSISTENT",
                    "initializeParams": {"diskSizeGb": DISK_GB, "sourceImage": image},
                }
            ],
            "serviceAccounts": [
                {"email": providers.gcp_service_account, "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}
            ],
        }
        if gpus:
            config["guestAccelerators"] = [{"acceleratorType": accelerator, "acceleratorCount": gpus}]
            config["scheduling"] = {"onHostMaintenance": "TERMINATE"}  # GPUs cannot live-migrate
            config["metadata"] = {"items": [{"key": "install-nvidia-driver", "value": "True"}]}
        return config

    provider = {
        "type": "gcp",
        "region": providers.gcp_region,
        "availability_zone": providers.gcp_zone,
        "project_id": providers.gcp_project,
    }
    config = _common(spec, provider, {"AWS_ENDPOINT_URL": GCS_S3_ENDPOINT})
    config["file_mounts"][GCS_HMAC_NODE] = GCS_HMAC_LOCAL
    config["available_node_types"] = {
        HEAD_TYPE: _node_type(node_config(spec.head.gcp_machine_type, None, 0), 0, 0, None),
        **{
            group.name: _node_type(
                node_config(group.gcp_machine_type, group.gcp_accelerator, group.gpus),
                group.ray_cpus,
                group.gpus,
                group,
            )
            for group in spec.worker_groups
        },
    }
    return config
