"""`sbir tune`: a Ray Tune sweep whose trials are the project's Ray Train runs (tune/trial.py).

The driver checks the space and the config, prepares the data once, starts an MLflow parent run, runs
the Tuner (or restores it to resume), then ranks the trials on the validation metric, evaluates only
the best one on the unseen test classes, registers it (champion only if it beats the current one on
the validation metric, as ``sbir train``) and writes the sweep report.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ray.tune import Callback

from sbir.config import Config, dump_config, load_config, with_absolute_paths, with_values
from sbir.errors import SbirError
from sbir.reports.sweep import COMPLETED, FAILED, STOPPED, UNFINISHED, TrialSummary, rank, write_sweep_report
from tune.space import Dimension, check_space, load_space, parse_space
from tune.trial import PARENT_TAG, SWEEP_TAG, TRIAL_TAG, TrialContext, TrialResources, run_trial

logger = logging.getLogger(__name__)

TRIAL_DRIVER_CPUS = 0.1  # the trial's own process only drives its Ray Train run; workers reserve their own
SPACE_FILE = "space.yaml"
CONFIG_FILE = "config.yaml"
TUNE_DIR = "tune"  # the Tuner's experiment folder under the sweep's storage
TRIALS_DIR = "trials"  # the trials' Ray Train runs under the sweep's storage


class SweepError(SbirError):
    """A sweep that cannot start or resume as asked."""


@dataclass
class SweepOutcome:
    """What a sweep left behind."""

    name: str
    dir: Path
    trials: list[TrialSummary]
    best: TrialSummary | None = None
    best_checkpoint: Path | None = None
    best_config: Path | None = None
    test_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    registered: str | None = None
    report: Path | None = None
    tracking_uri: str | None = None
    parent_run_id: str | None = None
    interrupted: bool = False


def default_sweep_name(config: Config) -> str:
    return f"sweep-{config.model.method}-{config.setting}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_search(dimensions: list[Dimension], config: Config) -> None:
    """Search algorithm, scheduler and space must fit together (before anything starts)."""
    tune, kinds = config.tune, {d.kind for d in dimensions}
    if tune.search_alg == "grid" and kinds - {"choice", "grid"}:
        continuous = [d.key for d in dimensions if d.kind not in ("choice", "grid")]
        raise SweepError(f"tune.search_alg=grid needs choice/grid values only; {', '.join(continuous)} are ranges")
    if tune.search_alg == "optuna" and "grid" in kinds:
        grids = [d.key for d in dimensions if d.kind == "grid"]
        raise SweepError(
            f"tune.search_alg=optuna samples; it cannot expand grid values ({', '.join(grids)}): use choice"
        )
    epochs = config.train.epochs
    if tune.max_t is not None and tune.max_t > epochs:
        raise SweepError(f"tune.max_t={tune.max_t} is longer than train.epochs={epochs}; lower it or raise the epochs")
    if tune.scheduler == "asha" and tune.grace_period > (tune.max_t or epochs):
        raise SweepError(f"tune.grace_period={tune.grace_period} exceeds the {tune.max_t or epochs} epochs of a trial")
    if config.train.model_selection != "seen_val":
        raise SweepError("a sweep selects on held-out seen classes: train.model_selection must be seen_val")
    if not config.data.val_fraction:
        raise SweepError("a sweep needs validation classes to rank trials: set data.val_fraction > 0")


def param_space(dimensions: list[Dimension], search_alg: str) -> dict[str, Any]:
    """Tune's param_space; with the grid searcher every choice is expanded as a grid."""
    if search_alg == "grid":
        from ray import tune

        return {d.key: tune.grid_search(list(d.values)) for d in dimensions}
    return {d.key: d.to_tune() for d in dimensions}


def _searcher(config: Config):
    tune = config.tune
    if tune.search_alg == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=tune.seed)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=tune.seed, max_concurrent=tune.max_concurrent_trials)


def _scheduler(config: Config):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    tune = config.tune
    if tune.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="epoch",  # our own epoch count survives a retried trial; training_iteration restarts
        max_t=tune.max_t or config.train.epochs,
        grace_period=tune.grace_period,
        reduction_factor=tune.reduction_factor,
    )


