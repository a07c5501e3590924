"""Benchmark the data path: `sbir data synth`, `sbir data prepare` (Ray Data) and the P x K training stream.

Writes the synthetic dataset at full size (100 classes x 40 sketches + 40 photos at 224 px by default),
prepares it into Parquet shards on a local Ray cluster and streams decoded, transformed training batches
for `--epochs` epochs, reporting images/s for each stage. The stream is measured with the decoded-image
cache (`--cache-budget`, default: `pipelines.streams`' budget) and, with `--compare`, also decoding every
epoch (`--cache-budget 0`). `--consumers 2` deals each epoch to 2 readers the way training does for 2
workers (`epoch_shards(..., shards=2)`, one thread per shard, read in order). Optionally writes a
``## Data`` section of a Markdown file.

    .venv/bin/python bench/bench_data.py --write docs/benchmarks.md
    # the demo's training input: 64 px, 30 batches of 12 + 12 images per epoch, 2 Ray Train workers
    .venv/bin/python bench/bench_data.py --classes 60 --per-class 8 --image-size 64 --synth-workers 2 \
        --batches 30 --classes-per-batch 4 --items-per-class 3 --epochs 4 --consumers 2 --compare
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from report import machine_line, write_section

from pipelines.prepare import prepare_dataset
from pipelines.ray_runtime import ensure_ray
from pipelines.streams import epoch_shards, iter_epoch, training_metadata
from sbir.data.batches import BatchSpec
from sbir.data.readers import read_split
from sbir.data.synth import write_synthetic_dataset
from sbir.methods.zse import ZSEFamily

SECTION = "## Data"


@dataclass
class StreamRun:
    """Per-epoch wall times of one stream configuration (epoch 1 includes any decoded-image cache build)."""

    label: str
    seconds: list[float]
    images_per_epoch: int

    def rate(self, epochs: slice) -> float:
        times = self.seconds[epochs]
        return self.images_per_epoch * len(times) / sum(times) if times else float("nan")


def consume(shards: list[ray.data.Dataset]) -> int:
    """Images in one epoch, each worker's shard read in order by its own thread (as Ray Train workers do)."""
    counts = [0] * len(shards)

    def read(i: int) -> None:
        shards[i].context.execution_options.preserve_order = True
        counts[i] = sum(int(b["sketch"].shape[0]) + int(b["photo"].shape[0]) for b in iter_epoch(shards[i]))

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(shards))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts)


