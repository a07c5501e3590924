"""`sbir train`: prepare data if needed, run Ray Train's TorchTrainer, evaluate, track and register.

The driver plans one P x K dataset per epoch, starts the worker group (``pipelines.train_loop``),
then evaluates the best checkpoint (by the validation-class metric) on the unseen test classes, logs
everything to MLflow and registers the checkpoint as a model version.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray.data
import ray.train
from ray.train.torch import TorchConfig, TorchTrainer

from pipelines import storage
from pipelines.prepare import prepare_dataset, read_manifest
from pipelines.ray_runtime import ensure_ray
from pipelines.rows import role_dataset
from pipelines.streams import epoch_shards, training_metadata
from pipelines.train_loop import NOT_VALIDATED, epoch_dataset_name, read_history, train_loop_per_worker
from sbir.checkpoint import save_checkpoint
from sbir.config import Config, dump_config
from sbir.data.batches import BatchSpec
from sbir.data.preprocess import ImageTransform
from sbir.models import build_model

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"


@dataclass
class TrainOutcome:
    """Where a finished run put things, and what it measured."""

    run_name: str
    run_dir: Path
    best_checkpoint: Path
    history: list[dict[str, Any]]
    best_val_score: float
    test_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    baseline_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    report: Path | None = None
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    registered: str | None = None


def image_transform(config: Config, model=None) -> ImageTransform:
    """The method's load-time preprocessing (CLIP-AT takes size and normalisation from its backbone)."""
    if config.model.method == "zse":
        return ImageTransform(
            "zse",
            config.model.zse.image_size,
            ink_threshold=config.data.sketch_ink_threshold,
            ink_margin=config.data.sketch_ink_margin,
        )
    if model is None:
        model = build_model(config.model, load_pretrained=False)
    return ImageTransform("clip", model.image_size, model.mean, model.std, model.pad_fill)


def ensure_prepared(config: Config) -> str:
    """The prepared dataset: `data.prepared` if it has a manifest, else prepare `data.root` into it (or the run dir)."""
    target = config.data.prepared or str(Path(config.run.dir).resolve() / "prepared" / config.setting)
    try:
        read_manifest(target)
        if config.data.prepared:
            return target
    except FileNotFoundError:
        if config.data.prepared and storage.is_s3(target):
            raise
    from sbir.data.readers import read_split

    split = read_split(
        config.data.layout,
        config.data.root,
        config.data.split,
        val_fraction=config.data.val_fraction,
        val_seed=config.data.val_seed,
        pairs_file=config.data.pairs_file,
    )
    prepare_dataset(split, target, source=f"{config.data.layout}:{config.data.root}")
    return target


def default_run_name(config: Config) -> str:
    return f"{config.model.method}-{config.setting}-{time.strftime('%Y%m%d-%H%M%S')}"


def _storage_path(config: Config) -> str:
    where = config.run.storage or config.run.dir
    return where if storage.is_s3(where) else str(Path(where).resolve())


