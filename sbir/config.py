"""One typed, validated configuration for every sbir command.

The config is a tree of pydantic models (model, data, train, eval, index, serve, run, tracking). It loads from YAML,
accepts dotted ``key=value`` overrides from the command line, and rejects unknown keys and bad
values with errors that name the key and the allowed values. Method presets (``official`` /
``paper``) and size presets (``base`` / ``tiny``) fill in every switch the user did not set, so
any single switch can still be overridden on its own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sbir.errors import ConfigError
from sbir.presets import preset_path

__all__ = ["Config", "ConfigError", "build_config", "dump_config", "load_config"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- ZSE-SBIR

ZSE_PRESETS: dict[str, dict[str, Any]] = {
    # The released code's behaviour (docs/zse_sbir.md#presets): loads best_checkpoint.pth strictly.
    "official": {
        "tokenizer_scope": "both",
        "ca_wiring": "q_own_k_other_v_own",
        "downsample": "reshape_scramble",
        "relation_head": "mlp",
        "keep_dead_ca_copy": True,
    },
    # The paper's description.
    "paper": {
        "tokenizer_scope": "sketch_only",
        "ca_wiring": "q_other_kv_own",
        "downsample": "spatial_2x2",
        "relation_head": "mlp",
        "keep_dead_ca_copy": False,
    },
}

ZSE_SIZES: dict[str, dict[str, Any]] = {
    # The paper's ViT-B/16 at 224 px.
    "base": {
        "image_size": 224,
        "patch_size": 16,
        "depth": 12,
        "width": 768,
        "heads": 12,
        "mlp_ratio": 4.0,
        "tokenizer_channels": [64, 128, 256],
        "ca_layers": 1,
        "ca_heads": 8,
        "ca_d_ff": 1024,
        "relation_dim": 512,
    },
    # Trains on a laptop CPU: 64 px, 8 px patches (8x8 grid, 16 relation tokens).
    "tiny": {
        "image_size": 64,
        "patch_size": 8,
        "depth": 4,
        "width": 64,
        "heads": 4,
        "mlp_ratio": 2.0,
        "tokenizer_channels": [16, 32],
        "ca_layers": 1,
        "ca_heads": 4,
        "ca_d_ff": 128,
        "relation_dim": 32,
    },
}


class ZSEConfig(_Strict):
    """ZSE-SBIR architecture: size, preset switches and relation head."""

    preset: Literal["official", "paper"] = "official"
    size: Literal["base", "tiny", "custom"] = "base"
    granularity: Literal["category", "fine_grained"] = Field(
        "category", description="fine_grained = instance-level retrieval: the paired photo is the one relevant photo"
    )
    # Sizes (filled from `size` when not given).
    image_size: int = Field(224, ge=16)
    patch_size: int = Field(16, ge=2)
    depth: int = Field(12, ge=1)
    width: int = Field(768, ge=8)
    heads: int = Field(12, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    tokenizer_channels: list[int] = Field(default_factory=lambda: [64, 128, 256])
    ca_layers: int = Field(1, ge=1)
    ca_heads: int = Field(8, ge=1)
    ca_d_ff: int = Field(1024, ge=1)
    relation_dim: int = Field(512, ge=1)
    anchors: int | None = Field(None, description="relation tokens; derived when null, checked when given")
    dropout: float = Field(0.1, ge=0, lt=1)
    stem: Literal["patch", "conv_bn"] = Field(
        "patch",
        description="patch = the ViT patch embedding (the paper); conv_bn replaces it with a conv-BatchNorm stem "
        "(sbir.models.conv_stem) for random-init tiny models, whose patch embedding cannot learn to read sketches",
    )
    # Preset switches (filled from `preset` when not given).
    tokenizer_scope: Literal["both", "sketch_only", "none"] = "both"
    ca_wiring: Literal["q_own_k_other_v_own", "q_other_kv_own"] = "q_own_k_other_v_own"
    downsample: Literal["reshape_scramble", "spatial_2x2", "linear"] = "reshape_scramble"
    relation_head: Literal["mlp", "kernel"] = "mlp"
    evit_keep: list[float] | None = Field(None, description="per-layer keep rates; null = keep all")
    keep_dead_ca_copy: bool = True
    # Weights: the released ZSE-SBIR checkpoint, or ImageNet ViT backbone weights (explicit key map).
    official_checkpoint: str | None = Field(None, description="path to the released best_checkpoint.pth")
    backbone_weights: str | None = Field(None, description="ViT weights file (.safetensors/.pth/.bin)")
    backbone_key_map: Literal["timm", "sbir"] = "timm"
    # Kernel relation head (a project extension, docs/zse_sbir.md#kernel-relation-head).
    kernel_count: int = Field(11, ge=2)
    kernel_sigma: float = Field(0.1, gt=0)
    kernel_scale: float = Field(0.01, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _apply_presets(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        preset = data.get("preset", "official")
        if preset in ZSE_PRESETS:
            for key, value in ZSE_PRESETS[preset].items():
                data.setdefault(key, value)
        size = data.get("size", "base")
        if size in ZSE_SIZES:
            for key, value in ZSE_SIZES[size].items():
                data.setdefault(key, value)
        return data

    @model_validator(mode="after")
    def _check_stem(self) -> ZSEConfig:
        weights = self.official_checkpoint or self.backbone_weights
        if self.stem == "conv_bn" and weights:
            raise ValueError(
                f"model.zse.stem=conv_bn replaces the patch embedding that {weights!r} holds; use stem=patch with "
                "pretrained weights, or drop official_checkpoint/backbone_weights"
            )
        return self

    @model_validator(mode="after")
    def _check_geometry(self) -> ZSEConfig:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads or self.width % self.ca_heads:
            raise ValueError(f"width {self.width} must be divisible by heads and ca_heads")
        if self.tokenizer_scope != "none":
            stages = math.log2(self.patch_size)
            if not stages.is_integer():
                raise ValueError(f"the learnable tokenizer needs a power-of-two patch_size, got {self.patch_size}")
            if len(self.tokenizer_channels) != int(stages) - 1:
                raise ValueError(
                    f"tokenizer_channels needs {int(stages) - 1} entries for patch_size {self.patch_size} "
                    f"(one per stride-2 conv before the last), got {self.tokenizer_channels}"
                )
        if self.evit_keep is not None:
            if len(self.evit_keep) != self.depth:
                raise ValueError(f"evit_keep needs one keep rate per layer ({self.depth}), got {len(self.evit_keep)}")
            if any(not 0 < r <= 1 for r in self.evit_keep):
                raise ValueError("evit_keep rates must lie in (0, 1]")
            if any(r < 1 for r in self.evit_keep) and self.downsample != "linear":
                raise ValueError("token dropping (evit_keep < 1) requires downsample=linear")
        if self.downsample != "linear" and self.grid % 2:
            raise ValueError(f"downsample={self.downsample} needs an even token grid, got {self.grid}")
        if self.anchors is not None and self.anchors != self.derived_anchors:
            raise ValueError(f"anchors={self.anchors} does not match the geometry, which gives {self.derived_anchors}")
        return self

    @property
    def grid(self) -> int:
        """Patch tokens per side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def derived_anchors(self) -> int:
        """Relation tokens per image: (grid/2)^2 after 2x2 downsampling, all patches under `linear`."""
        return self.num_patches if self.downsample == "linear" else (self.grid // 2) ** 2

    @property
    def ret_dim(self) -> int:
        return self.width

    @property
    def evit_active(self) -> bool:
        return self.evit_keep is not None and any(r < 1 for r in self.evit_keep)


# --------------------------------------------------------------------------- CLIP-AT

CLIP_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"margin": 0.3, "cls_weight": 0.5, "freeze": "ln_only", "normalization": "model"},
    "official": {
        "margin": 0.2,
        "cls_weight": 0.0,
        "freeze": "official_freeze",
        "normalization": "imagenet",
        "ln_sharing": "shared",
    },
}


