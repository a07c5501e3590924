"""Benchmark the retrieval endpoint: latency and throughput over HTTP vs the in-process floor, batching on
and off, and the gallery build on Ray Data vs a plain single-process loop. All in one run, side by side.

Uses the ZSE-SBIR champion of ``make demo`` (``models:/sbir-zse-synthetic@champion`` in ``demo_out/runs``)
and the demo's prepared dataset; writes the ``## Serving`` section of a Markdown file.

    .venv/bin/python bench/bench_serve.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import torch
from report import machine_line, write_section

SECTION = "## Serving"
PRESET = "synthetic_zse"


@dataclass
class Load:
    batching: str
    clients: int
    requests: int
    p50_ms: float
    p99_ms: float
    per_s: float
    mean_batch: float
    errors: int
    server_ms: float = 0.0  # mean decode + encode + search + re-rank as the server timed them


def prepared_table(prepared: str, columns: list[str]):
    """The prepared shards of a local prepared dataset as one Arrow table."""
    import pyarrow.dataset as pads

    from pipelines.prepare import read_manifest

    return pads.dataset(str(Path(prepared) / read_manifest(prepared).data_dir), format="parquet").to_table(columns)


def sketches_of(prepared: str, role: str, limit: int) -> list[bytes]:
    """Encoded sketch images of a prepared role (what a client would upload)."""
    import pyarrow.compute as pc

    table = prepared_table(prepared, ["image", "role", "modality", "path"])
    mask = pc.and_(pc.equal(table["role"], role), pc.equal(table["modality"], "sketch"))
    rows = table.filter(mask).sort_by("path")
    return [bytes(b) for b in rows["image"].to_pylist()[:limit]]


def run_clients(url: str, sketches: list[bytes], clients: int, per_client: int, mode: str) -> Load:
    latencies: list[float] = []
    batches: list[int] = []
    server: list[float] = []
    errors = 0

    def client(n: int) -> None:
        nonlocal errors
        with httpx.Client(timeout=300) as http:
            for i in range(per_client):
                data = sketches[(n * per_client + i) % len(sketches)]
                started = time.perf_counter()
                r = http.post(f"{url}/v1/search", files={"sketch": ("s.png", data)}, data={"k": "10", "mode": mode})
                latencies.append(time.perf_counter() - started)
                if r.status_code != 200:
                    errors += 1
                else:
                    batches.append(r.json()["encoder_batch"])
                    server.append(r.json()["timings"]["total"])

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - started
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    n = clients * per_client
    mean_batch = float(np.mean(batches)) if batches else 0.0
    return Load("", clients, n, p50, p99, n / wall, mean_batch, errors, float(np.mean(server)) * 1000 if server else 0)


def in_process_floor(checkpoint: Path, gallery_dir: str, sketches: list[bytes], mode: str, repeat: int) -> float:
    """p50 seconds of decode + encode + search for one sketch without Serve or HTTP (same code paths)."""
    from PIL import Image

    from sbir.config import ServeConfig
    from sbir.inference.encoder import Encoder
    from serve.requests import decode_image

    encoder = Encoder.from_checkpoint(checkpoint, device="cpu")
    gallery = encoder.open_gallery(gallery_dir)
    limits = ServeConfig()
    times = []
    for i in range(repeat):
        data = sketches[i % len(sketches)]
        started = time.perf_counter()
        image = Image.fromarray(decode_image(data, limits))
        encoding = encoder.encode_images([image], "sketch")
        gallery.search(encoding, 10, mode, rerank_k=limits.rerank_k)
        times.append(time.perf_counter() - started)
    return statistics.median(times[2:])  # the first calls pay one-off set-up


def plain_build(checkpoint: Path, prepared: str, batch_size: int) -> tuple[int, float]:
    """Encode every photo of the prepared dataset in one process with the same Encoder (images/s floor)."""
    import pyarrow.compute as pc

    from sbir.inference.encoder import Encoder

    started = time.perf_counter()
    table = prepared_table(prepared, ["image", "modality"])
    photos = [bytes(b) for b in table.filter(pc.equal(table["modality"], "photo"))["image"].to_pylist()]
    encoder = Encoder.from_checkpoint(checkpoint, device="cpu")
    for start in range(0, len(photos), batch_size):
        encoder.encode_bytes(photos[start : start + batch_size], "photo")
    return len(photos), time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, default=Path("demo_out/runs"), help="the demo's run dir (MLflow store)")
    ap.add_argument("--prepared", default="demo_out/prepared")
    ap.add_argument("--model", default="models:/sbir-zse-synthetic@champion")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--per-client", type=int, default=12, help="requests each client sends")
    ap.add_argument("--mode", default="ret", help="search mode for the latency runs")
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="encoder actors of the gallery builds")
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from pipelines.gallery import build_gallery
    from pipelines.ray_runtime import ensure_ray
    from pipelines.tracking import resolve_reference
    from sbir.config import load_config
    from serve.launch import start_endpoint, stop_endpoint

    tracking = f"sqlite:///{args.runs.resolve() / 'mlflow.db'}"
    resolved = resolve_reference(args.model, tracking)
    config = load_config(PRESET, [f"data.prepared={args.prepared}"])
    ensure_ray()
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    work = Path(tempfile.mkdtemp(prefix="sbir-bench-serve-"))
    try:
        n_plain, plain_s = plain_build(resolved.directory, args.prepared, config.eval.batch_size)
        print(f"plain loop: {n_plain} photos in {plain_s:.1f} s ({n_plain / plain_s:.0f} images/s)")
        builds = {}
        for actors in args.actors:
            cfg = load_config(PRESET, [f"data.prepared={args.prepared}", f"eval.num_workers={actors}"])
            out = work / f"all-{actors}"
            builds[actors] = build_gallery(
                resolved, str(out), cfg, prepared=args.prepared, roles=("train", "val", "test")
            )
            print(f"Ray Data, {actors} actor(s): {builds[actors].images_per_second:.0f} images/s")
            shutil.rmtree(out, ignore_errors=True)
        gallery = work / "test"
        build_gallery(resolved, str(gallery), config, prepared=args.prepared, roles=("test",))
        sketches = sketches_of(args.prepared, "test", 64)

        floor = {
            mode: in_process_floor(resolved.directory, str(gallery), sketches, mode, 30)
            for mode in ("ret", "rn_rerank")
        }
        print("in-process floor: " + ", ".join(f"{m} {s * 1000:.1f} ms" for m, s in floor.items()))
        loads: list[Load] = []
        single: dict[str, float] = {}
        for label, batch, wait in (("on", 16, 0.01), ("off", 1, 0.0)):
            overrides = [f"serve.max_batch_size={batch}", f"serve.batch_wait_timeout_s={wait}", f"run.dir={args.runs}"]
            endpoint_args = {
                "config": PRESET,
                "model": args.model,
                "gallery": str(gallery),
                "tracking_uri": tracking,
                "overrides": overrides,
            }
            endpoint = start_endpoint(load_config(PRESET, overrides), endpoint_args)
            try:
                run_clients(endpoint.url, sketches, 2, 4, args.mode)  # warm-up
                for mode in ("ret", "rn_rerank"):
                    if label == "on":
                        single[mode] = run_clients(endpoint.url, sketches, 1, 30, mode).p50_ms / 1000
                for clients in args.clients:
                    result = run_clients(endpoint.url, sketches, clients, args.per_client, args.mode)
                    result.batching = label
                    loads.append(result)
                    print(
                        f"batching {label:3s} {clients:2d} clients: p50 {result.p50_ms:.1f} ms "
                        f"p99 {result.p99_ms:.1f} ms "
                        f"{result.per_s:.1f} req/s mean batch {result.mean_batch:.1f} errors {result.errors}"
                    )
            finally:
                stop_endpoint()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    body = report(args, loads, floor, single, n_plain, plain_s, builds)
    print(body)
    if args.write:
        write_section(args.write, SECTION, body)
        print(f"wrote the '{SECTION}' section of {args.write}")


def report(args, loads: list[Load], floor, single, n_plain: int, plain_s: float, builds) -> str:
    table = "\n".join(
        f"| {r.batching} | {r.clients} | {r.requests} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.per_s:.1f} | "
        f"{r.mean_batch:.1f} | {r.server_ms:.1f} | {r.errors} |"
        for r in loads
    )
    by = {(r.batching, r.clients): r for r in loads}
    top = max(args.clients)
    gain = by[("on", top)].per_s / by[("off", top)].per_s
    floor_rows = "\n".join(
        f"| `{m}` | {floor[m] * 1000:.1f} | {single[m] * 1000:.1f} | {single[m] / floor[m]:.2f}x |" for m in floor
    )
    plain_rate = n_plain / plain_s
    build_rows = "\n".join(
        f"| Ray Data, {a} actor(s) | {b.photos} | {b.seconds:.1f} | {b.images_per_second:.0f} | "
        f"{b.images_per_second / plain_rate:.2f}x |"
        for a, b in builds.items()
    )
    return f"""Measured {dt.date.today()} on the project machine with `bench/bench_serve.py`: {machine_line()},
