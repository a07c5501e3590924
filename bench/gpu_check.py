"""GPU check (`make gpu-check`): the whole pipeline at base size on every visible GPU, with figures to a JSON file.

For each method it trains the paper's base model (random weights: nothing is downloaded) on synthetic
224 px data with AMP (bf16 where the GPU has it, else fp16) over NCCL on all visible GPUs, evaluates the best
checkpoint on the unseen classes, builds the gallery and serves one query through Ray Serve. It prints and
writes images/s per GPU, peak GPU memory per worker, and the evaluation, gallery and query latencies, so the
figures can go into docs/benchmarks.md. On a machine without CUDA it says so and exits with 1.

``--cpu-smoke`` runs the same steps with the tiny synthetic presets on the CPU for a few steps: it checks the
script's wiring (a test runs it), and its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

# Base-size models per method: the sketchy25 presets with the synthetic data and no downloaded weights.
METHODS = {
    "zse": ("zse_sketchy25", ["train.val_from_epoch=1", "eval.modes=[ret,rn_rerank]"]),
    "clip_at": ("clip_at_sketchy25", ["model.clip_at.pretrained=null", "train.val_every=1"]),
}
PER_GPU_BATCH = {"zse": 15, "clip_at": 64}  # the papers' batches, kept per GPU
DATA = {"num_classes": 40, "sketches_per_class": 24, "photos_per_class": 24, "image_size": 224}
SMOKE_PRESETS = {"zse": "synthetic_zse", "clip_at": "synthetic_clip_at"}
SMOKE_DATA = {"num_classes": 12, "sketches_per_class": 6, "photos_per_class": 6, "image_size": 64}
QUERIES = 11  # one warm-up, then the timed ones


@dataclass
class MethodFigures:
    method: str
    gpus: int
    precision: str
    steps: int
    train_seconds: float
    images_per_second_per_gpu: float
    peak_gpu_memory_mb: float | None
    eval_seconds: float
    gallery_images_per_second: float
    query_p50_ms: float
    test_metrics: dict[str, dict[str, float]] = field(default_factory=dict)


def require_gpus() -> int:
    """The visible CUDA GPUs, or exit with a message saying what is missing."""
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        print(
            "gpu-check: no CUDA GPU is visible (torch.cuda.is_available() is False). Run it on a machine with "
            "NVIDIA GPUs, their driver and a CUDA build of torch; nothing was run.",
            file=sys.stderr,
        )
        raise SystemExit(1)
    return torch.cuda.device_count()


def precision_for_gpus() -> str:
    return "amp_bf16" if torch.cuda.is_bf16_supported() else "amp_fp16"


def method_overrides(method: str, gpus: int, precision: str, steps: int, work: Path) -> list[str]:
    """The overrides that turn a sketchy25 preset into the check's run on `gpus` GPUs."""
    _, extra = METHODS[method]
    epochs = 2
    return [
        *_paths(work, f"{method}-gpu-check"),
        "train.use_gpu=true",
        "train.backend=nccl",
        f"train.precision={precision}",
        f"train.num_workers={gpus}",
        f"train.batch_size={PER_GPU_BATCH[method] * gpus}",
        f"train.epochs={epochs}",
        f"train.steps_per_epoch={max(1, steps // epochs)}",
        "train.eval_at_end=false",
        "tracking.register_model=false",
        "eval.device=cuda",
        f"eval.num_workers={gpus}",
        "eval.gpus_per_worker=1",
        *extra,
    ]


def smoke_overrides(steps: int, work: Path) -> list[str]:
    """The tiny presets on the CPU for `steps` steps: the check's wiring, nothing measured."""
    return [
        *_paths(work, "smoke"),
        "data.val_fraction=0.3",
        "train.epochs=1",
        f"train.steps_per_epoch={steps}",
        "train.eval_at_end=false",
        "tracking.register_model=false",
        "eval.device=cpu",
    ]


def _paths(work: Path, name: str) -> list[str]:
    return [
        f"data.root={work / 'data'}",
        "data.layout=synthetic",
        "data.split=zeroshot1",
        f"data.prepared={work / 'prepared'}",
        f"run.dir={work / 'runs'}",
        f"run.name={name}",
    ]


def query_latency_ms(config, checkpoint: Path, gallery: Path, sketch: Path, overrides: list[str], preset: str) -> float:
    from sbir.client import Client
    from serve.launch import start_endpoint, stop_endpoint

    args = {"config": preset, "model": str(checkpoint), "gallery": str(gallery), "overrides": overrides}
    endpoint = start_endpoint(config, args)
    try:
        timings = []
        with Client(endpoint.url) as client:
            for _ in range(QUERIES):
                started = time.perf_counter()
                client.search(sketch, k=10)
                timings.append(time.perf_counter() - started)
        return statistics.median(timings[1:]) * 1000
    finally:
        stop_endpoint()


