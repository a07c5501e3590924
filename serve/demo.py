"""The main job's serving half: serve the ZSE-SBIR champion that ``pipelines.demo`` trained.

Build the unseen-class gallery of the champion with Ray Data, start the Ray Serve endpoint, send a few
unseen sketches through its HTTP API, print their top-5 and shut it down.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable
from pathlib import Path

from pipelines.demo import DEMO_PRESETS, SERVED_METHOD, DemoRun
from sbir.config import load_config
from sbir.data.records import DatasetSplit, ImageRecord

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


def serve_champion(run: DemoRun, echo: Callable[[str], None]) -> None:
    """Gallery build for the champion, the endpoint, a few unseen sketches through HTTP, shut down."""
    from pipelines.gallery import build_gallery
    from pipelines.tracking import resolve_reference
    from sbir.client import Client
    from serve.launch import start_endpoint, stop_endpoint

    step, outcome = run.next_step, run.served
    if outcome.registered is None:
        echo(f"{step}. nothing registered, nothing to serve")
        return
    reference = f"models:/{outcome.registered.split('/')[1]}@champion"
    preset = DEMO_PRESETS[SERVED_METHOD]
    resolved = resolve_reference(reference, outcome.tracking_uri)
    config = load_config(preset, [f"data.prepared={run.prepared}", f"run.dir={run.out / 'runs'}"])
    gallery_dir = run.out / "galleries" / f"{SERVED_METHOD}-v{resolved.version}"
    shutil.rmtree(gallery_dir, ignore_errors=True)
    echo(f"{step}. building the unseen-class gallery of {reference} (v{resolved.version}) with Ray Data ...")
    build = build_gallery(
        resolved, str(gallery_dir), config, prepared=run.prepared, roles=("test",), echo=lambda line: echo(f"   {line}")
    )
    port = free_or_default_port(config.serve.port)
    args = {
        "config": preset,
        "model": reference,
        "gallery": str(gallery_dir),
        "tracking_uri": outcome.tracking_uri,
        "overrides": [f"run.dir={run.out / 'runs'}", f"serve.port={port}"],
    }
    echo(f"{step + 1}. serving {reference} ({build.photos} photos) on Ray Serve ...")
    endpoint = start_endpoint(load_config(preset, args["overrides"]), args)
    try:
        echo(f"   endpoint: {endpoint.url}  (API docs {endpoint.url}/docs)")
        with Client(endpoint.url) as client:
            for record in _one_sketch_per_class(run.split, QUERIES):
                answer = client.search(Path(run.split.root) / record.path, k=5)
                classes = [hit.class_name or "?" for hit in answer.hits]
                hits = sum(c == record.class_name for c in classes)
                echo(
                    f"   sketch of {record.class_name:<18} top-5: {', '.join(classes)}  "
                    f"({hits}/5 right, {answer.timings.get('total', 0) * 1000:.0f} ms)"
                )
    finally:
        stop_endpoint()
    echo(f"   endpoint stopped; `make serve` serves {reference} until Ctrl-C")


def _one_sketch_per_class(split: DatasetSplit, count: int) -> list[ImageRecord]:
    """The first unseen-class sketch of each of `count` test classes."""
    chosen: dict[str, ImageRecord] = {}
    for record in split.records:
        if record.role == "test" and record.modality == "sketch" and record.class_name not in chosen:
            chosen[record.class_name] = record
    return list(chosen.values())[:count]
