"""`sbir tune`: a Ray Tune sweep whose trials are the project's Ray Train runs (tune/trial.py).

The driver checks the space and the config, prepares the data once, starts an MLflow parent run, runs
the Tuner (or restores it to resume), then ranks the trials on the validation metric, evaluates only
the best one on the unseen test classes, registers it (champion only if it beats the current one on
the validation metric, as ``sbir train``) and writes the sweep report.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import yaml

from sbir.config import Config, dump_config, load_config, with_absolute_paths, with_values
from tune.finish import finish_sweep
from tune.outcome import SweepError, SweepOutcome
from tune.progress import SweepProgress
from tune.search import check_search, grid_points, param_space, scheduler, searcher
from tune.space import Dimension, check_space, load_space, parse_space
from tune.trial import SWEEP_TAG, TrialContext, TrialResources, run_trial

logger = logging.getLogger(__name__)

TRIAL_DRIVER_CPUS = 0.1  # the trial's own process only drives its Ray Train run; workers reserve their own
SPACE_FILE = "space.yaml"
CONFIG_FILE = "config.yaml"
TUNE_DIR = "tune"  # the Tuner's experiment folder under the sweep's storage
TRIALS_DIR = "trials"  # the trials' Ray Train runs under the sweep's storage


def default_sweep_name(config: Config) -> str:
    return f"sweep-{config.model.method}-{config.setting}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_sweep(
    config_source: str | None,
    overrides: list[str],
    space_source: str | None,
    *,
    resume: str | None = None,
    echo=logger.info,
) -> SweepOutcome:
    """Run (or resume) a sweep end to end; see the module docstring."""
    from pipelines.runs import record_for

    if resume:
        config, dimensions, run = _resumed(config_source, overrides, resume)
    else:
        config, dimensions = _new_sweep_config(config_source, overrides, space_source)
        name = config.run.name or default_sweep_name(config)
        run = record_for(config.run.dir, name, "sweep")
        run.check_start(None)
    check_search(dimensions, config)
    return _run(config, dimensions, run, resuming=resume is not None, echo=echo)


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
    from pipelines.runs import record_for
    from sbir.config import parse_override, read_config_tree

    where = load_config(source, overrides)
    run = record_for(Path(where.run.dir).resolve(), name, "sweep")
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


def _run(config: Config, dimensions: list[Dimension], run, *, resuming: bool, echo) -> SweepOutcome:
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
    tracker = _parent_run(config, dimensions, run, tracking_uri, resuming=resuming)
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
    total = tune.num_samples * grid_points(dimensions, tune.search_alg)
    progress = SweepProgress(echo, name, total, tune.metric, tune.mode)
    try:
        results = _fit(config, dimensions, context, root, resuming=resuming, progress=progress)
        outcome = finish_sweep(
            config, dimensions, results, run=run, context=context, tracker=tracker, progress=progress
        )
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


def _parent_run(config: Config, dimensions: list[Dimension], run, tracking_uri: str, *, resuming: bool):
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


def _fit(config: Config, dimensions: list[Dimension], context: TrialContext, root: str, *, resuming: bool, progress):
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
                search_alg=searcher(config),
                scheduler=scheduler(config),
            ),
            run_config=run_config,
        )
    return tuner.fit()
