"""Benchmark training on Ray Train: samples/s and input-wait share for 1 and 2 workers at the same global batch.

Writes a small synthetic dataset (40 classes x 8 sketches + 8 photos at 64 px by default), prepares it
once with Ray Data, then runs ``pipelines.train.run_training`` on the tiny ``synthetic_zse`` preset
(and any other ``--presets``) with ``train.num_workers`` 1 and 2, keeping the global batch, epochs and
steps fixed. Reports, per run, the global training rate of the epochs after the first (start-up
excluded), the share of step time spent waiting for input, the first epoch's time and the total wall
time of ``run_training``. Optionally writes a ``## Training`` section of a Markdown file.

    .venv/bin/python bench/bench_train.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
from report import machine_line, write_section

from pipelines.prepare import prepare_dataset
from pipelines.ray_runtime import ensure_ray, local_cpus
from pipelines.train import run_training
from sbir.config import load_config
from sbir.data.readers import read_split
from sbir.data.synth import write_synthetic_dataset

SECTION = "## Training"


@dataclass
class Run:
    preset: str
    workers: int
    micro_batch: int  # pairs per worker step (P x K)
    wall_s: float  # run_training, end to end
    first_epoch_s: float
    steady_s: float  # epochs 2.. summed (rank 0's epoch time)
    steady_images_per_s: float  # all workers, sketches + photos
    steady_wait: float  # input-wait share of epochs 2..
    first_wait: float
    load_before: float
    load_after: float


def load1() -> float:
    return os.getloadavg()[0]


def train_once(preset: str, workers: int, args: argparse.Namespace, data: Path, runs: Path) -> Run:
    overrides = [
        f"data.root={data}",
        f"data.prepared={data.parent / 'prepared'}",
        f"run.dir={runs}",
        f"run.name={preset}-w{workers}",
        f"train.num_workers={workers}",
        f"train.epochs={args.epochs}",
        f"train.steps_per_epoch={args.steps}",
        f"train.batch_size={args.batch_size}",
        f"train.items_per_class={args.items_per_class}",
        "train.eval_at_end=false",
        "train.baseline=false",
        "tracking.register_model=false",
        *args.override,
    ]
    config = load_config(preset, overrides)
    micro = config.train.batch_size // (workers * config.train.grad_accum)
    before = load1()
    t0 = time.perf_counter()
    outcome = run_training(config, echo=print)
    wall = time.perf_counter() - t0
    after = load1()

    history = sorted(outcome.history, key=lambda h: h["epoch"])
    for h in history:
        print(
            f"  epoch {h['epoch']:.0f}: {h['epoch_seconds']:.1f} s, rank 0 {h['samples_per_s']:.1f} images/s, "
            f"input wait {h['input_wait_share']:.0%}"
        )
    if len(history) != args.epochs:
        raise RuntimeError(f"{preset} with {workers} worker(s): expected {args.epochs} epochs, got {len(history)}")
    expected = args.steps * micro * 2  # rank 0's images (sketches + photos) per epoch
    for h in history:
        got = h["samples_per_s"] * h["epoch_seconds"]
        if abs(got - expected) > 0.5:
            print(f"warning: rank 0 trained {got:.0f} images in epoch {h['epoch']:.0f}, expected {expected}")
    steady = history[1:]
    steady_s = sum(h["epoch_seconds"] for h in steady)
    # Every rank trains the same number of equal micro-batches, so the global rate is workers x rank 0's.
    steady_rate = workers * sum(h["samples_per_s"] * h["epoch_seconds"] for h in steady) / steady_s
    steady_wait = sum(h["input_wait_share"] * h["epoch_seconds"] for h in steady) / steady_s
    return Run(
        preset,
        workers,
        micro,
        wall,
        history[0]["epoch_seconds"],
        steady_s,
        steady_rate,
        steady_wait,
        history[0]["input_wait_share"],
        before,
        after,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["synthetic_zse"], help="e.g. synthetic_zse synthetic_clip_at")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="train.num_workers values")
    ap.add_argument("--classes", type=int, default=40)
    ap.add_argument("--per-class", type=int, default=8, help="sketches and photos per class")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--steps", type=int, default=10, help="train.steps_per_epoch (optimizer steps per worker)")
    ap.add_argument("--batch-size", type=int, default=24, help="global batch (pairs), split across workers")
    ap.add_argument("--items-per-class", type=int, default=3)
    ap.add_argument("--override", nargs="*", default=[], help="extra dotted config overrides for every run")
    ap.add_argument("--write", type=Path, help="Markdown file whose '## Training' section is replaced")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.epochs < 2:
        ap.error("--epochs must be >= 2 (the first epoch is reported separately as start-up)")

    work = Path(tempfile.mkdtemp(prefix="sbir-bench-train-"))
    runs: list[Run] = []
    try:
        data = work / "data"
        write_synthetic_dataset(
            data,
            seed=0,
            num_classes=args.classes,
            sketches_per_class=args.per_class,
            photos_per_class=args.per_class,
            image_size=args.image_size,
            workers=min(2, os.cpu_count() or 1),
            progress=False,
        )
        ensure_ray()
        ray.data.DataContext.get_current().enable_progress_bars = False
        split = read_split("synthetic", data, "zeroshot1", val_fraction=0.1, val_seed=0)
        manifest = prepare_dataset(split, str(work / "prepared"), source=f"synthetic:{data}")
        n_train = sum(1 for r in split.records if r.role == "train")
        print(f"prepared {manifest.num_rows} images ({n_train} training images)")

        for preset in args.presets:
            for workers in args.workers:
                run = train_once(preset, workers, args, data, work / "runs")
                runs.append(run)
                print(
                    f"{preset} workers={workers}: {run.steady_images_per_s:.1f} images/s (epochs 2..), "
                    f"input wait {run.steady_wait:.0%}, epoch 1 {run.first_epoch_s:.1f} s, wall {run.wall_s:.1f} s, "
                    f"load {run.load_before:.1f} -> {run.load_after:.1f}"
                )
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    if args.write:
        write_section(args.write, SECTION, report_body(args, runs, n_train))
        print(f"wrote the '{SECTION}' section of {args.write}")


def report_body(args: argparse.Namespace, runs: list[Run], n_train: int) -> str:
    rows = "\n".join(
        f"| `{r.preset}` | {r.workers} | {r.micro_batch} | {r.steady_images_per_s:.1f} | {r.steady_wait:.0%} "
        f"| {r.first_epoch_s:.1f} | {r.first_wait:.0%} | {r.wall_s:.1f} |"
        for r in runs
    )
    speedups = []
    for preset in args.presets:
        by_workers = {r.workers: r for r in runs if r.preset == preset}
        if 1 in by_workers and 2 in by_workers:
            ratio = by_workers[2].steady_images_per_s / by_workers[1].steady_images_per_s
            speedups.append(f"`{preset}`: 2 workers train at {ratio:.2f}x the rate of 1")
    loads = [x for r in runs for x in (r.load_before, r.load_after)]
    load_note = (
        f"The 1-minute load average was {min(loads):.1f}-{max(loads):.1f} during the runs, the benchmark's own Ray "
        "workers and data tasks included."
    )
    later = "epoch 2" if args.epochs == 2 else f"epochs 2-{args.epochs}"
    header = (
        f"| preset | workers | pairs per worker step | images/s, {later} | input wait, {later} "
        "| epoch 1 (s) | input wait, epoch 1 | wall time (s) |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    return f"""Measured {dt.date.today()} on the project machine with `bench/bench_train.py`: {machine_line()},