def check_method(method: str, preset: str, overrides: list[str], gpus: int, work: Path, sketch: Path) -> MethodFigures:
    """Train, evaluate, index and serve one method; the figures of each step."""
    from pipelines.evaluate import evaluate_checkpoint
    from pipelines.gallery import build_gallery
    from pipelines.tracking import resolve_reference
    from pipelines.train import run_training
    from sbir.config import load_config

    config = load_config(preset, overrides)
    started = time.perf_counter()
    outcome = run_training(config, echo=lambda line: print(f"   {line}"))
    train_seconds = time.perf_counter() - started
    last = outcome.history[-1]
    started = time.perf_counter()
    result = evaluate_checkpoint(outcome.best_checkpoint, str(work / "prepared"), out_dir=work / f"eval-{method}")
    eval_seconds = time.perf_counter() - started
    gallery_dir = work / f"gallery-{method}"
    resolved = resolve_reference(str(outcome.best_checkpoint), None, runs_dir=str(work / "runs"))
    build = build_gallery(resolved, str(gallery_dir), config, prepared=str(work / "prepared"), roles=("test",))
    query_ms = query_latency_ms(config, outcome.best_checkpoint, gallery_dir, sketch, overrides, preset)
    return MethodFigures(
        method=method,
        gpus=gpus,
        precision=config.train.precision,
        steps=config.train.epochs * config.train.steps_per_epoch,
        train_seconds=round(train_seconds, 1),
        images_per_second_per_gpu=round(float(last["samples_per_s"]), 1),
        peak_gpu_memory_mb=last.get("gpu_peak_memory_mb"),
        eval_seconds=round(eval_seconds, 1),
        gallery_images_per_second=round(build.images_per_second, 1),
        query_p50_ms=round(query_ms, 1),
        test_metrics=result.metrics,
    )


def _plan(methods: list[str], smoke: bool, steps: int, work: Path) -> tuple[int, str, dict[str, tuple[str, list[str]]]]:
    """GPUs, a description of them, and each method's preset and overrides."""
    if smoke:
        return 0, "CPU smoke run", {m: (SMOKE_PRESETS[m], smoke_overrides(steps, work)) for m in methods}
    gpus = require_gpus()
    precision = precision_for_gpus()
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(gpus))
    plan = {m: (METHODS[m][0], method_overrides(m, gpus, precision, steps, work)) for m in methods}
    return gpus, f"{gpus} GPU(s) ({names}), {precision}", plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check.json"), help="JSON file of the figures")
    parser.add_argument("--steps", type=int, default=300, help="training steps per method")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated: zse, clip_at")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny models on the CPU: check the wiring only")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    work = Path(tempfile.gettempdir()) / f"sbir-gpu-check-{os.getpid()}"
    gpus, devices, plan = _plan(methods, args.cpu_smoke, args.steps, work)  # exits here without a GPU
    work.mkdir(parents=True)
    logging.basicConfig(level=logging.WARNING)
    from pipelines.prepare import prepare_dataset
    from pipelines.ray_runtime import ensure_ray
    from sbir.config import load_config
    from sbir.data.readers import read_split
    from sbir.data.synth import write_synthetic_dataset

    started = time.perf_counter()
    print(f"gpu-check: {devices}, {args.steps} steps per method")
    data = SMOKE_DATA | {"unseen_fraction": 0.25} if args.cpu_smoke else DATA
    write_synthetic_dataset(work / "data", seed=0, progress=False, workers=2, **data)
    first_preset, first_overrides = next(iter(plan.values()))
    val_fraction = load_config(first_preset, first_overrides).data.val_fraction  # the roles the shards carry
    split = read_split("synthetic", work / "data", "zeroshot1", val_fraction=val_fraction)
    ensure_ray()
    prepare_dataset(split, str(work / "prepared"), source=f"synthetic:{work / 'data'}")
    sketch = next(Path(split.root) / r.path for r in split.records if r.modality == "sketch" and r.role == "test")
    figures = []
    for method, (preset, overrides) in plan.items():
        print(f"{method}: training, evaluating, indexing and serving ...")
        figures.append(check_method(method, preset, overrides, gpus, work, sketch))
        print(f"{method}: {json.dumps({k: v for k, v in asdict(figures[-1]).items() if k != 'test_metrics'})}")
    report = {
        "devices": devices,
        "gpus": gpus,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "methods": [asdict(f) for f in figures],
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"gpu-check: done in {report['wall_seconds']} s; figures in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
