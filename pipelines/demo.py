"""The main job, end to end on the built-in synthetic dataset (no downloads).

Synthesise a dataset, prepare Parquet shards with Ray Data, train tiny ZSE-SBIR and CLIP-AT models on
2 Ray Train workers, evaluate untrained and trained models on the unseen classes, log and register in
MLflow, and print an untrained-vs-trained table with the paths of the reports and the MLflow store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import ray

from pipelines.prepare import prepare_dataset
from pipelines.ray_runtime import ensure_ray
from pipelines.train import TrainOutcome, run_training
from sbir.config import load_config
from sbir.data.readers import read_split
from sbir.data.synth import write_synthetic_dataset

DEMO_DATA = {
    "num_classes": 60,
    "sketches_per_class": 8,
    "photos_per_class": 30,  # unseen gallery 12 x 30 = 360 photos, so P@100 can tell rankings apart
    "image_size": 64,
    "unseen_fraction": 0.2,
}
DEMO_MODELS = {
    "zse": ("synthetic_zse", "rn_rerank"),
    "clip_at": ("synthetic_clip_at", "ret"),
}


def run_demo(out: Path, seed: int = 0, echo: Callable[[str], None] = print) -> dict[str, TrainOutcome]:
    """Run the main job into `out` and return the training outcome per method."""
    started = time.perf_counter()
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    synth = write_synthetic_dataset(out / "data", seed=seed, progress=False, workers=2, **DEMO_DATA)
    echo(f"1. synthetic dataset: {synth.dataset_root} (contact sheet {synth.contact_sheet})")
    split = read_split("synthetic", out / "data", "zeroshot1")
    ensure_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False  # the demo prints its own steps
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    prepared = str(out / "prepared")
    manifest = prepare_dataset(split, prepared, source=f"synthetic:{out / 'data'}")
    echo(f"2. prepared {manifest.num_rows} images into Parquet shards: {prepared}")

    outcomes: dict[str, TrainOutcome] = {}
    for step, (method, (preset, _)) in enumerate(DEMO_MODELS.items(), start=3):
        config = load_config(
            preset,
            [
                f"data.root={out / 'data'}",
                f"data.prepared={prepared}",
                f"run.dir={out / 'runs'}",
                f"run.name={method}-demo-{time.strftime('%Y%m%d-%H%M%S')}",
                "train.baseline=true",
                f"train.seed={2021 + seed}",
            ],
        )
        echo(f"{step}. training {method} on {config.train.num_workers} Ray Train workers ...")
        outcomes[method] = run_training(config, echo=lambda line: echo(f"   {line}"))
        echo(f"   report: {outcomes[method].report}")

    echo(f"\nunseen-class retrieval on the synthetic dataset ({len(split.test_classes)} unseen classes):")
    echo(comparison_table(outcomes))
    first = next(iter(outcomes.values()))
    echo(f"\nMLflow store: {first.tracking_uri}  (mlflow ui --backend-store-uri {first.tracking_uri})")
    for method, outcome in outcomes.items():
        echo(f"{method}: registered {outcome.registered}; best checkpoint {outcome.best_checkpoint}")
    echo(f"total time: {time.perf_counter() - started:.0f} s")
    return outcomes


def comparison_table(outcomes: dict[str, TrainOutcome]) -> str:
    """Markdown table: untrained vs trained mAP@all and P@100 on the unseen classes, per model."""
    lines = [
        "| model (mode) | mAP@all untrained | mAP@all trained | P@100 untrained | P@100 trained |",
        "|---|---:|---:|---:|---:|",
    ]
    for method, outcome in outcomes.items():
        mode = DEMO_MODELS[method][1]
        before, after = outcome.baseline_metrics[mode], outcome.test_metrics[mode]
        lines.append(
            f"| {method} ({mode}) | {before['map_all_voc']:.4f} | {after['map_all_voc']:.4f} | "
            f"{before['p_100']:.4f} | {after['p_100']:.4f} |"
        )
    return "\n".join(lines)