class ClipATConfig(_Strict):
    """CLIP-AT: open_clip backbone, visual prompts, tuning mode and loss weights."""

    preset: Literal["paper", "official"] = "paper"
    granularity: Literal["category", "fine_grained"] = "category"
    backbone: str = "ViT-B-32-quickgelu"
    pretrained: str | None = Field("openai", description="open_clip tag, local checkpoint path, or null")
    stem: Literal["patch", "conv_bn"] = Field(
        "patch",
        description="patch = the backbone's patch embedding (the paper); conv_bn replaces it with a trainable "
        "conv-BatchNorm stem (sbir.models.conv_stem) for random-init tiny backbones, which cannot read sketches "
        "otherwise; needs pretrained: null",
    )
    prompt_len: int = Field(3, ge=1)
    prompt_depth: Literal["shallow", "deep"] = "shallow"
    prompt_sharing: Literal["per_modality", "shared"] | None = None
    prompt_init_std: float = Field(1.0, gt=0)
    freeze: Literal["ln_only", "official_freeze", "none"] = Field(
        "ln_only", description="ln_only = the paper; none trains the whole visual tower (random-init demo backbones)"
    )
    ln_sharing: Literal["per_modality", "shared"] | None = None
    normalization: Literal["model", "imagenet"] = "model"
    pad_fill: int = Field(0, ge=0, le=255)
    margin: float = Field(0.3, ge=0)
    cls_weight: float = Field(0.5, ge=0)
    cls_template: str = "a photo of a {}"
    cls_temperature: float | None = Field(None, gt=0, description="null = the model's own logit scale")
    delta_weight: float = Field(0.1, ge=0)
    delta_temperature: float = Field(1.0, gt=0)
    delta_sort: bool = False
    ps_weight: float = Field(1.0, ge=0)
    ps_grid: int = Field(2, ge=2)
    ps_margin: float | None = Field(None, ge=0, description="null = margin")

    @model_validator(mode="before")
    @classmethod
    def _apply_presets(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key, value in CLIP_PRESETS.get(data.get("preset", "paper"), {}).items():
            data.setdefault(key, value)
        return data

    @model_validator(mode="after")
    def _resolve_sharing(self) -> ClipATConfig:
        default = "shared" if self.granularity == "fine_grained" else "per_modality"
        if self.prompt_sharing is None:
            object.__setattr__(self, "prompt_sharing", default)
        if self.ln_sharing is None:
            object.__setattr__(self, "ln_sharing", default)
        return self

    @model_validator(mode="after")
    def _check_stem(self) -> ClipATConfig:
        if self.stem == "conv_bn" and self.pretrained:
            raise ValueError(
                f"model.clip_at.stem=conv_bn replaces the backbone's patch embedding, so pretrained weights "
                f"({self.pretrained!r}) would be partly discarded; set model.clip_at.pretrained=null or stem=patch"
            )
        return self


class ModelConfig(_Strict):
    """Which method (a registered family, see sbir.methods) and every method's own section."""

    method: Literal["zse", "clip_at"] = "zse"
    zse: ZSEConfig = Field(default_factory=ZSEConfig)
    clip_at: ClipATConfig = Field(default_factory=ClipATConfig)

    @property
    def section(self) -> ZSEConfig | ClipATConfig:
        """The chosen method's own section (each section is named after its method)."""
        return getattr(self, self.method)

    @property
    def fine_grained(self) -> bool:
        """Whether the chosen method trains and evaluates instance-level (fine-grained) retrieval."""
        return getattr(self.section, "granularity", "category") == "fine_grained"


# --------------------------------------------------------------------------- data/train/eval/serve


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

    name: str
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
    epochs: int = Field(30, ge=1)
    steps_per_epoch: int = Field(666, ge=1)
    batch_size: int = Field(15, ge=1)
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
    name: str | None = Field(None, description="run name; null = <method>-<setting>-<timestamp>")
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


class IndexConfig(_Strict):
    """The FAISS index behind every gallery: evaluation, validation and saved galleries (docs/index.md)."""

    kind: Literal["flat", "ivf", "hnsw"] = Field("flat", description="flat = exact search (the evaluation default)")
    nlist: int = Field(64, ge=1, description="ivf: k-means cells")
    nprobe: int = Field(8, ge=1, description="ivf: cells probed per query")
    hnsw_m: int = Field(32, ge=1, description="hnsw: graph out-degree")
    ef_search: int = Field(64, ge=1, description="hnsw: search beam width")


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
    max_ongoing_requests: int = Field(16, ge=1)
    num_cpus: float = Field(0.25, ge=0, description="logical CPUs per replica (fractions share a core)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (fractions share a GPU)")

    def serve_options(self) -> dict[str, Any]:
        """The keyword arguments of ``Deployment.options`` (Ray Serve's own names)."""
        options: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
        }
        if self.autoscaling is None:
            options["num_replicas"] = self.num_replicas
        else:
            options["autoscaling_config"] = self.autoscaling.model_dump()
        return options