torch {torch.__version__}, Ray {ray.__version__} (local cluster, {local_cpus()} logical CPUs).
Dataset: {args.classes} classes x {args.per_class} sketches + {args.per_class} photos at {args.image_size} px
from the built-in synthetic generator, prepared once ({n_train} training images). Every run uses
`pipelines.train.run_training` with the same global batch of {args.batch_size} sketch-photo pairs
(P x K with K = {args.items_per_class}, split evenly across the workers), {args.epochs} epochs x {args.steps}
optimizer steps, validation on the val classes every epoch, no final evaluation and no model registration.
Each worker reserves the preset's `train.cpus_per_worker` (0.5), so Ray gives it one torch thread.
The stream (`pipelines/streams.py`) decodes the training images once per run into the Ray object store, and each
epoch's dataset gathers its planned P x K batches from them.

{header}
{rows}

*images/s* is the global training rate: sketches + photos consumed by all workers per second of epoch time
(rank 0's `epoch_seconds`, which excludes validation and checkpointing), over the epochs after the first,
so that worker start-up and the first Ray Data execution are left out. It is computed as workers x the
history's `samples_per_s` (which rank 0 measures for its own shard; every rank trains the same number of
equal micro-batches). *input wait* is the share of that epoch time rank 0 spent waiting for its next batch
(`input_wait_share`, time-weighted over the epochs). *wall time* is the whole `run_training` call: Ray
Train worker-group start-up, every epoch with validation and checkpoints, and MLflow tracking.
{"; ".join(speedups) + "." if speedups else ""}
Each worker reads its own dataset per epoch (`pipelines.streams.epoch_shards`: batches dealt by index, read in
order), so no split coordinator starts per epoch. Epoch 1 also builds the decoded-image cache.

{load_note}
"""


if __name__ == "__main__":
    main()
