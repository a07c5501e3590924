"""`sbir train` and `sbir eval`: the Ray Train and evaluation workloads (Ray is imported only when they run)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sbir.config import ConfigError, load_config

ConfigOption = Annotated[
    str | None, typer.Option("--config", "-c", help="YAML file or built-in preset name (see `sbir config presets`)")
]
Overrides = Annotated[list[str] | None, typer.Argument(help="dotted overrides, e.g. train.num_workers=4")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _config(config: str | None, overrides: list[str] | None):
    try:
        return load_config(config, overrides or [])
    except ConfigError as exc:
        raise _fail(str(exc)) from None


def train(
    config: ConfigOption = None,
    overrides: Overrides = None,
    resume: Annotated[str | None, typer.Option(help="resume the named run from its latest checkpoint")] = None,
) -> None:
    """Train on Ray Train (DDP), evaluate the best checkpoint on the unseen classes, track and register in MLflow."""
    cfg = _config(config, overrides)
    from pipelines.train import run_training

    try:
        outcome = run_training(cfg, resume=resume, echo=typer.echo)
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc), 1) from None
    typer.echo(f"run: {outcome.run_dir}\nbest checkpoint: {outcome.best_checkpoint}")
    if outcome.test_metrics:
        typer.echo(_metrics_table({f"{cfg.model.method}/{m}": v for m, v in outcome.test_metrics.items()}))
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
        raise _fail(f"--split must be test, val or train, got {split!r}")
    from pipelines.ray_runtime import ensure_ray
    from pipelines.tracking import resolve_checkpoint, resolve_tracking_uri
    from sbir.checkpoint import read_checkpoint_meta

    base = _config(config, overrides) if config or overrides else None
    uri = resolve_tracking_uri(base.tracking.uri if base else None, base.run.dir if base else "runs")
    try:
        directory = resolve_checkpoint(checkpoint, uri)
        meta = read_checkpoint_meta(directory)
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc), 1) from None
    cfg = base or meta.config
    ensure_ray(cfg.run.ray_address)
    from pipelines.evaluate import evaluate_checkpoint
    from pipelines.train import ensure_prepared

    data = prepared or ensure_prepared(cfg)
    target = out or Path(cfg.run.dir) / "eval" / f"{Path(directory).name}-{split}"
    result = evaluate_checkpoint(directory, data, out_dir=target, config=cfg, role=split)
    typer.echo(_metrics_table({f"{meta.method}/{m}": v for m, v in result.metrics.items()}))
    typer.echo(f"report: {result.report}\nmetrics: {result.report_json}")


HEADLINE = ("map_all_voc", "map_all_plain", "map_200_voc_strict", "map_200_plain_lenient", "p_100", "p_100_minR")


def _metrics_table(results: dict[str, dict[str, float]], columns: tuple[str, ...] = HEADLINE) -> str:
    """Fixed-width table for the terminal: one row per model/mode, one column per named metric."""
    width = max(len(name) for name in results) + 2
    lines = ["".ljust(width) + "".join(c.rjust(22) for c in columns)]
    for name, metrics in results.items():
        lines.append(name.ljust(width) + "".join(f"{metrics[c]:22.4f}" for c in columns))
    return "\n".join(lines)