def build_trainer(config: Config, prepared: str, run_name: str, loop_extra: dict[str, Any]) -> TorchTrainer:
    """The TorchTrainer: a dataset per epoch and worker, the validation rows, resources and backend from config."""
    train = config.train
    manifest = read_manifest(prepared)
    classes = manifest["classes"]
    fine_grained = config.model.method == "clip_at" and config.model.clip_at.granularity == "fine_grained"
    spec = BatchSpec(train.classes_per_batch, train.items_per_class, fine_grained)
    transform = image_transform(config)
    metadata = training_metadata(prepared)
    workers = max(1, train.num_workers)
    per_epoch = train.steps_per_epoch * workers * train.grad_accum
    # Each worker gets its own dataset per epoch (batches dealt by index), read in order: which worker trains
    # which batch, and when, then depends only on the seed, so multi-worker runs are reproducible.
    datasets: dict[str, ray.data.Dataset] = {}
    for e in range(train.epochs):
        shards = epoch_shards(prepared, spec, transform, per_epoch, train.seed, e, metadata, shards=workers)
        datasets |= {epoch_dataset_name(e, rank): shard for rank, shard in enumerate(shards)}
    # The context's options, as Ray Train's default_ingest_options copies them (without its deprecation warning).
    in_order = copy.deepcopy(ray.data.DataContext.get_current().execution_options)
    in_order.preserve_order = True
    val_roles = ("test",) if train.model_selection == "unseen_test" else (("val",) if classes.get("val") else ())
    if not val_roles:
        logger.warning("no validation classes (data.val_fraction=0): the latest checkpoint is kept as the best")
    datasets["val"] = role_dataset(prepared, val_roles or ("val",), transform)

    backend = train.backend if train.backend != "auto" else ("nccl" if train.use_gpu else "gloo")
    resources = {"CPU": train.cpus_per_worker} | ({"GPU": 1} if train.use_gpu else {})
    loop_config = {
        "config": config.to_dict(),
        "train_classes": classes["train"],
        "classes": {"seen": classes["train"], "val": classes.get("val", []), "unseen": classes.get("test", [])},
        "val_roles": list(val_roles),
        "run_name": run_name,
    } | loop_extra
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=train.use_gpu, resources_per_worker=resources
        ),
        torch_config=TorchConfig(backend=backend),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=_storage_path(config),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute="val_score", checkpoint_score_order="max"
            ),
            failure_config=ray.train.FailureConfig(max_failures=train.max_failures),
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(
            datasets_to_split=[], execution_options={name: in_order for name in datasets if name != "val"}
        ),
    )


def _best(result: ray.train.Result) -> tuple[ray.train.Checkpoint, dict[str, Any]]:
    candidates = list(result.best_checkpoints or [])
    if not candidates:
        if result.checkpoint is None:
            raise RuntimeError(f"run {result.path} produced no checkpoint") from result.error
        return result.checkpoint, dict(result.metrics or {})
    validated = [c for c in candidates if c[1].get("val_score", NOT_VALIDATED) > NOT_VALIDATED]
    if not validated:  # nothing validated: keep the most recent
        return max(candidates, key=lambda c: c[1].get("epoch", 0))
    return max(validated, key=lambda c: (c[1]["val_score"], c[1].get("epoch", 0)))


