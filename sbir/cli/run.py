"""`sbir train` and `sbir eval`: the Ray Train and evaluation workloads (Ray is imported only when they run)."""

from __future__ import annotations

import re
import time
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
    from pipelines.prepare import prepare_training_data, read_manifest
    from pipelines.ray_runtime import ensure_ray
    from pipelines.tracking import resolve_checkpoint
    from sbir.checkpoint import check_checkpoint
    from sbir.config import config_for_checkpoint, with_absolute_paths

    user = config_from(config, overrides)  # the user's input, validated on its own
    directory = resolve_checkpoint(checkpoint, user.tracking.uri, runs_dir=user.run.dir)
    meta = check_checkpoint(directory)  # a corrupt checkpoint fails here, before Ray starts
    cfg = with_absolute_paths(config_for_checkpoint(meta.config, config, overrides))
    report_dir = report_folder(out, Path(cfg.run.dir), checkpoint, role, overwrite)
    if prepared is not None:
        read_manifest(prepared)  # a missing or unreachable dataset fails before Ray starts
    else:
        prepared, _ = prepare_training_data(cfg, check_selection=False)
    ensure_ray(cfg.run.ray_address, timeout_s=cfg.run.ray_connect_timeout_s)
    from pipelines.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(directory, prepared, out_dir=report_dir, config=cfg, role=role, meta=meta)
    typer.echo(metrics_table({f"{meta.method}/{m}": v for m, v in result.metrics.items()}))
    typer.echo(f"report: {result.report}\nmetrics: {result.report_json}")


def report_folder(out: Path | None, run_dir: Path, reference: str, role: str, overwrite: bool) -> Path:
    """Where an evaluation writes: `out` (never over an existing report unless `overwrite`), else a new
    folder ``<run.dir>/eval/<reference>-<role>-<time>`` that no other evaluation uses."""
    if out is not None:
        if (out / "report.json").exists() and not overwrite:
            raise UsageError(f"{out} already holds a report; pass --overwrite to replace it, or another --out")
        return out
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", reference).strip("-.")[-80:] or "checkpoint"
    base = run_dir / "eval" / f"{slug}-{role}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate
