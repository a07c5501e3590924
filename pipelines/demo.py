"""The main job, end to end on the built-in synthetic dataset (no downloads).

Synthesise a dataset, prepare Parquet shards with Ray Data, train tiny ZSE-SBIR and CLIP-AT models on
2 Ray Train workers, evaluate untrained and trained models on the unseen classes, log and register in
MLflow, and print an untrained-vs-trained table with the paths of the reports and the MLflow store.
Then serve what it trained: build the unseen-class gallery of the ZSE-SBIR champion, start the Ray Serve
endpoint, send unseen sketches through its HTTP API, print their top-5 and shut it down.
"""

from __future__ import annotations

import logging
import shutil
import socket
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
    serve_champion(outcomes[SERVED_METHOD], split, prepared, out, step=len(DEMO_MODELS) + 3, echo=echo)
    echo(f"total time: {time.perf_counter() - started:.0f} s")
    return outcomes


SERVED_METHOD = "zse"
QUERIES = 5


def free_or_default_port(port: int) -> int:
    """`port` when nothing listens on it, else a free one (a demo must not fail on a busy 8000)."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return port
        except OSError:
            pass
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_champion(
    outcome: TrainOutcome, split, prepared: str, out: Path, step: int, echo: Callable[[str], None]
) -> None:
    """Gallery build for the champion, the endpoint, a few unseen sketches through HTTP, shut down."""
    from pipelines.index import build_gallery
    from pipelines.tracking import resolve_reference
    from sbir.client import Client
    from serve.launch import start_endpoint, stop_endpoint

    if outcome.registered is None:
        echo(f"{step}. nothing registered, nothing to serve")
        return
    reference = f"models:/{outcome.registered.split('/')[1]}@champion"
    preset = DEMO_MODELS[SERVED_METHOD][0]
    resolved = resolve_reference(reference, outcome.tracking_uri)
    config = load_config(preset, [f"data.prepared={prepared}", f"run.dir={out / 'runs'}"])
    gallery_dir = out / "galleries" / f"{SERVED_METHOD}-v{resolved.version}"
    shutil.rmtree(gallery_dir, ignore_errors=True)
    echo(f"{step}. building the unseen-class gallery of {reference} (v{resolved.version}) with Ray Data ...")
    build = build_gallery(
        resolved, str(gallery_dir), config, prepared=prepared, roles=("test",), echo=lambda line: echo(f"   {line}")
    )
    port = free_or_default_port(config.serve.port)
    args = {
        "config": preset,
        "model": reference,
        "gallery": str(gallery_dir),
        "tracking_uri": outcome.tracking_uri,
        "overrides": [f"run.dir={out / 'runs'}", f"serve.port={port}"],
    }
    echo(f"{step + 1}. serving {reference} ({build.photos} photos) on Ray Serve ...")
    endpoint = start_endpoint(load_config(preset, args["overrides"]), args)
    try:
        echo(f"   endpoint: {endpoint.url}  (API docs {endpoint.url}/docs)")
        with Client(endpoint.url) as client:
            for record in _one_sketch_per_class(split, QUERIES):
                answer = client.search(Path(split.root) / record.path, k=5)
                classes = [hit.class_name or "?" for hit in answer.hits]
                hits = sum(c == record.class_name for c in classes)
                echo(
                    f"   sketch of {record.class_name:<18} top-5: {', '.join(classes)}  "
                    f"({hits}/5 right, {answer.timings.get('total', 0) * 1000:.0f} ms)"
                )
    finally:
        stop_endpoint()
    echo(f"   endpoint stopped; `make serve` serves {reference} until Ctrl-C")


def _one_sketch_per_class(split, count: int) -> list:
    """The first unseen-class sketch of each of `count` test classes."""
    chosen: dict[str, object] = {}
    for record in split.records:
        if record.role == "test" and record.modality == "sketch" and record.class_name not in chosen:
            chosen[record.class_name] = record
    return list(chosen.values())[:count]


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
