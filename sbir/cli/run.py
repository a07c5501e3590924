"""`sbir train` and `sbir eval`: the Ray Train and evaluation workloads (Ray is imported only when they run)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sbir.cli.common import ConfigOption, DryRun, Overrides, config_from, describe_run, metrics_table
from sbir.errors import UsageError


def train(
    config: ConfigOption = None,
    overrides: Overrides = None,
    resume: Annotated[str | None, typer.Option(help="resume the named run from its latest checkpoint")] = None,
    dry_run: DryRun = False,
) -> None:
    """Train on Ray Train (DDP), evaluate the best checkpoint on the unseen classes, track and register in MLflow."""
    cfg = config_from(config, overrides)
    if resume is not None:
        from pipelines.runs import record_for

        record_for(cfg.run.dir, resume, "run").check_start(resume)
    if dry_run:
        typer.echo(f"ok: sbir train would train {describe_run(cfg)}")
        return
    from pipelines.train import run_training

    outcome = run_training(cfg, resume=resume, echo=typer.echo)
    typer.echo(f"run: {outcome.run_dir}\nbest checkpoint: {outcome.best_checkpoint}")
    if outcome.test_metrics:
        typer.echo(metrics_table({f"{cfg.model.method}/{m}": v for m, v in outcome.test_metrics.items()}))
        typer.echo(f"report: {outcome.report}")
    if outcome.registered:
        typer.echo(f"registered: {outcome.registered}")
    typer.echo(f"mlflow: {outcome.tracking_uri} (run {outcome.mlflow_run_id})")


def evaluate(
    checkpoint: Annotated[str, typer.Option(help="checkpoint dir, MLflow run id, runs:/… or models:/name@alias")],
    role: Annotated[str, typer.Option(help="prepared role to evaluate: test (unseen), val or train")] = "test",
    prepared: Annotated[str | None, typer.Option(help="prepared dataset (default: data.prepared or the run's)")] = None,
    out: Annotated[
        Path | None, typer.Option(help="report folder (default: a new folder under <run.dir>/eval/)")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a report already in --out")] = False,
    config: ConfigOption = None,
    overrides: Overrides = None,
) -> None:
    """Embed queries and gallery with Ray Data, score every retrieval mode and write a report.

    The checkpoint's own config is used, with -c and the overrides on top (its model section cannot
    change); where to run and track (run.*, tracking.*) comes only from you.
    """
    if role not in ("test", "val", "train"):
        raise UsageError(f"--role must be test, val or train, got {role!r}")
    from pipelines.evaluate import EvaluationRequest, run_evaluation

    request = EvaluationRequest(
        checkpoint=checkpoint,
        role=role,
        prepared=prepared,
        out=out,
        overwrite=overwrite,
        config_source=config,
        overrides=tuple(overrides or ()),
    )
    result = run_evaluation(request)
    typer.echo(metrics_table({f"{result.method}/{m}": v for m, v in result.metrics.items()}))
    typer.echo(f"report: {result.report}\nmetrics: {result.report_json}")
