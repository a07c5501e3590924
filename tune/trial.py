"""One sweep trial: the project's Ray Train run with the trial's hyperparameters, reporting to Tune.

Tune runs :func:`run_trial` as a function trainable. It builds the same TorchTrainer as ``sbir train``
(``pipelines.train.build_trainer``) with Tune's report callback, so every epoch's validation metric
reaches the scheduler, and logs to its own MLflow child run of the sweep's parent run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sbir.config import Config, with_values
from sbir.data.manifest import PreparedManifest

logger = logging.getLogger(__name__)

TRIAL_TAG = "sbir.trial_id"
SWEEP_TAG = "sbir.sweep"
PARENT_TAG = "mlflow.parentRunId"  # MLflow shows runs with this tag nested under their parent
RAY_TRAIN_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of a run's committed checkpoints


@dataclass(frozen=True)
class TrialContext:
    """What every trial shares (passed once with ``tune.with_parameters``)."""

    base: Config  # the sweep's config; a trial sets its searched keys on it
    prepared: str
    manifest: PreparedManifest
    sweep_name: str
    trials_storage: str  # Ray Train storage of the trials' runs (local path or s3://)
    tracking_uri: str
    parent_run_id: str
    experiment: str


@dataclass(frozen=True)
class TrialResources:
    """Each trial's Ray Train workers: the `tune` section's values, else those of the training config."""

    workers: int
    cpus_per_worker: float
    gpus_per_worker: float

    @classmethod
    def of(cls, config: Config) -> TrialResources:
        tune, train = config.tune, config.train
        gpus = tune.gpus_per_worker if tune.gpus_per_worker is not None else float(train.use_gpu)
        return cls(
            tune.workers_per_trial or train.num_workers,
            tune.cpus_per_worker if tune.cpus_per_worker is not None else train.cpus_per_worker,
            gpus,
        )


def trial_config(base: Config, params: dict[str, Any]) -> Config:
    """The trial's config: the searched values on the base, validated every epoch, nothing evaluated on test.

    Validation runs every epoch (the scheduler compares trials epoch by epoch); the unseen test classes
    and the registry are left to the sweep, which evaluates and registers only the best trial.
    """
    resources = TrialResources.of(base)
    fixed = {
        "train.num_workers": resources.workers,
        "train.cpus_per_worker": resources.cpus_per_worker,
        "train.use_gpu": resources.gpus_per_worker > 0,
        "train.val_every": 1,
        "train.val_from_epoch": 1,
        "train.eval_at_end": False,
        "train.baseline": False,
        "tracking.register_model": False,
    }
    return with_values(base, fixed | params)


def _child_run(context: TrialContext, config: Config, trial_id: str, trial_name: str, params: dict[str, Any]):
    """The trial's MLflow run under the sweep's parent: found again when a retried or resumed trial restarts."""
    from pipelines.tracking import Tracker, flatten_params
    from pipelines.tracking.uri import make_client

    client = make_client(context.tracking_uri)
    found = client.search_runs(
        [client.get_run(context.parent_run_id).info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{context.parent_run_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'",
        max_results=1,
    )
    if found:
        return Tracker.attach(context.tracking_uri, found[0].info.run_id)
    tags = {
        PARENT_TAG: context.parent_run_id,
        SWEEP_TAG: context.sweep_name,
        TRIAL_TAG: trial_id,
        "method": config.model.method,
        "setting": config.setting,
        "searched": ", ".join(f"{k}={v}" for k, v in params.items()),
    }
    return Tracker.start(context.tracking_uri, context.experiment, trial_name, flatten_params(config.to_dict()), tags)


def earlier_epochs(run_dir: str) -> list[dict[str, Any]]:
    """The epochs a previous attempt of this trial's Ray Train run finished, as Tune would have seen them.

    A retried or resumed trial restarts its function, but its Ray Train run (same name and storage)
    resumes after its last checkpoint and reports only the epochs still to train. Replaying the earlier
    epochs first keeps Tune's view whole: the scheduler sees every epoch in order and the sweep finds
    each kept checkpoint (``checkpoint_path``) beside the epoch it belongs to. The checkpoints are the
    ones Ray Train's snapshot lists (the run resumes from its latest), never a folder a dying worker
    left half written.
    """
    import io

    import torch

    from pipelines import storage
    from pipelines.train_loop import STATE_FILE
    from sbir.checkpoint import META_FILE

    fs, path = storage.resolve(run_dir)
    snapshot = storage.join(path, RAY_TRAIN_SNAPSHOT)
    if not storage.exists(fs, snapshot):
        return []
    state = storage.read_json(fs, snapshot)
    latest = (state.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
    if not latest:
        return []
    kept = [r["checkpoint_dir_name"] for r in state.get("checkpoint_results", [])]
    with fs.open_input_file(storage.join(path, latest, STATE_FILE)) as stream:
        history = torch.load(io.BytesIO(stream.read()), map_location="cpu", weights_only=True)["history"]
    scheme = "s3://" if storage.is_s3(run_dir) else ""
    at_epoch = {
        int(storage.read_json(fs, storage.join(path, k, META_FILE))["extra"]["epoch"]): scheme + storage.join(path, k)
        for k in kept
    }
    rows = []
    for row in history:
        epoch = int(row["epoch"])
        extra = {"checkpoint_path": at_epoch[epoch]} if epoch in at_epoch else {}
        rows.append(dict(row) | {"epoch": epoch} | extra)
    return rows


def run_trial(params: dict[str, Any], context: TrialContext) -> None:
    """Tune's function trainable: fit the trial's Ray Train run; Tune stops it when the scheduler says so."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipelines import storage
    from pipelines.ray_runtime import unwrap_ray_error
    from pipelines.train import RunTracking, build_trainer

    tune_context = ray.tune.get_context()
    trial_id, trial_name = tune_context.get_trial_id(), tune_context.get_trial_name()
    config = trial_config(context.base, params)
    tracker = _child_run(context, config, trial_id, trial_name, params)
    run_name = f"trial-{trial_id}"
    for row in earlier_epochs(storage.join(context.trials_storage, run_name)):
        ray.tune.report(row)
    trainer = build_trainer(
        config,
        context.prepared,
        context.manifest,
        run_name,
        RunTracking(tracker.tracking_uri, tracker.run_id),
        storage_dir=context.trials_storage,
        callbacks=[TuneReportCallback()],
        gpus_per_worker=TrialResources.of(config).gpus_per_worker,
    )
    try:
        trainer.fit()
    except BaseException as exc:
        inner = unwrap_ray_error(exc)
        if inner is not exc:
            raise inner from exc
        raise
