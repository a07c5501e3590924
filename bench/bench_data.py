"""Benchmark the data path: `sbir data synth`, `sbir data prepare` (Ray Data) and the P x K training stream.

Writes the synthetic dataset at full size (100 classes x 40 sketches + 40 photos at 224 px by default),
prepares it into Parquet shards on a local Ray cluster and streams decoded, transformed training batches,
reporting images/s for each stage. Optionally writes a ``## Data`` section of a Markdown file.

    .venv/bin/python bench/bench_data.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import shutil
import tempfile
import time
from pathlib import Path

import ray
from report import machine_line, write_section

from pipelines.prepare import prepare_dataset
from pipelines.ray_runtime import ensure_ray
from pipelines.streams import epoch_batches, iter_epoch, training_metadata
from sbir.data.batches import BatchSpec
from sbir.data.preprocess import ImageTransform
from sbir.data.readers import read_split
from sbir.data.synth import write_synthetic_dataset

SECTION = "## Data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--per-class", type=int, default=40, help="sketches and photos per class")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--synth-workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batches", type=int, default=20, help="training batches to stream")
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
        n_rows = manifest["num_rows"]
        print(f"prepare: {n_rows} images in {prep_s:.1f} s, {n_rows / prep_s:.0f} images/s")

        prepared = str(work / "prepared")
        spec = BatchSpec(classes_per_batch=8, items_per_class=4)
        transform = ImageTransform(kind="zse", size=args.image_size)
        t0 = time.perf_counter()
        meta = training_metadata(prepared)
        ds = epoch_batches(prepared, spec, transform, args.batches, seed=0, epoch=0, metadata=meta)
        streamed = sum(int(batch["sketch"].shape[0]) + int(batch["photo"].shape[0]) for batch in iter_epoch(ds))
        stream_s = time.perf_counter() - t0
        print(f"stream: {streamed} images, {stream_s:.1f} s, {streamed / stream_s:.0f} images/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if args.write:
        synth_table = "\n".join(f"| {w} | {s:.1f} | {r:.0f} |" for w, s, r in synth_rows)
        body = f"""Measured {dt.date.today()} on the project machine with `bench/bench_data.py`: {machine_line()}.
Dataset: {args.classes} classes x {args.per_class} sketches + {args.per_class} photos at {args.image_size} px
({images:,} images) from the built-in synthetic generator.

`sbir data synth` (output is byte-identical whatever the worker count):

| worker processes | wall time (s) | images/s |
|---:|---:|---:|
{synth_table}

`sbir data prepare` with Ray Data on a local 2-CPU cluster (decode check + Parquet shards + manifest):
**{n_rows / prep_s:.0f} images/s** ({n_rows:,} images in {prep_s:.1f} s, cluster start excluded).

Training stream (`epoch_batches`, P x K = {spec.classes_per_batch} x {spec.items_per_class} per modality,
ZSE-SBIR transform at {args.image_size} px, decode + resize + normalise, one consumer):
**{streamed / stream_s:.0f} images/s** ({args.batches} batches, {streamed} images in {stream_s:.1f} s, first-batch
latency included). An epoch reads every shard once and shuffles the planned rows whatever its batch
count, and each Ray Data execution has a few seconds of fixed start-up, so this rate grows with the
number of batches per epoch; it is the figure to beat before training at 224 px is input-bound.
"""
        write_section(args.write, SECTION, body)
        print(f"wrote the '{SECTION}' section of {args.write}")


if __name__ == "__main__":
    main()