class SweepProgress(Callback):
    """One line per finished or failed trial (Tune's own tables are off)."""

    def __init__(self, echo, name: str, total: int, metric: str, mode: str) -> None:
        self.echo, self.name, self.total, self.metric, self.mode = echo, name, total, metric, mode
        self.done = 0
        self.best: dict[str, tuple[float, int]] = {}  # trial id -> (best score, its epoch)
        self.retries: dict[
            str, int
        ] = {}  # trial id -> failed attempts Tune retried (earlier runs of a resumed sweep too)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        score, epoch = result.get(self.metric), int(result.get("epoch", 0))
        if not isinstance(score, int | float) or score < 0:  # -1 = an epoch without validation
            return
        seen = self.best.get(trial.trial_id)
        if seen is None or (score > seen[0] if self.mode == "max" else score < seen[0]):
            self.best[trial.trial_id] = (float(score), epoch)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.done += 1
        last = trial.last_result or {}
        score, epoch = self.best.get(trial.trial_id, (float("nan"), 0))
        self.echo(
            f"[{self.name}] trial {self.done}/{self.total} {trial.trial_id} ended after epoch "
            f"{last.get('epoch', '?')}: best {self.metric} {score:.4f} (epoch {epoch})  {_short(trial.config)}"
        )

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.done += 1
        self.echo(f"[{self.name}] trial {self.done}/{self.total} {trial.trial_id} failed: {_short(trial.config)}")

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        error = " ".join(str(trial.get_error() or "").split())[:300]
        self.echo(
            f"[{self.name}] trial {trial.trial_id} failed (attempt {trial.num_failures}); retrying it from its last "
            f"checkpoint: {error}"
        )

    def on_experiment_end(self, trials, **info) -> None:
        # Tune keeps each trial's failure count in its saved state, so a resumed sweep sees earlier retries too.
        self.retries = {t.trial_id: t.num_failures for t in trials if t.num_failures}


def _short(params: dict[str, Any]) -> str:
    return " ".join(
        f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}" for k, v in params.items()
    )


def run_sweep(
    config_source: str | None,
    overrides: list[str],
    space_source: str | None,
    *,
    resume: str | None = None,
    echo=logger.info,
) -> SweepOutcome:
    """Run (or resume) a sweep end to end; see the module docstring."""
    from pipelines.train import RunRecord

    if resume:
        config, dimensions, run = _resumed(config_source, overrides, resume)
    else:
        config, dimensions = _new_sweep_config(config_source, overrides, space_source)
        name = config.run.name or default_sweep_name(config)
        run = RunRecord(Path(config.run.dir) / name)
        run.check_start(None)
    check_search(dimensions, config)
    return _run(config, dimensions, run, resume is not None, echo)


def plan_sweep(source: str | None, overrides: list[str], space: str | None) -> tuple[Config, list[Dimension]]:
    """The config and space of a new sweep, checked together as `sbir tune` checks them, starting nothing."""
    config, dimensions = _new_sweep_config(source, overrides, space)
    check_search(dimensions, config)
    return config, dimensions


def _new_sweep_config(source: str | None, overrides: list[str], space: str | None) -> tuple[Config, list[Dimension]]:
    chosen = space or load_config(source, overrides).tune.space
    if not chosen:
        raise SweepError("no search space: pass --space <built-in name or YAML file> (or set tune.space)")
    dimensions = load_space(chosen)
    return with_absolute_paths(check_space(dimensions, source, overrides)), dimensions


def _resumed(source: str | None, overrides: list[str], name: str):
    """The stored config and space of a sweep to resume; only where it runs (run.*, tracking.*) may change."""
    from pipelines.train import RunRecord
    from sbir.config import parse_override, read_config_tree

    where = load_config(source, overrides)
    run = RunRecord(Path(where.run.dir).resolve() / name)
    run.check_start(name)
    changes: dict[str, Any] = {}
    for section in ("run", "tracking"):
        changes |= {f"{section}.{k}": v for k, v in read_config_tree(source).get(section, {}).items()}
    for item in overrides:
        path, value = parse_override(item)
        if path[0] not in ("run", "tracking"):
            raise SweepError(
                f"{item}: a resumed sweep keeps its config and space (Tune cannot change them midway); "
                "only run.* and tracking.* may be set"
            )
        changes[".".join(path)] = value
    stored = load_config(run.dir / CONFIG_FILE)
    config = with_values(stored, changes | {"run.name": name})
    dimensions = parse_space(yaml.safe_load((run.dir / SPACE_FILE).read_text()))
    return with_absolute_paths(config), dimensions, run


