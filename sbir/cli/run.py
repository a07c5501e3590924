"""`sbir train` and `sbir eval`: the Ray Train and evaluation workloads (Ray is imported only when they run)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sbir.cli.common import ConfigOption, Overrides, config_from, metrics_table
from sbir.errors import UsageError


def train(
    config: ConfigOption = None,
    overrides: Overrides = None,
    resume: Annotated[str | None, typer.Option(help="resume the named run from its latest checkpoint")] = None,
) -> None:
    """Train on Ray Train (DDP), evaluate the best checkpoint on the unseen classes, track and register in MLflow."""
    cfg = config_from(config, overrides)
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
    split: Annotated[str, typer.Option(help="role to evaluate: test (unseen), val or train")] = "test",
    prepared: Annotated[str | None, typer.Option(help="prepared dataset (default: data.prepared or the run's)")] = None,
    out: Annotated[Path | None, typer.Option(help="report folder (default: <run.dir>/eval/<name>-<split>)")] = None,
    config: ConfigOption = None,
    overrides: Overrides = None,
) -> None:
    """Embed queries and gallery with Ray Data, score every retrieval mode and write a report."""
    if split not in ("test", "val", "train"):
        raise UsageError(f"--split must be test, val or train, got {split!r}")
    from pipelines.prepare import prepare_training_data
    from pipelines.ray_runtime import ensure_ray
    from pipelines.tracking import resolve_checkpoint, resolve_tracking_uri
    from sbir.checkpoint import check_checkpoint

    base = config_from(config, overrides) if config or overrides else None
    uri = resolve_tracking_uri(base.tracking.uri if base else None, base.run.dir if base else "runs")
    directory = resolve_checkpoint(checkpoint, uri)
    meta = check_checkpoint(directory)  # a corrupt checkpoint fails here, before Ray starts
    cfg = base or meta.config
    if prepared is None:
        prepared, _ = prepare_training_data(cfg)
    ensure_ray(cfg.run.ray_address)
    from pipelines.evaluate import evaluate_checkpoint

    report_dir = out or Path(cfg.run.dir) / "eval" / f"{Path(directory).name}-{split}"
    result = evaluate_checkpoint(directory, prepared, out_dir=report_dir, config=cfg, role=split)
    typer.echo(metrics_table({f"{meta.method}/{m}": v for m, v in result.metrics.items()}))
    typer.echo(f"report: {result.report}\nmetrics: {result.report_json}")
