"""`sbir train`: prepare data if needed, run Ray Train's TorchTrainer, evaluate, track and register.

The driver plans one P x K dataset per epoch, starts the worker group (``pipelines.train_loop``),
then evaluates the best checkpoint (by the validation-class metric) on the unseen test classes, logs
everything to MLflow and registers the checkpoint as a model version.
"""

from __future__ import annotations

import copy
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray.data
import ray.train
from ray.train.torch import TorchConfig, TorchTrainer

from pipelines import storage
from pipelines.prepare import prepare_training_data
from pipelines.progress import ProgressPrinter, ProgressSink
from pipelines.ray_runtime import check_resources, ensure_ray, unwrap_ray_error
from pipelines.rows import role_dataset
from pipelines.runs import RunRecord, record_for
from pipelines.streams import epoch_shards, training_metadata
from pipelines.train_loop import NOT_VALIDATED, LoopConfig, epoch_dataset_name, read_history, train_loop_per_worker
from sbir.checkpoint import save_checkpoint
from sbir.config import Config, dump_config, with_absolute_paths
from sbir.data.batches import batch_spec
from sbir.data.manifest import PreparedManifest
from sbir.methods import family_of

logger = logging.getLogger(__name__)


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


def default_run_name(config: Config) -> str:
    return f"{config.model.method}-{config.setting}-{time.strftime('%Y%m%d-%H%M%S')}"


def storage_path(config: Config) -> str:
    """Where Ray Train keeps checkpoints: run.storage (local or s3://), else run.dir, absolute."""
    where = config.run.storage or config.run.dir
    return where if storage.is_s3(where) else str(Path(where).resolve())


@dataclass(frozen=True)
class RunTracking:
    """The MLflow run the workers log to, and the driver's end of the progress lines."""

    tracking_uri: str | None = None
    mlflow_run_id: str | None = None
    progress: ProgressSink | None = None


def _epoch_datasets(config: Config, prepared: str, transform) -> dict[str, ray.data.Dataset]:
    """One dataset per epoch and worker (batches dealt by index), so multi-worker runs are reproducible."""
    train = config.train
    spec = batch_spec(train, config.model.fine_grained)
    metadata = training_metadata(prepared)
    workers = max(1, train.num_workers)
    per_epoch = train.steps_per_epoch * workers * train.grad_accum
    datasets: dict[str, ray.data.Dataset] = {}
    for e in range(train.epochs):
        shards = epoch_shards(prepared, spec, transform, per_epoch, train.seed, e, metadata, shards=workers)
        datasets |= {epoch_dataset_name(e, rank): shard for rank, shard in enumerate(shards)}
    return datasets


