"""The sweep's progress lines: one per finished, failed or retried trial (Tune's own tables are off)."""

from __future__ import annotations

from typing import Any

from ray.tune import Callback


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
