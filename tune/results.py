"""What each trial did, read from Tune's results: its values, per-epoch curve, kept checkpoint and stop reason.

It also closes the trials' MLflow runs, which a trial the scheduler stopped cannot close itself.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sbir.config import Config
from sbir.reports.sweep import COMPLETED, FAILED, STOPPED, UNFINISHED, TrialSummary
from tune.space import Dimension
from tune.trial import PARENT_TAG, TRIAL_TAG

logger = logging.getLogger("tune.sweep")  # the sweep's logger: its lines keep the name they had before the split


def trial_summaries(
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


def close_child_runs(tracker, name: str, summaries: list[TrialSummary]) -> None:
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
