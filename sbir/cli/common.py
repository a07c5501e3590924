"""What every `sbir` command shares: the config options and how a config is loaded."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Annotated

import typer

from sbir.config import Config, load_config

ConfigOption = Annotated[
    str | None, typer.Option("--config", "-c", help="YAML file or built-in preset name (see `sbir config presets`)")
]
Overrides = Annotated[list[str] | None, typer.Argument(help="dotted overrides, e.g. train.num_workers=4")]


DryRun = Annotated[
    bool, typer.Option("--dry-run", help="check the command and its config, print what would run; start nothing")
]


def describe_run(config: Config) -> str:
    """One line on what a training-like command would start (for --dry-run)."""
    train = config.train
    device = "GPU" if train.use_gpu else "CPU"
    return (
        f"{config.model.method} on {config.setting}: {train.num_workers} {device} worker(s), "
        f"{train.epochs} epochs x {train.steps_per_epoch} steps, batch {train.batch_size}, "
        f"prepared data {config.data.prepared or '(prepared from ' + config.data.root + ')'}, "
        f"checkpoints {config.run.storage or config.run.dir}"
    )


def config_from(config: str | None, overrides: list[str] | None) -> Config:
    """The validated config of a command (a ConfigError names the bad key; the CLI exits 2)."""
    return load_config(config, overrides or [])


HEADLINE = ("map_all_voc", "map_all_plain", "map_200_voc_strict", "map_200_plain_lenient", "p_100", "p_100_minR")


def metrics_table(results: dict[str, dict[str, float]], columns: tuple[str, ...] = HEADLINE) -> str:
    """Fixed-width table for the terminal: one row per model/mode, one column per named metric."""
    width = max(len(name) for name in results) + 2
    lines = ["".ljust(width) + "".join(c.rjust(22) for c in columns)]
    for name, metrics in results.items():
        lines.append(name.ljust(width) + "".join(f"{metrics[c]:22.4f}" for c in columns))
    return "\n".join(lines)


@contextlib.contextmanager
def stop_signals() -> Iterator[threading.Event]:
    """An event set by the first SIGINT or SIGTERM while the block runs (a second SIGINT interrupts at once).

    SIGINT is caught even when the shell that started us ignored it (`sbir serve &` in a script, where
    Python would otherwise never see Ctrl-C or `kill -INT`). The previous handlers come back afterwards."""
    stopped = threading.Event()

    def handle(signum: int, frame) -> None:
        if stopped.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stopped.set()

    previous = {signum: signal.signal(signum, handle) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stopped
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
