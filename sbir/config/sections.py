"""The app sections of the config: data, training, runs, tracking, evaluation, the index, serving and sweeps."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from sbir.config.base import Name, _Strict

MAX_EPOCHS = 1_000  # the papers train 10-60; every epoch's data plan is made before the first step


class DataConfig(_Strict):
    """Where the data lives and how it is split (readers and sharding build on this)."""

    root: str = "data/synthetic"
    layout: Literal["sketchy", "tuberlin", "quickdraw", "generic", "synthetic"] = "synthetic"
    split: str = "zeroshot1"
    prepared: str | None = Field(None, description="prepared Parquet dataset (local path or s3://)")
    val_fraction: float = Field(0.1, ge=0, lt=1)
    val_seed: int = 0
    sketch_ink_threshold: int = Field(300, ge=0, le=765)
    sketch_ink_margin: int = Field(10, ge=0)
    setting: str | None = Field(
        None, description="setting id (sketchy25, tuberlin30 ...); null = derived from layout/split"
    )
    pairs_file: str | None = Field(None, description="fine-grained pairs list (default: the split's own, if any)")


class EvalTarget(_Strict):
    """An extra evaluation dataset (cross-dataset: train on one dataset, test on another's unseen classes)."""

    name: Name
    root: str
    layout: Literal["sketchy", "tuberlin", "quickdraw", "generic", "synthetic"]
    split: str
    prepared: str | None = Field(None, description="prepared shards of the target; null = <run dir>/targets/<name>")


class TrainConfig(_Strict):
    """Training loop and resources (Ray Train reads worker counts and backend from here)."""

    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP processes)")
    cpus_per_worker: float = Field(0.5, gt=0)
    use_gpu: bool = False
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    precision: Literal["fp32", "amp_fp16", "amp_bf16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    epochs: int = Field(30, ge=1, le=MAX_EPOCHS)
    steps_per_epoch: int = Field(666, ge=1, le=1_000_000)
    batch_size: int = Field(15, ge=1, le=100_000)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-5, gt=0)
    lr_backbone: float | None = Field(None, gt=0, description="CLIP-AT LayerNorm lr; null = lr")
    weight_decay: float = Field(1e-2, ge=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    seed: int = 2021
    triplet_margin: float = Field(1.0, ge=0)
    triplet_weight: float = Field(2.0, ge=0)
    relation_weight: float = Field(4.0, ge=0)
    triplet_feature: Literal["post_ca", "pre_ca", "both"] = "post_ca"
    model_selection: Literal["seen_val", "unseen_test"] = "seen_val"
    items_per_class: int = Field(3, ge=2, description="K of the P x K batches (sketches and photos per class)")
    sampler: Literal["class_balanced", "quadruplets"] = Field(
        "class_balanced",
        description="class_balanced = P x K batches; quadruplets = the ZSE-SBIR release's batch_size independent "
        "quadruplets (ZSE-SBIR, category level)",
    )
    val_every: int = Field(1, ge=1, description="validate every n epochs")
    val_from_epoch: int = Field(1, ge=1, description="first epoch (1-based) that is validated")
    val_mode: Literal["ret", "rn", "rn_rerank"] = Field("ret", description="ZSE-SBIR retrieval mode for validation")
    val_metric: str = Field("map_all_voc", description="metric that selects the best checkpoint")
    max_failures: int = Field(2, ge=-1, description="worker failures tolerated (restart from the last checkpoint)")
    eval_at_end: bool = Field(True, description="evaluate the best checkpoint on the unseen classes after training")
    baseline: bool = Field(False, description="also evaluate the untrained model (for before/after tables)")

    @model_validator(mode="after")
    def _batch_layout(self) -> TrainConfig:
        workers = max(1, self.num_workers)
        micro, rest = divmod(self.batch_size, workers * self.grad_accum)
        if self.sampler == "quadruplets":
            if rest:
                raise ValueError(
                    f"train.batch_size {self.batch_size} quadruplets must split evenly over num_workers ({workers}) "
                    f"x grad_accum ({self.grad_accum})"
                )
            return self
        if rest or micro % self.items_per_class or micro // self.items_per_class < 2:
            raise ValueError(
                f"train.batch_size {self.batch_size} must split into num_workers ({workers}) x grad_accum "
                f"({self.grad_accum}) micro-batches of P x items_per_class ({self.items_per_class}) with P >= 2"
            )
        return self

    @property
    def micro_batch(self) -> int:
        """Items (quadruplets, or P x K slots) of each worker's micro-batch."""
        return self.batch_size // (max(1, self.num_workers) * self.grad_accum)

    @property
    def classes_per_batch(self) -> int:
        """P of each worker's micro-batch."""
        return self.batch_size // (max(1, self.num_workers) * self.grad_accum * self.items_per_class)


class RunConfig(_Strict):
    """Where a run lives: local run directory (reports, MLflow store), checkpoint storage and the Ray cluster."""

    dir: str = Field("runs", description="local run directory: reports, the embedded MLflow store")
    storage: str | None = Field(None, description="checkpoint storage (local path or s3://); null = run.dir")
    name: Name | None = Field(None, description="run name; null = <method>-<setting>-<timestamp>")
    ray_address: str | None = Field(None, description="Ray cluster address; null = RAY_ADDRESS or a local cluster")
    ray_connect_timeout_s: float = Field(30.0, gt=0, description="give up on an unreachable Ray address after this")
    check_resources: bool = Field(
        True,
        description="refuse to start when the cluster lacks the CPUs/GPUs asked for; false on an autoscaling "
        "cluster that adds nodes on demand",
    )


class TrackingConfig(_Strict):
    """MLflow tracking: the embedded SQLite store by default, a server when a URI is given."""

    uri: str | None = Field(None, description="tracking URI; null = MLFLOW_TRACKING_URI or sqlite under run.dir")
    experiment: str = "sbir"
    register_model: bool = Field(True, description="register the best checkpoint as a model version")
    model_name: str | None = Field(None, description="registered model name; null = sbir-<method>-<setting>")


class EvalConfig(_Strict):
    """Evaluation: retrieval modes, re-ranking depth, tie-breaking and score precision."""

    modes: list[Literal["ret", "rn", "rn_rerank"]] = Field(default_factory=lambda: ["ret"])
    rerank_k: int = Field(200, ge=1)
    tie_break: Literal["random", "stable_index", "optimistic", "pessimistic"] = "random"
    tie_seed: int = 0
    eval_precision: Literal["fp32", "fp16"] = "fp32"
    batch_size: int = Field(64, ge=1)
    query_chunk: int = Field(256, ge=1, description="queries per chunk when computing metrics")
    targets: list[EvalTarget] = Field(default_factory=list, description="cross-dataset evaluation targets")
    report_queries: int = Field(6, ge=0, description="sample queries in the top-k grid of the report")
    report_top_k: int = Field(8, ge=1)
    report_explanations: int = Field(2, ge=0, description="ZSE-SBIR explanation images in the report")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="encode and score here; auto = cuda if any")
    num_workers: int = Field(1, ge=1, description="Ray Data encoder actors")
    cpus_per_worker: float = Field(0.5, gt=0, description="logical CPUs per encoder actor")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs per encoder actor (fractions share a GPU)")
    actor_restarts: int = Field(
        0,
        ge=-1,
        description="restarts of a lost encoder actor (-1 = unlimited, Ray Data's default); with this Ray release a "
        "restart can fail anyway (ray-project/ray#53727) and any value but 0 prints an error-level line every run",
    )


