"""The main job's training half, end to end on the built-in synthetic dataset (no downloads).

Synthesise a dataset, prepare Parquet shards with Ray Data, train tiny ZSE-SBIR and CLIP-AT models on
2 Ray Train workers, evaluate untrained and trained models on the unseen classes, log and register in
MLflow, and print an untrained-vs-trained table with the paths of the reports and the MLflow store.
Serving what it trained is ``serve.demo``'s half; ``sbir demo`` runs both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray

from pipelines.prepare import prepare_dataset
from pipelines.ray_runtime import ensure_ray
from pipelines.train import TrainOutcome, run_training
from sbir.config import load_config
from sbir.data.readers import read_split
from sbir.data.records import DatasetSplit
from sbir.data.synth import write_synthetic_dataset
from sbir.methods import family_of

DEMO_DATA = {
    "num_classes": 60,
    "sketches_per_class": 8,
    "photos_per_class": 30,  # unseen gallery 12 x 30 = 360 photos, so P@100 can tell rankings apart
    "image_size": 64,
    "unseen_fraction": 0.2,
}
DEMO_PRESETS = {"zse": "synthetic_zse", "clip_at": "synthetic_clip_at"}
SERVED_METHOD = "zse"  # the method whose champion the demo then serves


@dataclass(frozen=True)
class DemoRun:
    """What the training half left for the serving half."""

    out: Path
    split: DatasetSplit
    prepared: str
    outcomes: dict[str, TrainOutcome]
    next_step: int  # the number of the demo's next printed step

    @property
    def served(self) -> TrainOutcome:
        return self.outcomes[SERVED_METHOD]


def run_demo(out: Path, seed: int = 0, echo: Callable[[str], None] = print) -> DemoRun:
    """Run the main job's training half into `out`."""
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
    for step, (method, preset) in enumerate(DEMO_PRESETS.items(), start=3):
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
    return DemoRun(out, split, prepared, outcomes, next_step=len(DEMO_PRESETS) + 3)


def comparison_table(outcomes: dict[str, TrainOutcome]) -> str:
    """Markdown table: untrained vs trained mAP@all and P@100 on the unseen classes, per model."""
    lines = [
        "| model (mode) | mAP@all untrained | mAP@all trained | P@100 untrained | P@100 trained |",
        "|---|---:|---:|---:|---:|",
    ]
    for method, outcome in outcomes.items():
        mode = family_of(load_config(DEMO_PRESETS[method])).default_mode
        before, after = outcome.baseline_metrics[mode], outcome.test_metrics[mode]
        lines.append(
            f"| {method} ({mode}) | {before['map_all_voc']:.4f} | {after['map_all_voc']:.4f} | "
            f"{before['p_100']:.4f} | {after['p_100']:.4f} |"
        )
    return "\n".join(lines)