def _run(config: Config, dimensions: list[Dimension], run, resuming: bool, echo) -> SweepOutcome:
    from pipelines import storage
    from pipelines.prepare import prepare_training_data
    from pipelines.ray_runtime import check_resources, ensure_ray
    from pipelines.tracking import resolve_tracking_uri
    from pipelines.train import storage_path

    name = run.dir.name
    tracking_uri = resolve_tracking_uri(config.tracking.uri, config.run.dir)
    ensure_ray(config.run.ray_address, timeout_s=config.run.ray_connect_timeout_s, dashboard=True)
    prepared, manifest = prepare_training_data(config)
    if len(manifest.classes.val) < 2:
        raise SweepError(f"{prepared} holds {len(manifest.classes.val)} validation classes; a sweep needs at least 2")
    tune = config.tune
    if config.run.check_resources:
        resources = TrialResources.of(config)
        check_resources(resources.workers, resources.cpus_per_worker, resources.gpus_per_worker, "each sweep trial")
    run.create()
    tracker = _parent_run(config, dimensions, run, tracking_uri, resuming)
    root = storage.join(storage_path(config), name)
    context = TrialContext(
        config, prepared, manifest, name, storage.join(root, TRIALS_DIR), tracking_uri, tracker.run_id,
        config.tracking.experiment,
    )  # fmt: skip
    echo(
        f"[{name}] sweep: {tune.num_samples} trial(s) of {config.model.method} over "
        f"{', '.join(d.key for d in dimensions)}; {tune.search_alg} search, {tune.scheduler} scheduler, "
        f"{tune.max_concurrent_trials} at a time"
    )
    total = tune.num_samples * _grid_points(dimensions, tune.search_alg)
    progress = SweepProgress(echo, name, total, tune.metric, tune.mode)
    try:
        results = _fit(config, dimensions, context, root, resuming, progress)
        outcome = _finish(config, dimensions, results, run, context, tracker, progress)
    except KeyboardInterrupt:
        run.set_status("INTERRUPTED")
        tracker.finish("KILLED")
        raise
    except BaseException:
        run.set_status("FAILED")
        tracker.finish("FAILED")
        raise
    if outcome.interrupted:
        run.set_status("INTERRUPTED")
        tracker.finish("KILLED")
    else:
        run.set_status("FINISHED")
        tracker.finish("FINISHED")
    return outcome


def _parent_run(config: Config, dimensions: list[Dimension], run, tracking_uri: str, resuming: bool):
    from pipelines.tracking import Tracker, flatten_params

    if resuming:
        tracker = Tracker.attach(tracking_uri, run.read()["mlflow_run_id"])
        tracker.client.update_run(tracker.run_id, status="RUNNING")
    else:
        space = {d.key: {d.kind: list(d.values)} for d in dimensions}
        (run.dir / SPACE_FILE).write_text(yaml.safe_dump(space, sort_keys=False))
        (run.dir / CONFIG_FILE).write_text(dump_config(config))
        params = flatten_params(config.to_dict()) | {f"space.{k}": str(v) for k, v in space.items()}
        tags = {SWEEP_TAG: run.dir.name, "method": config.model.method, "setting": config.setting, "sweep": "true"}
        tracker = Tracker.start(tracking_uri, config.tracking.experiment, run.dir.name, params, tags)
        run.write(mlflow_run_id=tracker.run_id, tracking_uri=tracking_uri, kind="sweep")
        tracker.log_artifact(run.dir / SPACE_FILE)
    run.write(status="RUNNING")
    return tracker


