"""Benchmark sweeps, in one run on one machine:

1. a 4-trial sweep (2 trials at a time, FIFO, four fixed configs from a grid) against the same four
   configs trained one after another with `sbir train`: the sweep's overhead and its concurrency gain;
2. ASHA against FIFO on the same random space and seed: the time early stopping saved, and what it cost
   in best validation score.

Every command runs as a user runs it (`sbir …` in a fresh process with its own local Ray cluster), on the
small synthetic dataset of the tests. Writes the ``## Sweeps`` section of a Markdown file.

    .venv/bin/python bench/bench_tune.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from report import machine_line, write_section

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SECTION = "## Sweeps"
SBIR = str(Path(sys.executable).parent / "sbir")
GRID = [1.0e-5, 3.0e-5, 1.0e-4, 3.0e-4]  # train.lr of the four fixed configs
TRAINING = ["train.epochs=4", "train.steps_per_epoch=4", "train.batch_size=12", "train.items_per_class=3"]
RANDOM_SPACE = {
    "model.zse.relation_head": {"choice": ["kernel"]},
    "model.zse.kernel_count": {"randint": [5, 22]},
    "model.zse.kernel_sigma": {"loguniform": [0.02, 0.5]},
    "train.lr": {"loguniform": [1.0e-5, 1.0e-3]},
}


def timed(command: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env |= {"HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return elapsed


def best_score(report: Path) -> tuple[float, int]:
    """The best trial's validation score and the epochs all trials trained, from a sweep's report.json."""
    trials = json.loads(report.read_text())["trials"]
    scores = [max((r["val_score"] for r in t["curve"] if r["val_score"] >= 0), default=-1.0) for t in trials]
    epochs = sum(max((int(r["epoch"]) for r in t["curve"]), default=0) for t in trials)
    return max(scores), epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="update this Markdown file's sweep section")
    args = parser.parse_args()
    from tests.helpers import SMALL_VAL_FRACTION, write_small_synthetic

    work = Path(tempfile.mkdtemp(prefix="sbir-bench-tune-"))
    data = write_small_synthetic(work / "data")
    base = ["-c", "synthetic_zse", f"data.root={data}", f"data.prepared={work / 'prepared'}",
            f"data.val_fraction={SMALL_VAL_FRACTION}", f"run.dir={work / 'runs'}", *TRAINING]  # fmt: skip
    grid = work / "grid.yaml"
    grid.write_text(yaml.safe_dump({"train.lr": {"grid": GRID}}))
    space = work / "random.yaml"
    space.write_text(yaml.safe_dump(RANDOM_SPACE))
    # One worker per trial (the measured setting; the sequential runs keep the preset's two).
    sweep = ["tune.max_concurrent_trials=2", "tune.seed=0", "tune.workers_per_trial=1"]

    timed([SBIR, "data", "prepare", "--layout", "synthetic", "--root", str(data), "--split", "zeroshot1",
           "--out", str(work / "prepared"), "--val-fraction", str(SMALL_VAL_FRACTION)])  # fmt: skip
    once = ["train.eval_at_end=false", "tracking.register_model=false"]
    sequential = sum(
        timed([SBIR, "train", *base, f"train.lr={lr}", f"run.name=seq-{i}", *once]) for i, lr in enumerate(GRID)
    )
    swept = timed([SBIR, "tune", *base, "--space", str(grid), "run.name=grid", "tune.search_alg=grid",
                   "tune.num_samples=1", "tune.scheduler=fifo", *sweep])  # fmt: skip
    fifo = timed([SBIR, "tune", *base, "--space", str(space), "run.name=fifo", "tune.num_samples=4",
                  "tune.scheduler=fifo", *sweep])  # fmt: skip
    asha = timed([SBIR, "tune", *base, "--space", str(space), "run.name=asha", "tune.num_samples=4",
                  "tune.scheduler=asha", "tune.grace_period=1", "tune.reduction_factor=2", *sweep])  # fmt: skip
    fifo_best, fifo_epochs = best_score(work / "runs" / "fifo" / "report" / "report.json")
    asha_best, asha_epochs = best_score(work / "runs" / "asha" / "report" / "report.json")

    verdict = "met" if swept <= sequential else "not met"
    body = f"""Measured {dt.date.today()} on {machine_line()} with `bench/bench_tune.py` (one run, side by side).
The small synthetic dataset of the tests (12 classes, 64 px), tiny ZSE-SBIR, {" ".join(TRAINING)}; every
command is a fresh `sbir` process with its own local Ray cluster (its start-up is part of each time).

| what | wall time | ratio |
|---|---:|---:|
| 4 configs (`train.lr` in {GRID}) trained one after another with `sbir train` | {sequential:.0f} s | 1.00 |
| the same 4 configs as one sweep, 2 trials at a time (FIFO, grid searcher) | {swept:.0f} s | {swept / sequential:.2f} |

Goal: sweep wall time ≤ 1.0× the sequential runs with 2 concurrent trials: {verdict}.
The sweep also evaluates its best trial on the unseen classes and registers it once; the sequential runs
do neither (`train.eval_at_end=false`). It pays one Ray start instead of four.
The sweep's trials ran on one worker each (`tune.workers_per_trial=1`), the sequential runs on the
preset's two, so the trials did less work per step than the runs they are timed against.

| same random space, seed 0, 4 trials, 2 at a time | wall time | epochs trained | best val_score |
|---|---:|---:|---:|
| FIFO | {fifo:.0f} s | {fifo_epochs} | {fifo_best:.4f} |
| ASHA (grace 1, reduction factor 2) | {asha:.0f} s | {asha_epochs} | {asha_best:.4f} |

ASHA saved {fifo - asha:.0f} s ({(fifo - asha) / fifo:.0%}) against FIFO here.
"""
    print(body)
    if args.write:
        write_section(args.write, SECTION, body)


if __name__ == "__main__":
    main()
