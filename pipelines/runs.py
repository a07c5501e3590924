"""``<run.dir>/<name>/run.json``: the record of a training run or a sweep (its MLflow id, status and kind), so
a name is never reused by mistake and a resume finds what it resumes. No Ray: dry runs check it too."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sbir.config import check_name
from sbir.errors import SbirError, UsageError

RUN_FILE = "run.json"


def record_for(run_dir: str | Path, name: str, kind: str = "run") -> RunRecord:
    """The record of the run (or sweep) ``name`` under ``run_dir``; a name that is not a plain name is refused."""
    try:
        check_name(name, f"{kind} name")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return RunRecord(Path(run_dir) / name, kind)


def runs_of_kind(parent: Path, kind: str) -> list[str]:
    """Names of the records of this kind under ``parent``, sorted."""
    names = []
    for path in sorted(parent.glob(f"*/{RUN_FILE}")):
        try:
            if json.loads(path.read_text()).get("kind", "run") == kind:
                names.append(path.parent.name)
        except (OSError, ValueError):
            continue
    return names


class RunError(SbirError):
    """A run name that is taken, a run to resume that does not exist, or a run folder that cannot be made."""


@dataclass
class RunRecord:
    """``<run.dir>/<run name>/run.json``: the run's MLflow id and status, so a name is never reused by mistake."""

    dir: Path
    kind: str = "run"  # "run" (sbir train) or "sweep" (sbir tune): resuming one as the other is refused

    @property
    def file(self) -> Path:
        return self.dir / RUN_FILE

    def read(self) -> dict[str, Any]:
        """The record's fields (a record without ``kind`` is a training run's)."""
        try:
            return json.loads(self.file.read_text())
        except (OSError, ValueError) as exc:
            raise RunError(f"{self.file}: unreadable run record ({exc})") from exc

    def check_start(self, resume: str | None) -> None:
        """A new run needs an unused name; a resumed one must exist and not have finished."""
        name = self.dir.name
        if resume is None and self.file.is_file():
            status = self.read().get("status", "unknown")
            raise RunError(
                f"a run named {name!r} already exists in {self.dir.parent} (status {status}); resume it with "
                f"--resume {name}, or pick another run.name"
            )
        if resume is not None and not self.file.is_file():
            known = runs_of_kind(self.dir.parent, self.kind)
            raise RunError(
                f"there is no {self.kind} {name!r} to resume in {self.dir.parent}"
                + (f"; {self.kind}s there: {', '.join(known[:10])}" if known else f" (it holds no {self.kind}s)")
            )
        if resume is not None and self.read().get("kind", "run") != self.kind:
            raise RunError(f"{name!r} in {self.dir.parent} is a {self.read().get('kind', 'run')}, not a {self.kind}")
        if resume is not None and self.read().get("status") == "FINISHED":
            raise RunError(
                f"run {name!r} has finished; its best checkpoint is {self.dir / 'best'}. Start a new run instead"
            )

    def create(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(
                f"cannot create the run folder {self.dir}: {exc.strerror}; set run.dir to a writable folder"
            ) from exc

    def write(self, **fields: Any) -> None:
        current = self.read() if self.file.is_file() else {}
        self.file.write_text(json.dumps(current | fields, indent=2))

    def set_status(self, status: str) -> None:
        self.write(status=status, ended=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
