"""The cluster spec: the one typed source every shipped manifest under ``infra/`` is rendered from.

``infra/cluster.yaml`` says where the image, the storage and the tracking server are, how big the head and
worker groups are, and which preset each job trains, sweeps or serves. ``sbir infra render`` turns it into the
KubeRay manifests, the core Kubernetes objects and the cluster-launcher configs (docs/deploy.md), so a change
lands in every file at once and the RayService's Serve config is the one ``sbir serve --write-config`` writes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sbir.config import format_validation_errors
from sbir.errors import ConfigError

SHIPPED_SPEC = Path(__file__).with_name("cluster.yaml")
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PodSize(_Strict):
    """Requests = limits of one Ray pod (Kubernetes quantities), and its GPUs."""

    cpu: str = "4"
    memory: str = "16Gi"
    gpus: int = Field(0, ge=0)

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity(cls, value: str) -> str:
        if not QUANTITY.match(value):
            raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 4, 500m, 16Gi)")
        return value

    @property
    def ray_cpus(self) -> int:
        """The logical CPUs Ray advertises for this pod (whole CPUs; fractions round down, at least 1)."""
        if self.cpu.endswith("m"):
            return max(1, int(self.cpu[:-1]) // 1000)
        return max(1, int(float(self.cpu)))


class WorkerGroup(PodSize):
    """One autoscaling worker group of the Ray cluster."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    replicas: int = Field(0, ge=0)
    min_replicas: int = Field(0, ge=0)
    max_replicas: int = Field(1, ge=1)
    aws_instance_type: str = Field(description="EC2 instance type of this group in the AWS launcher config")
    gcp_machine_type: str = Field(description="machine type of this group in the GCP launcher config")
    gcp_accelerator: str | None = Field(None, description="GCP accelerator type, e.g. nvidia-l4 (GPU groups)")

    @model_validator(mode="after")
    def _check_counts(self) -> WorkerGroup:
        if not self.min_replicas <= self.replicas <= self.max_replicas:
            raise ValueError(
                f"worker group {self.name}: needs min_replicas <= replicas <= max_replicas, "
                f"got {self.min_replicas} <= {self.replicas} <= {self.max_replicas}"
            )
        if self.gpus and not self.gcp_accelerator:
            raise ValueError(f"worker group {self.name} has GPUs: name its gcp_accelerator (e.g. nvidia-l4)")
        return self


class Head(PodSize):
    """The head pod: it runs the job drivers (data preparation, checkpoints, MLflow logging) and the dashboard."""

    aws_instance_type: str = "m5.2xlarge"
    gcp_machine_type: str = "n2-standard-8"


class JobSpec(_Strict):
    """One workload: a preset and the overrides it runs with on the cluster (storage keys are added)."""

    preset: str
    overrides: list[str] = Field(default_factory=list)


class SweepSpec(JobSpec):
    space: str


class ServiceSpec(JobSpec):
    model: str = Field(description="checkpoint reference the endpoint serves, e.g. models:/name@champion")
    gallery: str | None = Field(None, description="saved gallery; null = the model run's gallery artifact")


class MlflowSpec(_Strict):
    """The tracking server on the cluster, or an existing one (set deploy: false)."""

    deploy: bool = True
    uri: str = "http://mlflow.sbir.svc:5000"
    artifacts: str = Field(description="S3 URI of the artifact store")
    port: int = Field(5000, ge=1, le=65535)
    db_secret: str = Field("sbir-mlflow-db", description="Secret with key 'uri': the backend database URI")


class Providers(_Strict):
    """Cloud settings of the cluster-launcher configs (``ray up``)."""

    aws_region: str = "us-west-2"
    aws_image_id: str | None = Field(None, description="AMI of every node; null = Ray's default Deep Learning AMI")
    aws_instance_profile: str = Field(description="IAM instance profile ARN of the workers: access to the bucket")
    aws_head_instance_profile: str | None = Field(
        None,
        description="the head's profile: the bucket plus the autoscaler's EC2 rights and iam:PassRole of the "
        "workers' profile; null = Ray creates its default ray-autoscaler-v1 role",
    )
    gcp_project: str
    gcp_region: str = "us-central1"
    gcp_zone: str = "us-central1-a"
    gcp_service_account: str = Field(description="service account e-mail with access to the bucket")
    gcp_cpu_image: str = "projects/deeplearning-platform-release/global/images/family/common-cpu"
    gcp_gpu_image: str = Field(description="a boot image family with NVIDIA drivers (deeplearning-platform-release)")
    mlflow_uri: str = Field(description="tracking server the VM cluster logs to (one you run beside it)")