class ServeConfig(_Strict):
    """The retrieval endpoint (`sbir serve`, docs/serving.md): what it serves, its deployments and limits."""

    model: str | None = Field(None, description="checkpoint reference: path, run id, runs:/…, models:/name@alias")
    gallery: str | None = Field(None, description="saved gallery folder (local, or s3:// read-only)")
    host: str = Field("127.0.0.1", description="bind address; 0.0.0.0 only when it must be reachable")
    port: int = Field(8000, ge=1, le=65535)
    api_key: str | None = Field(None, description="required on every endpoint but /healthz, /readyz; or SBIR_API_KEY")
    top_k: int = Field(20, ge=1, description="default k of /v1/search")
    max_k: int = Field(200, ge=1, description="largest k a request may ask for")
    rerank_k: int = Field(200, ge=1, description="default re-ranking depth of rn_rerank (docs/serving.md#modes)")
    max_batch_size: int = Field(16, ge=1, description="sketches the encoder encodes together (@serve.batch)")
    batch_wait_timeout_s: float = Field(0.01, ge=0, description="how long the encoder waits to fill a batch")
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
    ingress: DeploymentConfig = Field(default_factory=lambda: DeploymentConfig(num_cpus=0.1))
    encoder: DeploymentConfig = Field(default_factory=DeploymentConfig)
    index: DeploymentConfig = Field(default_factory=lambda: DeploymentConfig(num_cpus=0.1))
    reranker: DeploymentConfig = Field(default_factory=DeploymentConfig)

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


