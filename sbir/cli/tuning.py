"""`sbir tune`: a Ray Tune sweep over the training driver (Ray is imported only when it runs)."""

from __future__ import annotations

from typing import Annotated

import typer

from sbir.cli.common import ConfigOption, DryRun, Overrides, config_from, describe_run, metrics_table
from sbir.errors import UsageError

TOP_ROWS = 5


def tune_command(
    config: ConfigOption = None,
    overrides: Overrides = None,
    space: Annotated[
        str | None, typer.Option(help="built-in space (clip_at_prompts, zse_kernels) or a YAML file; or tune.space")
    ] = None,
    resume: Annotated[
        str | None, typer.Option(help="resume the named sweep: finished trials are kept, the others go on")
    ] = None,
    dry_run: DryRun = False,
) -> None:
    """Sweep hyperparameters with Ray Tune: each trial is a Ray Train run; the best is tested and registered."""
    if resume and space:
        raise UsageError("--resume continues a sweep with its own search space; leave out --space")
    config_from(config, overrides)  # a bad key or value fails here, before anything else
    if dry_run:
        from tune.sweep import plan_sweep
        from tune.trial import TrialResources

        cfg, dimensions = plan_sweep(config, overrides or [], space)
        res = TrialResources.of(cfg)
        typer.echo(
            f"ok: sbir tune would run {cfg.tune.num_samples} trial(s), {cfg.tune.max_concurrent_trials} at a time, "
            f"over {', '.join(d.key for d in dimensions)} ({cfg.tune.search_alg}, {cfg.tune.scheduler}); each trial "
            f"{res.workers} worker(s) x {res.cpus_per_worker:g} CPU + {res.gpus_per_worker:g} GPU; base run: "
            f"{describe_run(cfg)}"
        )
        return
    from sbir.reports.sweep import trials_table
    from tune.sweep import run_sweep

    outcome = run_sweep(config, overrides or [], space, resume=resume, echo=typer.echo)
    rows = trials_table(outcome.trials)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows[: TOP_ROWS + 1]:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    if len(rows) > TOP_ROWS + 1:
        typer.echo(f"... {len(rows) - TOP_ROWS - 1} more in the report")
    if outcome.interrupted:
        raise typer.Exit(130)
    if outcome.test_metrics:
        typer.echo(metrics_table({f"best/{m}": v for m, v in outcome.test_metrics.items()}))
    typer.echo(f"sweep: {outcome.dir}\nreport: {outcome.report}")
    if outcome.best_config:
        typer.echo(f"best config: {outcome.best_config} (sbir train -c {outcome.best_config})")
    if outcome.registered:
        typer.echo(f"registered: {outcome.registered}")
    typer.echo(f"mlflow: {outcome.tracking_uri} (parent run {outcome.parent_run_id})")
