"""Per-epoch progress from rank 0 to the driver's terminal while ``trainer.fit()`` blocks.

Workers' own output never reaches the driver (Ray runs with ``log_to_driver=False`` so a normal run is
not flooded by Ray internals), so rank 0 puts one small record per finished epoch into a Ray queue (an
actor holding no CPU); a thread on the driver prints each as one line with elapsed and remaining time.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ray.util.queue import Empty, Queue

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochProgress:
    """What one finished epoch reports: its number, steps so far, loss and validation metric."""

    epoch: int
    epochs: int
    steps: int
    total_steps: int
    loss: float
    val_metric: str
    val_score: float | None  # None when the epoch was not validated
    samples_per_s: float

    def line(self, elapsed: float, remaining: float | None) -> str:
        val = f"val {self.val_metric} {self.val_score:.4f}" if self.val_score is not None else "not validated"
        left = f", ~{_duration(remaining)} left" if remaining is not None else ""
        return (
            f"epoch {self.epoch}/{self.epochs}  step {self.steps}/{self.total_steps}  loss {self.loss:.4f}  {val}  "
            f"{self.samples_per_s:.0f} images/s  {_duration(elapsed)} elapsed{left}"
        )


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class ProgressSink:
    """The workers' end: a picklable handle rank 0 writes epoch records into (never blocks training)."""

    def __init__(self) -> None:
        self.queue = Queue(actor_options={"num_cpus": 0})

    def epoch_done(self, metrics: dict[str, float], epochs: int, steps_per_epoch: int, val_metric: str) -> None:
        epoch = int(metrics["epoch"])
        score = metrics.get("val_score", -1.0)
        record = EpochProgress(
            epoch=epoch,
            epochs=epochs,
            steps=epoch * steps_per_epoch,
            total_steps=epochs * steps_per_epoch,
            loss=float(metrics["train_loss"]),
            val_metric=val_metric,
            val_score=float(score) if score >= 0 else None,
            samples_per_s=float(metrics.get("samples_per_s", 0.0)),
        )
        try:
            self.queue.put_nowait(record)
        except Exception as exc:  # progress is a courtesy: never fail an epoch for it
            logger.debug("progress line not delivered: %s", exc)

    def shutdown(self) -> None:
        self.queue.shutdown(force=True)


class ProgressPrinter:
    """The driver's end: a thread that echoes each epoch line while training runs (a context manager)."""

    def __init__(self, sink: ProgressSink, echo: Callable[[str], None], prefix: str = "") -> None:
        self.sink, self.echo, self.prefix = sink, echo, prefix
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sbir-progress", daemon=True)
        self._started = time.monotonic()
        self._first: tuple[int, float] | None = None  # (epoch before the first report, when it started)

    def __enter__(self) -> ProgressPrinter:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.sink.shutdown()

    def _run(self) -> None:
        while True:
            try:
                record = self.sink.queue.get(block=True, timeout=0.5)
            except (Empty, queue.Empty):
                if self._stop.is_set():
                    return
                continue
            except Exception as exc:  # the queue actor is gone (cluster shut down)
                logger.debug("progress queue closed: %s", exc)
                return
            self.echo(self.prefix + record.line(*self._times(record)))

    def _times(self, record: EpochProgress) -> tuple[float, float | None]:
        now = time.monotonic()
        if self._first is None:  # a resumed run starts counting at its first epoch
            self._first = (record.epoch - 1, self._started)
        done = record.epoch - self._first[0]
        elapsed = now - self._first[1]
        remaining = elapsed / done * (record.epochs - record.epoch) if done > 0 else None
        return now - self._started, remaining
