"""What a sweep gives back: the outcome it left behind, or the SweepError that stopped it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sbir.errors import SbirError
from sbir.reports.sweep import TrialSummary


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