torch {torch.__version__}. Model: the ZSE-SBIR champion of `make demo` (`{args.model}`, tiny, 64 px); gallery: the
demo's unseen-class photos; queries: its unseen-class sketch PNGs sent as multipart uploads over loopback HTTP
(k = 10). Every deployment has one replica (the config defaults). One run, all rows side by side.

**Latency and throughput** (`mode={args.mode}`), `{args.per_client}` requests per client; *mean batch* is the
number of sketches the encoder encoded together, and *server stages* the mean of decode + encode + search
(+ re-rank) as the server timed them; the rest of the latency is HTTP, the Serve proxy and the hops
between deployments. Batching on: `serve.max_batch_size=16`,
`serve.batch_wait_timeout_s=0.01`; off: `max_batch_size=1`.

| batching | clients | requests | p50 (ms) | p99 (ms) | requests/s | mean batch | server stages (ms) | errors |
|---|---:|---:|---:|---:|---:|---:|---:|---:|
{table}

Batching at {top} clients gives {gain:.2f}x the throughput of batching off (goal: at least 3x).

**One client against the in-process floor** (decode + encode + search in one process, the same functions,
no Serve, no HTTP; p50 of 30 requests):

| mode | in-process (ms) | endpoint, 1 client (ms) | ratio (goal ≤ 1.25x) |
|---|---:|---:|---:|
{floor_rows}

**Gallery build** of all {n_plain} photos of the demo dataset: `sbir index build`'s Ray Data batch inference
(`eval.num_workers` actors of 1 torch thread each, including writing the gallery) against a plain
single-process loop over the same photos with the same `Encoder` (goal ≥ 0.9x):

| how | photos | seconds | images/s | vs plain loop |
|---|---:|---:|---:|---:|
| plain loop (torch default threads) | {n_plain} | {plain_s:.1f} | {plain_rate:.0f} | 1.00x |
{build_rows}
"""


if __name__ == "__main__":
    main()