def build_trainer(
    config: Config,
    prepared: str,
    manifest: PreparedManifest,
    run_name: str,
    tracking: RunTracking,
    *,
    storage_dir: str | None = None,
    callbacks: list[Any] | None = None,
    gpus_per_worker: float = 1.0,
) -> TorchTrainer:
    """The TorchTrainer: a dataset per epoch and worker, the validation rows, resources and backend from config.

    A sweep trial passes its own storage folder, Tune's report callback and its GPU share per worker.
    """
    train = config.train
    classes = manifest.classes
    transform = family_of(config).image_transform(config)
    datasets = _epoch_datasets(config, prepared, transform)
    # The context's options, as Ray Train's default_ingest_options copies them (without its deprecation warning).
    in_order = copy.deepcopy(ray.data.DataContext.get_current().execution_options)
    in_order.preserve_order = True
    val_roles = ("test",) if train.model_selection == "unseen_test" else (("val",) if classes.val else ())
    if not val_roles:
        logger.warning("no validation classes (data.val_fraction=0): the latest checkpoint is kept as the best")
    datasets["val"] = role_dataset(prepared, val_roles or ("val",), transform)

    backend = train.backend if train.backend != "auto" else ("nccl" if train.use_gpu else "gloo")
    resources = {"CPU": train.cpus_per_worker} | ({"GPU": gpus_per_worker} if train.use_gpu else {})
    loop = LoopConfig(
        config, classes, val_roles, run_name, tracking.tracking_uri, tracking.mlflow_run_id, tracking.progress
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"loop": loop},
        scaling_config=ray.train.ScalingConfig(
            num_workers=max(1, train.num_workers), use_gpu=train.use_gpu, resources_per_worker=resources
        ),
        torch_config=TorchConfig(backend=backend),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_dir or storage_path(config),
            callbacks=callbacks or None,
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
    """Train, evaluate the best checkpoint on the unseen classes, track in MLflow and register it.

    Everything that needs no cluster is checked first (run name, paths, tracking URI, data); then the
    cluster's resources. The MLflow run ends FINISHED, or FAILED (KILLED on Ctrl-C) on any failure after
    it started; an error raised inside Ray comes out as the project error it wraps.
    """
    from pipelines.tracking import resolve_tracking_uri

    config = with_absolute_paths(config)  # what checkpoints and MLflow store works from any directory
    run_name = resume or config.run.name or default_run_name(config)
    run = record_for(config.run.dir, run_name, "run")
    run.check_start(resume)
    tracking_uri = resolve_tracking_uri(config.tracking.uri, config.run.dir)
    prepared, manifest = prepare_training_data(config)
    ensure_ray(config.run.ray_address, timeout_s=config.run.ray_connect_timeout_s)
    if config.run.check_resources:
        train = config.train
        check_resources(train.num_workers, train.cpus_per_worker, 1.0 if train.use_gpu else 0.0, "training")
    run.create()
    echo(f"[{run_name}] data: {prepared}")
    tracker, tags = _start_tracking(config, run_name, run, tracking_uri, resume)
    try:
        outcome = _train_evaluate_register(config, prepared, manifest, run_name, run.dir, tracker, tags, echo)
    except KeyboardInterrupt:
        _end(tracker, run, "KILLED")
        raise
    except BaseException as exc:
        _end(tracker, run, "FAILED")
        inner = unwrap_ray_error(exc)
        if inner is not exc:
            raise inner from exc
        raise
    _end(tracker, run, "FINISHED")
    return outcome


def _end(tracker, run: RunRecord, status: str) -> None:
    run.set_status(status)
    tracker.finish(status)


def _start_tracking(config: Config, run_name: str, run: RunRecord, tracking_uri: str, resume: str | None):
    """A new MLflow run (or, resuming, the run's own), with the config logged; returns it and the run tags."""
    from pipelines.tracking import Tracker, flatten_params

    tags = {"method": config.model.method, "setting": config.setting, "model_selection": config.train.model_selection}
    if config.train.model_selection == "unseen_test":
        tags["selected_on_test_classes"] = "true"
    if resume:
        tracker = Tracker.attach(tracking_uri, run.read()["mlflow_run_id"])
    else:
        params = flatten_params(config.to_dict())
        tracker = Tracker.start(tracking_uri, config.tracking.experiment, run_name, params, tags)
        run.write(mlflow_run_id=tracker.run_id, tracking_uri=tracking_uri, kind="run")
    run.write(status="RUNNING")
    (run.dir / "config.yaml").write_text(dump_config(config))
    tracker.log_artifact(run.dir / "config.yaml")
    return tracker, tags


def _fit(config: Config, prepared: str, manifest: PreparedManifest, run_name: str, tracker, echo) -> ray.train.Result:
    """Run the worker group, printing one line per finished epoch from rank 0."""
    sink = ProgressSink()
    trainer = build_trainer(
        config, prepared, manifest, run_name, RunTracking(tracker.tracking_uri, tracker.run_id, sink)
    )
    train = config.train
    echo(
        f"[{run_name}] training {config.model.method} on {max(1, train.num_workers)} worker(s) for "
        f"{train.epochs} epochs x {train.steps_per_epoch} steps"
    )
    with ProgressPrinter(sink, echo, prefix=f"[{run_name}] "):
        return _interruptible(trainer.fit)