def run_training(config: Config, *, resume: str | None = None, echo=logger.info) -> TrainOutcome:
    """Train, evaluate the best checkpoint on the unseen classes, track in MLflow and register it."""
    from pipelines.tracking import Tracker, flatten_params, model_name, register_checkpoint, resolve_tracking_uri

    ensure_ray(config.run.ray_address)
    run_name = resume or config.run.name or default_run_name(config)
    run_dir = Path(config.run.dir).resolve() / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    prepared = ensure_prepared(config)
    echo(f"[{run_name}] data: {prepared}")

    tracking_uri = resolve_tracking_uri(config.tracking.uri, config.run.dir)
    run_file = run_dir / RUN_FILE
    tags = {"method": config.model.method, "setting": config.setting, "model_selection": config.train.model_selection}
    if config.train.model_selection == "unseen_test":
        tags["selected_on_test_classes"] = "true"
    if resume and run_file.is_file():
        tracker = Tracker.attach(tracking_uri, json.loads(run_file.read_text())["mlflow_run_id"])
    else:
        tracker = Tracker.start(
            tracking_uri, config.tracking.experiment, run_name, flatten_params(config.to_dict()), tags
        )
        run_file.write_text(json.dumps({"mlflow_run_id": tracker.run_id, "tracking_uri": tracking_uri}, indent=2))
    (run_dir / "config.yaml").write_text(dump_config(config))
    tracker.log_artifact(run_dir / "config.yaml")

    outcome_baseline: dict[str, dict[str, float]] = {}
    if config.train.baseline:
        outcome_baseline = _baseline(config, prepared, run_dir, echo)
        tracker.log_metrics({f"baseline_{m}_{k}": v for m, d in outcome_baseline.items() for k, v in d.items()})

    trainer = build_trainer(config, prepared, run_name, {"mlflow_run_id": tracker.run_id, "tracking_uri": tracking_uri})
    echo(
        f"[{run_name}] training {config.model.method} on {config.train.num_workers} worker(s) for "
        f"{config.train.epochs} epochs x {config.train.steps_per_epoch} steps"
    )
    try:
        result = trainer.fit()
    except Exception:
        tracker.finish("FAILED")
        raise
    history = read_history(result.checkpoint) if result.checkpoint is not None else []
    best_ckpt, best_metrics = _best(result)
    best_dir = run_dir / "best"
    if best_dir.exists():
        shutil.rmtree(best_dir)
    best_ckpt.to_directory(str(best_dir))
    (best_dir / "train_state.pt").unlink(missing_ok=True)  # optimiser state is for resuming, not for users
    best_score = float(best_metrics.get("val_score", NOT_VALIDATED))
    echo(f"[{run_name}] best checkpoint: epoch {best_metrics.get('epoch')} (val {best_score:.4f}) -> {best_dir}")
    outcome = TrainOutcome(
        run_name,
        run_dir,
        best_dir,
        history,
        best_score,
        baseline_metrics=outcome_baseline,
        mlflow_run_id=tracker.run_id,
        tracking_uri=tracking_uri,
    )

    if config.train.eval_at_end:
        from pipelines.evaluate import evaluate_checkpoint

        evaluation = evaluate_checkpoint(best_dir, prepared, out_dir=run_dir / "eval-test", config=config, role="test")
        outcome.test_metrics = evaluation.metrics
        outcome.report = evaluation.report
        tracker.log_metrics({f"test_{m}_{k}": v for m, d in evaluation.metrics.items() for k, v in d.items()})
        tracker.log_artifact(run_dir / "eval-test", "report")
        for target in config.eval.targets:
            cross = evaluate_checkpoint(
                best_dir, None, out_dir=run_dir / f"eval-{target.name}", config=config, target=target
            )
            tracker.log_metrics({f"{target.name}_{m}_{k}": v for m, d in cross.metrics.items() for k, v in d.items()})
            tracker.log_artifact(run_dir / f"eval-{target.name}", f"report-{target.name}")

    if config.tracking.register_model:
        name = config.tracking.model_name or model_name(config.model.method, config.setting)
        registration = register_checkpoint(
            tracker,
            best_dir,
            name,
            metric_name=f"val_{config.train.val_metric}",
            metric_value=best_score,
            tags=tags,
        )
        outcome.registered = f"models:/{registration.name}/{registration.version}"
        champion = " (new champion)" if registration.champion else ""
        echo(f"[{run_name}] registered {outcome.registered}{champion}")
    else:
        tracker.log_artifact(best_dir, "checkpoint")
    tracker.finish()
    return outcome


def _baseline(config: Config, prepared: str, run_dir: Path, echo) -> dict[str, dict[str, float]]:
    """Evaluate the untrained model (same seed as training) on the unseen classes, for before/after tables."""
    import torch

    from pipelines.evaluate import evaluate_checkpoint

    manifest = read_manifest(prepared)
    torch.manual_seed(config.train.seed)
    model = build_model(config.model, class_names=manifest["classes"]["train"])
    init_dir = save_checkpoint(
        run_dir / "init", model, config, classes={"seen": manifest["classes"]["train"]}, extra={"epoch": 0}
    )
    evaluation = evaluate_checkpoint(init_dir, prepared, out_dir=run_dir / "eval-untrained", config=config, role="test")
    echo(f"[{run_dir.name}] untrained model evaluated on the unseen classes")
    return evaluation.metrics