class Config(_Strict):
    """The root configuration."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _check_sampler(self) -> Config:
        if self.train.sampler == "quadruplets" and (self.model.method != "zse" or self.model.fine_grained):
            raise ValueError(
                "train.sampler=quadruplets is the ZSE-SBIR release's category-level sampling; use "
                "class_balanced for CLIP-AT and for fine-grained training"
            )
        return self

    @property
    def setting(self) -> str:
        """The setting id (docs/settings.md#settings): sketchy25, sketchy21, tuberlin30, quickdraw30, fg_sketchy …"""
        if self.data.setting:
            return self.data.setting
        layout, split = self.data.layout, self.data.split
        if layout == "sketchy":
            base = {"zeroshot1": "sketchy25", "zeroshot0": "sketchy21"}.get(split, f"sketchy-{split}")
        elif layout in ("tuberlin", "quickdraw"):
            base = f"{layout}30" if split == "zeroshot" else f"{layout}-{split}"
        else:
            base = layout if split == "zeroshot1" else f"{layout}-{split}"
        if self.model.fine_grained:
            base = f"fg_{base}"
        return base

    @property
    def registered_model_name(self) -> str:
        """The name the run registers in the model registry: tracking.model_name, else sbir-<method>-<setting>."""
        return self.tracking.model_name or registered_model_name(self.model.method, self.setting)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def registered_model_name(method: str, setting: str) -> str:
    """The default registered-model name for a method and a benchmark setting, e.g. ``sbir-zse-sketchy25``.

    The name is lowercase and uses only ``[a-z0-9-]``. It is also safe in URLs and in ``models:/`` references.
    """
    parts = [re.sub(r"[^a-z0-9]+", "-", str(p).lower()).strip("-") for p in ("sbir", method, setting)]
    if not parts[1] or not parts[2]:
        raise ConfigError(f"a model name needs a method and a setting, got method={method!r} setting={setting!r}")
    return "-".join(parts)


# --------------------------------------------------------------------------- loading


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into a key path and a YAML-parsed value."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {exc}") from exc
    return key.split("."), value


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for i, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a section")
        node = child
    node[path[-1]] = value