def _interruptible(fit: Callable[[], ray.train.Result]) -> ray.train.Result:
    """Run `fit` in a thread so Ctrl-C reaches this (main) thread as KeyboardInterrupt at once.

    In the main thread Ray Train installs its own SIGINT handler, which aborts the run slowly and then
    exits the process with an unrelated status. Run from a thread it does not; the interrupted driver
    exits, and Ray ends the job's workers with it.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = fit()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="sbir-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _train_evaluate_register(
    config: Config, prepared: str, manifest: PreparedManifest, run_name: str, run_dir: Path, tracker, tags, echo
) -> TrainOutcome:
    outcome_baseline: dict[str, dict[str, float]] = {}
    if config.train.baseline:
        outcome_baseline = _baseline(config, prepared, manifest, run_dir, echo)
        tracker.log_metrics({f"baseline_{m}_{k}": v for m, d in outcome_baseline.items() for k, v in d.items()})
    result = _fit(config, prepared, manifest, run_name, tracker, echo)
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
        tracking_uri=tracker.tracking_uri,
    )
    if config.train.eval_at_end:
        _evaluate_best(config, prepared, outcome, tracker, echo)
    if config.tracking.register_model:
        _register(config, outcome, tracker, tags, echo)
    else:
        tracker.log_artifact(best_dir, "checkpoint")
    return outcome


def _evaluate_best(config: Config, prepared: str, outcome: TrainOutcome, tracker, echo) -> None:
    """The best checkpoint on the unseen classes and on every cross-dataset target, logged to MLflow."""
    from pipelines.evaluate import evaluate_checkpoint

    run_dir, best_dir = outcome.run_dir, outcome.best_checkpoint
    echo(f"[{outcome.run_name}] evaluating the best checkpoint on the unseen classes")
    untrained = run_dir / "eval-untrained"
    evaluation = evaluate_checkpoint(
        best_dir,
        prepared,
        out_dir=run_dir / "eval-test",
        config=config,
        role="test",
        baseline=untrained if untrained.is_dir() else None,
        mlflow_run=tracker.run_id,
    )
    outcome.test_metrics = evaluation.metrics
    outcome.report = evaluation.report
    tracker.log_metrics({f"test_{m}_{k}": v for m, d in evaluation.metrics.items() for k, v in d.items()})
    tracker.log_artifact(run_dir / "eval-test", "report")
    for target in config.eval.targets:
        cross = evaluate_checkpoint(
            best_dir,
            None,
            out_dir=run_dir / f"eval-{target.name}",
            config=config,
            target=target,
            mlflow_run=tracker.run_id,
        )
        tracker.log_metrics({f"{target.name}_{m}_{k}": v for m, d in cross.metrics.items() for k, v in d.items()})
        tracker.log_artifact(run_dir / f"eval-{target.name}", f"report-{target.name}")


def _register(config: Config, outcome: TrainOutcome, tracker, tags, echo) -> None:
    from pipelines.tracking import register_checkpoint

    name = config.registered_model_name
    registration = register_checkpoint(
        tracker,
        outcome.best_checkpoint,
        name,
        metric_name=f"val_{config.train.val_metric}",
        metric_value=outcome.best_val_score,
        tags=tags,
    )
    outcome.registered = f"models:/{registration.name}/{registration.version}"
    champion = " (new champion)" if registration.champion else ""
    echo(f"[{outcome.run_name}] registered {outcome.registered}{champion}")


def _baseline(
    config: Config, prepared: str, manifest: PreparedManifest, run_dir: Path, echo
) -> dict[str, dict[str, float]]:
    """Evaluate the untrained model (same seed as training) on the unseen classes, for before/after tables."""
    import torch

    from pipelines.evaluate import evaluate_checkpoint

    torch.manual_seed(config.train.seed)
    seen = manifest.classes.train
    model = family_of(config).build_model(config.model, class_names=seen)
    init_dir = save_checkpoint(run_dir / "init", model, config, classes={"seen": seen}, extra={"epoch": 0})
    echo(f"[{run_dir.name}] evaluating the untrained model on the unseen classes")
    evaluation = evaluate_checkpoint(init_dir, prepared, out_dir=run_dir / "eval-untrained", config=config, role="test")
    return evaluation.metrics
