"""A sweep's end: rank the trials, evaluate and register only the best one, and write the sweep report.

The unseen test classes are used once, for the best trial; the ranking uses the validation classes only.
"""

from __future__ import annotations

import shutil

from sbir.config import Config, dump_config, with_values
from sbir.reports.sweep import COMPLETED, FAILED, STOPPED, TrialSummary, rank, write_sweep_report
from tune.outcome import SweepError, SweepOutcome
from tune.results import close_child_runs, trial_summaries
from tune.search import grid_points
from tune.space import Dimension
from tune.trial import TrialContext


def finish_sweep(
    config: Config, dimensions: list[Dimension], results, *, run, context: TrialContext, tracker, progress
):
    """Rank the trials, evaluate and register the best, write the report; the sweep's outcome."""
    name, echo = run.dir.name, progress.echo
    # Tune returns normally when Ctrl-C stops it; trials it did not end (or never started) mean interrupted.
    total = config.tune.num_samples * grid_points(dimensions, config.tune.search_alg)
    interrupted = results.num_terminated + results.num_errors < total
    summaries = trial_summaries(config, dimensions, results, interrupted, progress.retries)
    close_child_runs(tracker, name, summaries)
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
        _best_trial(config, best, outcome, context=context, tracker=tracker, echo=echo)
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


def _best_trial(config: Config, best: TrialSummary, outcome: SweepOutcome, *, context, tracker, echo) -> None:
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