def format_validation_errors(exc: ValidationError) -> str:
    """A pydantic error as one line per bad key (``  key: message``), unknown keys named as such."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {loc or '<root>'}: {msg}")
    return "invalid configuration:\n" + "\n".join(lines)


def build_config(data: dict[str, Any] | None = None, overrides: list[str] | None = None) -> Config:
    """Validate a config tree with dotted overrides applied on top."""
    tree: dict[str, Any] = dict(data or {})
    for item in overrides or []:
        path, value = parse_override(item)
        _set_path(tree, path, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_errors(exc)) from None


def with_values(config: Config, values: Mapping[str, Any]) -> Config:
    """The config with dotted keys set to values (a sweep trial's hyperparameters), validated again."""
    tree = config.to_dict()
    for key, value in values.items():
        _set_path(tree, key.split("."), value)
    return build_config(tree)


def read_config_tree(source: str | Path | None) -> dict[str, Any]:
    """The raw sections of a YAML file or built-in preset (not validated yet); {} for no source."""
    if source is None:
        return {}
    path = Path(source)
    if not path.exists():
        path = preset_path(str(source))
    try:
        with path.open(encoding="utf-8") as stream:  # a stream, so YAML errors name the file
            loaded = yaml.safe_load(stream)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(loaded).__name__}")
    return loaded


def load_config(source: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a config from a YAML file or a built-in preset name, then apply overrides."""
    return build_config(read_config_tree(source), overrides)


def _absolute(value: str | None, must_exist: bool = False) -> str | None:
    """A local path made absolute; URIs (s3://, http://) and, with `must_exist`, names that are not files, kept."""
    if value is None or "://" in value:
        return value
    path = Path(value).expanduser()
    if must_exist and not path.exists():
        return value
    return str(path.resolve())


def with_absolute_paths(config: Config) -> Config:
    """The config with every local path resolved against the current directory, so what a checkpoint or
    MLflow stores still points at the same files from another directory or machine (URIs stay URIs)."""
    tree = config.to_dict()
    for key in ("root", "prepared", "pairs_file"):
        tree["data"][key] = _absolute(tree["data"][key])
    for key in ("dir", "storage"):
        tree["run"][key] = _absolute(tree["run"][key])
    for target in tree["eval"]["targets"]:
        target["root"], target["prepared"] = _absolute(target["root"]), _absolute(target["prepared"])
    zse = tree["model"]["zse"]
    zse["official_checkpoint"], zse["backbone_weights"] = (
        _absolute(zse["official_checkpoint"]),
        _absolute(zse["backbone_weights"]),
    )
    clip = tree["model"]["clip_at"]
    clip["pretrained"] = _absolute(clip["pretrained"], must_exist=True)  # an open_clip tag stays a tag
    return Config.model_validate(tree)


# Where and how a command runs: always the user's (command line, config file, environment), never a stored
# checkpoint's, which is data and may come from anywhere (docs/config.md#evaluating-a-checkpoint).
RUNTIME_SECTIONS = ("run", "tracking", "serve", "tune")


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` on `base`, section by section (lists and values of `top` replace those of `base`)."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _differences(a: Any, b: Any, prefix: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(set(a) | set(b)) for d in _differences(a.get(key), b.get(key), f"{prefix}.{key}")]
    return [] if a == b else [f"{prefix}={b!r} (the checkpoint's is {a!r})"]


def config_for_checkpoint(
    stored: Config, source: str | Path | None = None, overrides: list[str] | None = None
) -> Config:
    """The config to evaluate or serve a checkpoint with.

    The checkpoint's own config, with the user's file and overrides on top. The model section is the
    checkpoint's: a file or override that changes it is an error (it would not describe these weights).
    The runtime sections (``run``, ``tracking``, ``serve``) come only from the user's file, overrides and defaults.
    """
    tree = {k: v for k, v in stored.to_dict().items() if k not in RUNTIME_SECTIONS}
    config = build_config(_merge(tree, read_config_tree(source)), overrides)
    changed = _differences(stored.model.model_dump(mode="json"), config.model.model_dump(mode="json"), "model")
    if changed:
        raise ConfigError(
            "a checkpoint's model cannot change, but the config sets "
            + "; ".join(changed[:4])
            + (f" (+{len(changed) - 4} more)" if len(changed) > 4 else "")
            + "; leave the model section out of -c and the overrides"
        )
    return config


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