def _fit(config: Config, dimensions: list[Dimension], context: TrialContext, root: str, resuming: bool, progress):
    from ray import tune as ray_tune

    # Tune's newer console output prints its tables whatever the verbosity; the classic one is silent at 0.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

    tune = config.tune
    trainable = ray_tune.with_resources(
        ray_tune.with_parameters(run_trial, context=context), {"cpu": TRIAL_DRIVER_CPUS}
    )
    run_config = ray_tune.RunConfig(
        name=TUNE_DIR,
        storage_path=root,
        failure_config=ray_tune.FailureConfig(max_failures=tune.trial_retries),
        callbacks=[progress],
        verbose=0,  # SweepProgress prints the lines a user needs
    )
    experiment = f"{root.rstrip('/')}/{TUNE_DIR}"
    if resuming:
        if not ray_tune.Tuner.can_restore(experiment):
            raise SweepError(f"no sweep state to resume at {experiment} (it never started running trials)")
        tuner = ray_tune.Tuner.restore(
            experiment, trainable, resume_unfinished=True, resume_errored=True, param_space=None
        )
    else:
        tuner = ray_tune.Tuner(
            trainable,
            param_space=param_space(dimensions, tune.search_alg),
            tune_config=ray_tune.TuneConfig(
                metric=tune.metric,
                mode=tune.mode,
                num_samples=tune.num_samples,
                # the random/grid searcher limits concurrency itself; Tune wraps optuna in a limiter
                max_concurrent_trials=tune.max_concurrent_trials if tune.search_alg == "optuna" else None,
                search_alg=_searcher(config),
                scheduler=_scheduler(config),
            ),
            run_config=run_config,
        )
    return tuner.fit()


def _grid_points(dimensions: list[Dimension], search_alg: str) -> int:
    points = 1
    for d in dimensions:
        if d.kind == "grid" or (search_alg == "grid" and d.kind == "choice"):
            points *= len(d.values)
    return points