class ClusterSpec(_Strict):
    """Everything the shipped manifests differ in; docs/deploy.md#the-cluster-spec explains each key."""

    name: str = Field("sbir", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    namespace: str = "sbir"
    image: str = Field(description="the image `make image` builds and pushes (the GPU variant runs on CPU too)")
    ray_version: str = Field(description="Ray version in the image (checked against constraints.txt by tests)")
    storage: str = Field(description="s3:// prefix: prepared data, checkpoints, sweeps and galleries live under it")
    env_configmap: str = Field("sbir-env", description="ConfigMap with MLFLOW_TRACKING_URI, AWS_REGION …")
    s3_secret: str | None = Field(
        "sbir-s3", description="Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; null = a pod identity (IRSA)"
    )
    ray_token_secret: str = Field("sbir-ray-token", description="Secret with key auth_token (Ray token auth)")
    head: Head = Field(default_factory=Head)
    worker_groups: list[WorkerGroup]
    job_ttl_seconds: int = Field(600, ge=0, description="ttlSecondsAfterFinished of the RayJobs")
    train: JobSpec
    sweep: SweepSpec
    index: JobSpec
    service: ServiceSpec
    mlflow: MlflowSpec
    providers: Providers
    run_dir: str = Field("/tmp/sbir-runs", description="run.dir on the head pod (reports; ephemeral)")

    @field_validator("storage")
    @classmethod
    def _s3(cls, value: str) -> str:
        if not value.startswith("s3://"):
            raise ValueError(f"{value!r}: pods share no disk, so storage must be an s3:// prefix")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_groups(self) -> ClusterSpec:
        names = [group.name for group in self.worker_groups]
        if len(set(names)) != len(names):
            raise ValueError(f"worker group names repeat: {names}")
        return self

    @model_validator(mode="after")
    def _check_mlflow(self) -> ClusterSpec:
        if self.mlflow.deploy and self.mlflow_service_host not in (
            self.mlflow_service_name,
            f"{self.mlflow_service_name}.{self.namespace}.svc",
            f"{self.mlflow_service_name}.{self.namespace}.svc.cluster.local",
        ):
            raise ValueError(
                f"mlflow.uri {self.mlflow.uri} must name the Service the spec deploys, "
                f"http://<name>.{self.namespace}.svc:<port>, or set mlflow.deploy: false"
            )
        return self

    @property
    def mlflow_service_host(self) -> str:
        return urlparse(self.mlflow.uri).hostname or ""

    @property
    def mlflow_service_name(self) -> str:
        return self.mlflow_service_host.split(".")[0]

    def metadata(self, name: str, component: str) -> dict[str, Any]:
        """A Kubernetes object's metadata: its name in the spec's namespace, with the labels every object shares."""
        return {
            "name": name,
            "namespace": self.namespace,
            "labels": {"app.kubernetes.io/name": self.name, "app.kubernetes.io/component": component},
        }

    @property
    def gpu_groups(self) -> list[WorkerGroup]:
        return [group for group in self.worker_groups if group.gpus]


class SpecError(ConfigError):
    """The cluster spec file is missing or invalid."""


def load_spec(path: str | Path | None = None) -> ClusterSpec:
    """Read and validate a cluster spec (default: the shipped ``infra/cluster.yaml``)."""
    source = Path(path) if path else SHIPPED_SPEC
    if source.is_dir():
        raise SpecError(f"cluster spec {source} is a folder; name the spec YAML file (e.g. {SHIPPED_SPEC.name})")
    if not source.is_file():
        raise SpecError(f"cluster spec {source} does not exist")
    try:
        data = yaml.safe_load(source.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SpecError(f"cluster spec {source} is not valid YAML: {exc}") from None
    try:
        return ClusterSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"cluster spec {source}: {format_validation_errors(exc)}") from None