AUTO_FLAT_LIMIT = 4_000_000  # photos x dimension up to which `auto` stays exact (docs/index.md#choosing-an-index)


class IndexConfig(_Strict):
    """The FAISS index behind every gallery: evaluation, validation and saved galleries (docs/index.md)."""

    kind: Literal["auto", "flat", "ivf", "hnsw"] = Field(
        "auto", description="auto = flat (exact) up to AUTO_FLAT_LIMIT photos x dimension, ivf above"
    )
    nlist: int = Field(64, ge=1, description="ivf: k-means cells (auto: about sqrt of the photos)")
    nprobe: int = Field(8, ge=1, description="ivf: cells probed per query (auto: at least nlist / 32)")
    hnsw_m: int = Field(32, ge=1, description="hnsw: graph out-degree")
    ef_search: int = Field(64, ge=1, description="hnsw: search beam width")

    def for_gallery(self, count: int, dim: int) -> IndexConfig:
        """The concrete index for a gallery of ``count`` photos of ``dim`` (``auto`` resolved; others as given)."""
        if self.kind != "auto":
            return self
        if count * dim <= AUTO_FLAT_LIMIT:
            return self.model_copy(update={"kind": "flat"})
        nlist = 2 ** round(math.log2(math.sqrt(count)))
        return self.model_copy(update={"kind": "ivf", "nlist": nlist, "nprobe": max(self.nprobe, nlist // 32)})


class AutoscalingConfig(_Strict):
    """Ray Serve autoscaling of one deployment (replaces a fixed ``num_replicas`` when given)."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0)

    @model_validator(mode="after")
    def _check_range(self) -> AutoscalingConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas {self.max_replicas} is below min_replicas {self.min_replicas}")
        return self


class DeploymentConfig(_Strict):
    """Replicas and resources of one Ray Serve deployment."""

    num_replicas: int = Field(1, ge=1)
    autoscaling: AutoscalingConfig | None = Field(None, description="null = a fixed num_replicas")
    max_ongoing_requests: int = Field(32, ge=1, description="requests one replica holds (bounds its batches)")
    num_cpus: float = Field(1.0, ge=0, description="logical CPUs per replica (fractions share a core)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (fractions share a GPU)")
    threads: int | None = Field(
        None, ge=1, description="torch and FAISS threads of a replica; null = num_cpus rounded up (at least 1)"
    )
    max_constructor_retry_count: int | None = Field(
        None, ge=1, description="starts Serve tries before failing the deployment; null = Ray Serve's default"
    )

    @property
    def compute_threads(self) -> int:
        """The threads a replica's model work uses: deliberate, since Ray gives a fractional replica one."""
        return self.threads or max(1, math.ceil(self.num_cpus))

    def serve_options(self) -> dict[str, Any]:
        """The keyword arguments of ``Deployment.options`` (Ray Serve's own names; ``threads`` is ours)."""
        options: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
        }
        if self.max_constructor_retry_count is not None:
            options["max_constructor_retry_count"] = self.max_constructor_retry_count
        if self.autoscaling is None:
            options["num_replicas"] = self.num_replicas
        else:
            options["autoscaling_config"] = self.autoscaling.model_dump()
        return options


class GalleryServeConfig(_Strict):
    """The gallery of the endpoint: where it is, and whether it is split over shard deployments."""

    path: str | None = Field(None, description="saved gallery folder (local, or s3:// read-only); null = the run's")
    shards: int = Field(
        1, ge=1, le=256, description="1 = the ingress holds the gallery; N = N GalleryShard deployments"
    )
    sync_interval_s: float = Field(
        1.0, gt=0, description="how often a holder of the gallery looks for updates another replica journaled"
    )
    shard: DeploymentConfig = Field(
        default_factory=DeploymentConfig, description="replicas and resources of each GalleryShard deployment"
    )
    shard_resources: list[dict[str, float]] = Field(
        default_factory=list,
        description="custom Ray resources shard i asks for (entry i modulo the list): pins shards to the nodes "
        "that offer them, e.g. [{gallery_a: 0.01}, {gallery_b: 0.01}]; empty = Ray places them",
    )

    def shard_options(self, index: int) -> dict[str, Any]:
        """``Deployment.options`` of shard ``index``: the shard section's, plus its placement resources."""
        options = self.shard.serve_options()
        if self.shard_resources:
            resources = self.shard_resources[index % len(self.shard_resources)]
            options["ray_actor_options"] = {**options["ray_actor_options"], "resources": dict(resources)}
        return options

    @model_validator(mode="before")
    @classmethod
    def _a_path_alone(cls, data: Any) -> Any:
        """``serve.gallery=<folder>`` (a plain path, as before shards existed) means ``serve.gallery.path``."""
        return {"path": data} if isinstance(data, str) else data


class ServeConfig(_Strict):
    """The retrieval endpoint (`sbir serve`, docs/serving.md): what it serves, its deployments and limits."""

    model: str | None = Field(None, description="checkpoint reference: path, run id, runs:/…, models:/name@alias")
    gallery: GalleryServeConfig = Field(default_factory=GalleryServeConfig)
    host: str = Field("127.0.0.1", description="bind address; 0.0.0.0 only when it must be reachable")
    port: int = Field(8000, ge=1, le=65535)
    api_key: str | None = Field(None, description="required on every endpoint but /healthz, /readyz; or SBIR_API_KEY")
    top_k: int = Field(20, ge=1, description="default k of /v1/search")
    max_k: int = Field(200, ge=1, description="largest k a request may ask for")
    rerank_k: int = Field(200, ge=1, description="default re-ranking depth of rn_rerank (docs/serving.md#modes)")
    max_batch_size: int = Field(16, ge=1, description="searches one batch holds (encoded and re-ranked together)")
    batch_wait_timeout_s: float = Field(
        0.0, ge=0, description="extra wait to fill a batch when the model is idle; 0 = batch only what queued"
    )
    reload_interval_s: float = Field(0.0, ge=0, description="poll the registry alias this often; 0 = never")
    load_before_ready: bool = Field(
        False,
        description="an ingress replica starts only once the model and gallery are loaded, and a load failure fails "
        "the deployment (a RayService then keeps the old cluster); false = start at once, /readyz 503 until loaded",
    )
    max_upload_bytes: int = Field(10 * 1024**2, ge=1024, description="request bodies above this get 413")
    max_image_pixels: int = Field(16_000_000, ge=1, description="decoded images above this get 413")
    max_strokes: int = Field(500, ge=1)
    max_points: int = Field(20_000, ge=1, description="points over all strokes of one sketch")
    ingress: DeploymentConfig = Field(
        default_factory=DeploymentConfig,
        description="the HTTP front, the sketch encoder and (with one shard) the gallery, in one replica",
    )

    @model_validator(mode="after")
    def _check_k(self) -> ServeConfig:
        if self.top_k > self.max_k:
            raise ValueError(f"serve.top_k {self.top_k} is above serve.max_k {self.max_k}")
        return self


class TuneConfig(_Strict):
    """A hyperparameter sweep (`sbir tune`, docs/tuning.md): trials, the metric that ranks them, search and
    early stopping, and each trial's Ray Train resources. Selection uses validation classes only."""

    space: str | None = Field(None, description="built-in space name or YAML file (tune.space)")
    num_samples: int = Field(8, ge=1, description="trials (per grid point with a grid space)")
    max_concurrent_trials: int = Field(1, ge=1)
    metric: str = Field("val_score", description="a validation metric the trials report every epoch")
    mode: Literal["max", "min"] = "max"
    search_alg: Literal["random", "grid", "optuna"] = "random"
    scheduler: Literal["fifo", "asha"] = "asha"
    grace_period: int = Field(1, ge=1, description="asha: epochs every trial runs before it can be stopped")
    reduction_factor: int = Field(2, ge=2, description="asha: keep 1 in reduction_factor at each rung")
    max_t: int | None = Field(None, ge=1, description="asha: epochs of the longest trial; null = train.epochs")
    # A trial trains like `sbir train` of the same config unless these say otherwise: the worker count sets
    # the per-worker batch (and what BatchNorm sees), so a recipe found at another count may not carry over.
    workers_per_trial: int | None = Field(None, ge=1, description="workers per trial; null = train.num_workers")
    cpus_per_worker: float | None = Field(None, gt=0, description="null = train.cpus_per_worker")
    gpus_per_worker: float | None = Field(None, ge=0, description="null = 1 with train.use_gpu, else 0")
    trial_retries: int = Field(1, ge=0, description="times a failed trial is retried with its config")
    seed: int = 0

    @model_validator(mode="after")
    def _check_metric(self) -> TuneConfig:
        if self.metric.startswith(("test_", "baseline_")):
            raise ValueError(
                f"tune.metric={self.metric!r} is measured on the unseen test classes; a sweep selects on validation "
                "classes only (val_score, or another val_* metric)"
            )
        return self