def _summaries(
    config: Config, dimensions: list[Dimension], results, interrupted: bool, retries: dict[str, int] | None = None
) -> list[TrialSummary]:
    """Each trial's searched values, per-epoch curve and why it stopped, read from Tune's results."""
    from pipelines import storage
    from pipelines.train import storage_path

    on_s3 = storage.is_s3(storage_path(config))
    keys = [d.key for d in dimensions]
    full = min(config.tune.max_t or config.train.epochs, config.train.epochs)
    summaries = []
    for result in results:
        frame = result.metrics_dataframe
        rows = _one_row_per_epoch([] if frame is None else frame.to_dict("records"))
        curve = [
            {k: float(v) for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            for row in rows
        ]
        trial_id = str((result.metrics or {}).get("trial_id") or Path(result.path).name)
        epochs = max((int(r.get("epoch", 0)) for r in curve), default=0)
        if result.error is not None:
            reason = FAILED
        elif epochs >= full:
            reason = COMPLETED
        elif interrupted or config.tune.scheduler == "fifo":
            reason = UNFINISHED  # (while interrupted, a trial the scheduler stopped looks the same)
        else:
            reason = STOPPED
        summary = TrialSummary(
            trial_id,
            {k: result.config.get(k) for k in keys},
            curve,
            config.tune.metric,
            config.tune.mode,
            reason,
            error=None if result.error is None else " ".join(str(result.error).split())[:500],
            retries=(retries or {}).get(trial_id, 0),
        )
        summary.checkpoint = _checkpoint_path(rows, on_s3)
        summaries.append(summary)
    return summaries


def _one_row_per_epoch(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tune's rows with each epoch once: a retried trial reports again the epochs its failed attempt reported.

    The retry replays the epochs of its last checkpoint (``tune.trial.earlier_epochs``) and trains on
    from there, so a later row for an epoch is the one that counts; it keeps what the earlier one had
    (a checkpoint path) unless it has its own.
    """
    by_epoch: dict[int, dict[str, Any]] = {}
    for row in rows:
        epoch = int(row.get("epoch", 0))
        by_epoch[epoch] = by_epoch.pop(epoch, {}) | {k: v for k, v in row.items() if _present(v)}
    return sorted(by_epoch.values(), key=lambda r: int(r.get("epoch", 0)))


def _present(value: Any) -> bool:
    """False for the empty cells (None, NaN) pandas gives a column a row did not report."""
    return value is not None and not (isinstance(value, float) and value != value)


def _checkpoint_path(rows: list[dict[str, Any]], on_s3: bool) -> str | None:
    """The checkpoint Ray Train kept for the trial (the best val_score; reported with that epoch).

    Ray reports a path inside its filesystem; on S3 that is ``bucket/key``, made an ``s3://`` URI here.
    """
    validated = [r for r in rows if r.get("checkpoint_path") and float(r.get("val_score", -1)) >= 0]
    if not validated:
        return None
    path = str(max(validated, key=lambda r: (float(r["val_score"]), r.get("epoch", 0)))["checkpoint_path"])
    return f"s3://{path}" if on_s3 and not path.startswith("s3://") else path


def _close_child_runs(tracker, name: str, summaries: list[TrialSummary]) -> None:
    """Tag each trial's MLflow run with its stop reason and end it (a stopped trial cannot end its own run)."""
    client = tracker.client
    experiment = client.get_run(tracker.run_id).info.experiment_id
    children = client.search_runs([experiment], filter_string=f"tags.`{PARENT_TAG}` = '{tracker.run_id}'")
    by_trial = {run.data.tags.get(TRIAL_TAG): run for run in children}
    status = {COMPLETED: "FINISHED", STOPPED: "FINISHED", FAILED: "FAILED"}  # unfinished ones stay open
    for summary in summaries:
        child = by_trial.get(summary.trial_id)
        if child is None:
            continue
        summary.mlflow_run_id = child.info.run_id
        if summary.stop_reason == UNFINISHED:
            continue  # it goes on when the sweep is resumed
        client.set_tag(child.info.run_id, "stop_reason", summary.stop_reason)
        client.set_tag(child.info.run_id, "retries", str(summary.retries))
        if summary.error:
            client.set_tag(child.info.run_id, "error", summary.error)
        client.set_terminated(child.info.run_id, status[summary.stop_reason])
    logger.info("sweep %s: %d child runs closed", name, len(by_trial))


def _finish(config: Config, dimensions: list[Dimension], results, run, context: TrialContext, tracker, progress):
    name, echo = run.dir.name, progress.echo
    # Tune returns normally when Ctrl-C stops it; trials it did not end (or never started) mean interrupted.
    total = config.tune.num_samples * _grid_points(dimensions, config.tune.search_alg)
    interrupted = results.num_terminated + results.num_errors < total
    summaries = _summaries(config, dimensions, results, interrupted, progress.retries)
    _close_child_runs(tracker, name, summaries)
    ranked = rank(summaries)
    outcome = SweepOutcome(
        name, run.dir, ranked, tracking_uri=tracker.tracking_uri, parent_run_id=tracker.run_id, interrupted=interrupted
    )
    failed = [s for s in summaries if s.stop_reason == FAILED]
    for trial in failed:
        echo(f"[{name}] trial {trial.trial_id} failed after its retries: {trial.error}")
    best = next((s for s in ranked if s.score is not None and s.checkpoint), None)
    if interrupted:
        echo(f"[{name}] interrupted; resume with: sbir tune --resume {name}")
    elif best is not None:
        outcome.best = best
        tracker.log_metrics({f"best_{config.tune.metric}": best.score})
        tracker.set_tags({"best_trial": best.trial_id})
        _best_trial(config, best, outcome, context, tracker, echo)
    else:
        echo(f"[{name}] no trial reported {config.tune.metric}; nothing to evaluate or register")
    notes = _notes(config, dimensions, summaries, outcome)
    best_yaml = dump_config(_best_config(config, best)) if best is not None else None
    files = write_sweep_report(
        summaries,
        run.dir / "report",
        title=f"Sweep {name}",
        notes=notes,
        best_config_yaml=best_yaml,
        test_metrics=outcome.test_metrics or None,
    )
    outcome.report, outcome.best_config = files.markdown, files.best_config
    tracker.log_artifact(run.dir / "report", "report")
    return outcome


def _best_config(config: Config, best: TrialSummary) -> Config:
    """The sweep's config with the best trial's values: what ``sbir train -c`` takes to train it again."""
    return with_values(config, best.params | {"run.name": None})


def _best_trial(config: Config, best: TrialSummary, outcome: SweepOutcome, context, tracker, echo) -> None:
    """Copy the best trial's checkpoint, evaluate it once on the unseen test classes, register it."""
    import ray.train

    from pipelines.evaluate import evaluate_checkpoint
    from pipelines.tracking import Tracker, register_checkpoint

    name, run_dir = outcome.name, outcome.dir
    best_dir = run_dir / "best"
    if best_dir.exists():
        shutil.rmtree(best_dir)
    from pipelines import storage

    filesystem, path = storage.resolve(best.checkpoint)  # an s3:// or local checkpoint of the trial's run
    ray.train.Checkpoint(path, filesystem=filesystem).to_directory(str(best_dir))
    (best_dir / "train_state.pt").unlink(missing_ok=True)
    outcome.best_checkpoint = best_dir
    echo(f"[{name}] best trial {best.trial_id}: {best.metric} {best.score:.4f} (epoch {best.best_epoch}) -> {best_dir}")
    best_config = _best_config(config, best)
    child = Tracker.attach(tracker.tracking_uri, best.mlflow_run_id) if best.mlflow_run_id else tracker
    if config.train.eval_at_end:
        echo(f"[{name}] evaluating the best trial on the unseen test classes")
        evaluation = evaluate_checkpoint(
            best_dir, context.prepared, out_dir=run_dir / "eval-test", config=best_config, role="test",
            mlflow_run=child.run_id,
        )  # fmt: skip
        outcome.test_metrics = evaluation.metrics
        flat = {f"test_{m}_{k}": v for m, d in evaluation.metrics.items() for k, v in d.items()}
        tracker.log_metrics(flat)
        child.log_metrics(flat)
        tracker.log_artifact(run_dir / "eval-test", "best-report")
    if config.tracking.register_model:
        registered_name = config.registered_model_name
        val_score = _checkpoint_val_score(best)
        registration = register_checkpoint(
            child,
            best_dir,
            registered_name,
            metric_name=f"val_{config.train.val_metric}",
            metric_value=val_score,
            tags={"method": config.model.method, "setting": config.setting, "sweep": name, "trial": best.trial_id},
        )
        outcome.registered = f"models:/{registration.name}/{registration.version}"
        champion = " (new champion)" if registration.champion else " (the champion stays)"
        echo(f"[{name}] registered {outcome.registered}{champion}")


def _checkpoint_val_score(best: TrialSummary) -> float:
    """The val_score of the epoch whose checkpoint was kept: what the champion rule compares."""
    scores = [row["val_score"] for row in best.curve if row.get("val_score", -1) >= 0]
    if not scores:
        raise SweepError(f"trial {best.trial_id} has no validated epoch to register")
    return max(scores)


def _notes(config: Config, dimensions: list[Dimension], summaries: list[TrialSummary], outcome: SweepOutcome):
    tune = config.tune
    counts = {reason: sum(s.stop_reason == reason for s in summaries) for reason in (COMPLETED, STOPPED, FAILED)}
    notes = [
        f"{config.model.method} on {config.setting}; {len(summaries)} trials, {tune.search_alg} search, "
        + (
            f"ASHA (max {tune.max_t or config.train.epochs} epochs, grace {tune.grace_period}, "
            f"reduction factor {tune.reduction_factor})"
            if tune.scheduler == "asha"
            else f"FIFO ({config.train.epochs} epochs each)"
        ),
        f"ranked by {tune.metric} ({tune.mode}) on the validation classes; the unseen test classes are used only "
        "for the best trial, once",
        f"{counts[COMPLETED]} completed, {counts[STOPPED]} stopped early, {counts[FAILED]} failed",
        "searched: " + "; ".join(f"{d.key} {d.kind} {list(d.values)}" for d in dimensions),
    ]
    if outcome.registered:
        notes.append(f"best trial registered as {outcome.registered}")
    return notes