def stream(prepared: str, args: argparse.Namespace, label: str, cache_budget: int | None) -> StreamRun:
    """Stream `args.epochs` epochs (metadata read once, as `pipelines.train.build_trainer` does)."""
    spec = BatchSpec(classes_per_batch=args.classes_per_batch, items_per_class=args.items_per_class)
    transform = ZSEFamily.transform_for(args.image_size)
    meta = training_metadata(prepared)
    seconds, images = [], 0
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        shards = epoch_shards(
            prepared, spec, transform, args.batches, 0, epoch, meta, shards=args.consumers, cache_budget=cache_budget
        )
        images = consume(shards)
        seconds.append(time.perf_counter() - t0)
        print(f"stream [{label}] epoch {epoch + 1}: {images} images, {seconds[-1]:.1f} s, {images / seconds[-1]:.0f}/s")
    return StreamRun(label, seconds, images)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--per-class", type=int, default=40, help="sketches and photos per class")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--synth-workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batches", type=int, default=20, help="training batches per epoch")
    ap.add_argument("--epochs", type=int, default=3, help="epochs to stream (a Ray Data execution each)")
    ap.add_argument("--classes-per-batch", type=int, default=8, help="P")
    ap.add_argument("--items-per-class", type=int, default=4, help="K (sketches and photos per class)")
    ap.add_argument("--consumers", type=int, default=1, help="concurrent shard readers, like Ray Train workers")
    ap.add_argument("--cache-budget", type=int, help="decoded-image cache budget in bytes (0: decode every epoch)")
    ap.add_argument("--compare", action="store_true", help="also stream with the cache disabled")
    ap.add_argument("--write", type=Path, help="Markdown file whose '## Data' section is replaced")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    work = Path(tempfile.mkdtemp(prefix="sbir-bench-data-"))
    try:
        images = 2 * args.classes * args.per_class
        synth_rows = []
        for workers in args.synth_workers:
            out = work / f"synth-{workers}"
            summary = write_synthetic_dataset(
                out,
                seed=0,
                num_classes=args.classes,
                sketches_per_class=args.per_class,
                photos_per_class=args.per_class,
                image_size=args.image_size,
                workers=workers,
                progress=False,
            )
            synth_rows.append((workers, summary.seconds, images / summary.seconds))
            print(f"synth workers={workers}: {summary.seconds:.1f} s, {images / summary.seconds:.0f} images/s")
        root = work / f"synth-{args.synth_workers[-1]}"

        ensure_ray(num_cpus=2)
        ray.data.DataContext.get_current().enable_progress_bars = False
        split = read_split("sketchy", root, "zeroshot1", val_fraction=0.1, val_seed=0)
        t0 = time.perf_counter()
        manifest = prepare_dataset(split, str(work / "prepared"), source=f"sketchy:{root}")
        prep_s = time.perf_counter() - t0
        n_rows = manifest.num_rows
        print(f"prepare: {n_rows} images in {prep_s:.1f} s, {n_rows / prep_s:.0f} images/s")

        prepared = str(work / "prepared")
        runs = [stream(prepared, args, "cached" if args.cache_budget != 0 else "decode per epoch", args.cache_budget)]
        if args.compare and args.cache_budget != 0:
            runs.append(stream(prepared, args, "decode per epoch", 0))
        for run in runs:
            print(
                f"stream [{run.label}]: epoch 1 {run.rate(slice(0, 1)):.0f} images/s, "
                f"epochs 2-{args.epochs} {run.rate(slice(1, None)):.0f} images/s"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if args.write:
        synth_table = "\n".join(f"| {w} | {s:.1f} | {r:.0f} |" for w, s, r in synth_rows)
        stream_table = "\n".join(
            f"| {r.label} | {r.seconds[0]:.1f} | {r.rate(slice(0, 1)):.0f} | {r.rate(slice(1, None)):.0f} |"
            for r in runs
        )
        body = f"""Measured {dt.date.today()} on the project machine with `bench/bench_data.py`: {machine_line()}.
Dataset: {args.classes} classes x {args.per_class} sketches + {args.per_class} photos at {args.image_size} px
({images:,} images) from the built-in synthetic generator.

`sbir data synth` (output is byte-identical whatever the worker count):

| worker processes | wall time (s) | images/s |
|---:|---:|---:|
{synth_table}

`sbir data prepare` with Ray Data on a local 2-CPU cluster (decode check + Parquet shards + manifest):
**{n_rows / prep_s:.0f} images/s** ({n_rows:,} images in {prep_s:.1f} s, cluster start excluded).

Training stream (`epoch_shards`, P x K = {args.classes_per_batch} x {args.items_per_class} per modality,
ZSE-SBIR transform at {args.image_size} px, {args.batches} batches per epoch dealt to {args.consumers} reader(s),
{args.epochs} epochs, one Ray Data execution per epoch and reader as in training):

| stream | epoch 1 (s) | epoch 1 images/s | epochs 2-{args.epochs} images/s |
|---|---:|---:|---:|
{stream_table}

Epoch 1 of the cached stream includes decoding every training image once into the object store
(uint8 at model resolution); later epochs only gather and normalise planned batches from it. Decoding
per epoch reads every shard, shuffles the planned rows and decodes them again each epoch.
"""
        write_section(args.write, SECTION, body)
        print(f"wrote the '{SECTION}' section of {args.write}")


if __name__ == "__main__":
    main()
