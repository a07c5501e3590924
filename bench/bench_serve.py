"""Benchmark the retrieval endpoint against its in-process floor and bound, and the gallery build on Ray Data
against a plain single-process build: all in one run, side by side, as ratios.

Uses the ZSE-SBIR champion of ``make demo`` (``models:/sbir-zse-synthetic@champion`` in ``demo_out/runs``) and
the demo's prepared dataset; writes the ``## Serving`` section of a Markdown file.

    .venv/bin/python bench/bench_serve.py --write docs/benchmarks.md

* floor: decode + encode + search of one sketch in this process, the functions the endpoint calls, with the
  endpoint's compute threads; bound: the same work on batches of 16 (requests/s).
* endpoint: HTTP clients on loopback (asyncio + aiohttp in this process, so they share the machine too).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from report import machine_line, write_section

SECTION = "## Serving"
PRESET = "synthetic_zse"
BATCH = 16


@dataclass
class Load:
    topology: str
    mode: str
    clients: int
    requests: int
    p50_ms: float
    p99_ms: float
    per_s: float
    mean_batch: float
    mean_rerank_batch: float
    errors: int
    busy: float = 0.0  # share of the machine's CPU time busy during the run (all processes)
    client_busy: float = 0.0  # share of it spent by the benchmark's own client process


def prepared_table(prepared: str, columns: list[str]):
    """The prepared shards of a local prepared dataset as one Arrow table."""
    import pyarrow.dataset as pads

    from pipelines.prepare import read_manifest

    return pads.dataset(str(Path(prepared) / read_manifest(prepared).data_dir), format="parquet").to_table(columns)


def images_of(prepared: str, modality: str, role: str | None = None, limit: int | None = None) -> list[bytes]:
    """Encoded images of a prepared dataset (what a client would upload), in path order."""
    import pyarrow.compute as pc

    table = prepared_table(prepared, ["image", "role", "modality", "path"])
    mask = pc.equal(table["modality"], modality)
    if role is not None:
        mask = pc.and_(mask, pc.equal(table["role"], role))
    rows = table.filter(mask).sort_by("path")
    return [bytes(b) for b in rows["image"].to_pylist()[:limit]]


# --------------------------------------------------------------------------- in-process floor and bound
def in_process(checkpoint: Path, gallery_dir: str, sketches: list[bytes], threads: int, rerank_k: int) -> dict:
    """Floor (p50 s of one sketch) and bound (requests/s in batches of 16) per mode, the endpoint's functions."""
    from PIL import Image

    from sbir.config import ServeConfig
    from sbir.inference.encoder import Encoder
    from serve.requests import decode_image

    torch.set_num_threads(threads)
    encoder = Encoder.from_checkpoint(checkpoint, device="cpu")
    gallery = encoder.open_gallery(gallery_dir)
    limits = ServeConfig()

    def work(batch: list[bytes], mode: str) -> None:
        images = [Image.fromarray(decode_image(data, limits)) for data in batch]
        gallery.search(encoder.encode_images(images, "sketch"), 10, mode, rerank_k=rerank_k)

    out = {}
    for mode in encoder.family.served_modes:
        work(sketches[:2], mode)
        single = []
        for i in range(30):
            started = time.perf_counter()
            work([sketches[i % len(sketches)]], mode)
            single.append(time.perf_counter() - started)
        batches = []
        for i in range(6):
            started = time.perf_counter()
            work([sketches[(i * BATCH + j) % len(sketches)] for j in range(BATCH)], mode)
            batches.append(time.perf_counter() - started)
        out[mode] = {"floor_s": statistics.median(single), "bound_per_s": BATCH / statistics.median(batches)}
    torch.set_num_threads(os.cpu_count() or 1)
    return out


# --------------------------------------------------------------------------- HTTP load
async def _clients(url: str, sketches: list[bytes], clients: int, per_client: int, mode: str) -> Load:
    import aiohttp

    latencies: list[float] = []
    batches: list[int] = []
    rerank_batches: list[int] = []
    errors = 0

    async def client(n: int, session: aiohttp.ClientSession) -> None:
        nonlocal errors
        for i in range(per_client):
            form = aiohttp.FormData()
            form.add_field("sketch", sketches[(n * per_client + i) % len(sketches)], filename="s.png")
            form.add_field("k", "10")
            form.add_field("mode", mode)
            started = time.perf_counter()
            async with session.post(f"{url}/v1/search", data=form) as response:
                body = await response.json()
            latencies.append(time.perf_counter() - started)
            if response.status != 200:
                errors += 1
            else:
                batches.append(body["encoder_batch"])
                rerank_batches.append(body.get("rerank_batch", 0))

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(n, session) for n in range(clients)))
        wall = time.perf_counter() - started
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    n = clients * per_client
    mean = float(np.mean(batches)) if batches else 0.0
    rerank = float(np.mean(rerank_batches)) if rerank_batches else 0.0
    return Load("", mode, clients, n, p50, p99, n / wall, mean, rerank, errors)


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine so far (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def run_clients(url: str, sketches: list[bytes], clients: int, per_client: int, mode: str) -> Load:
    """The load, with where the machine's CPU went meanwhile: busy share, and the clients' own part of it."""
    busy0, total0 = _cpu_ticks()
    client0, wall0 = time.process_time(), time.perf_counter()
    load = asyncio.run(_clients(url, sketches, clients, per_client, mode))
    busy1, total1 = _cpu_ticks()
    cores = os.cpu_count() or 1
    load.busy = (busy1 - busy0) / max(1, total1 - total0)
    load.client_busy = (time.process_time() - client0) / ((time.perf_counter() - wall0) * cores)
    return load


def endpoint_loads(args, gallery: Path, tracking: str, sketches: list[bytes], topology: str, overrides: list[str]):
    """1 and 16 clients in each served mode against one deployed topology."""
    from sbir.config import load_config
    from serve.launch import start_endpoint, stop_endpoint

    overrides = [*overrides, f"run.dir={args.runs}"]
    endpoint_args = {
        "config": PRESET,
        "model": args.model,
        "gallery": str(gallery),
        "tracking_uri": tracking,
        "overrides": overrides,
    }
    endpoint = start_endpoint(load_config(PRESET, overrides), endpoint_args)
    loads = []
    try:
        run_clients(endpoint.url, sketches, 4, 4, "rn_rerank")  # warm-up
        for mode, single, many in (("ret", 60, 40), ("rn_rerank", 20, 4)):
            for clients, per_client in ((1, single), (BATCH, many)):
                load = run_clients(endpoint.url, sketches, clients, per_client, mode)
                load.topology = topology
                loads.append(load)
                print(
                    f"{topology} {mode} {clients:2d} clients: p50 {load.p50_ms:.1f} ms, {load.per_s:.1f} req/s, "
                    f"batch {load.mean_batch:.1f}, rerank batch {load.mean_rerank_batch:.1f}, errors {load.errors}, "
                    f"CPU busy {load.busy:.0%} (clients {load.client_busy:.0%})",
                    flush=True,
                )
    finally:
        stop_endpoint()
    return loads


# --------------------------------------------------------------------------- gallery builds
def plain_build(checkpoint: Path, prepared: str, out: Path, batch_size: int, threads: int) -> tuple[int, float]:
    """The whole build in one process, the same steps as `sbir index build`: decode and encode every photo,
    build the gallery and its index, save it with its photos."""
    import pyarrow.compute as pc

    from pipelines.prepare import read_manifest
    from sbir.checkpoint import weights_sha256
    from sbir.inference.encoder import Encoder
    from sbir.inference.gallery import items_from_rows
    from sbir.inference.saved_gallery import Provenance, save_gallery, write_images

    torch.set_num_threads(threads)
    started = time.perf_counter()
    table = prepared_table(prepared, ["path", "image", "modality", "class_id", "pair_id"])
    rows = table.filter(pc.equal(table["modality"], "photo")).sort_by("path").to_pydict()
    encoder = Encoder.from_checkpoint(checkpoint, device="cpu", batch_size=batch_size)
    parts = [
        encoder.encode_bytes(rows["image"][s : s + batch_size], "photo")
        for s in range(0, len(rows["path"]), batch_size)
    ]
    photos = encoder.family.encoding.cat(parts)
    columns = {k: np.asarray(v) for k, v in rows.items() if k != "image"}
    items = items_from_rows(columns, read_manifest(prepared).classes.by_id)
    gallery = encoder.family.gallery(encoder.model, photos, items)
    save_gallery(gallery, out, Provenance(encoder.family.name, str(checkpoint), weights_sha256(checkpoint), {}))
    write_images(out, {item.id: data for item, data in zip(items, rows["image"], strict=True)})
    seconds = time.perf_counter() - started
    torch.set_num_threads(os.cpu_count() or 1)
    return len(items), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, default=Path("demo_out/runs"), help="the demo's run dir (MLflow store)")
    ap.add_argument("--prepared", default="demo_out/prepared")
    ap.add_argument("--model", default="models:/sbir-zse-synthetic@champion")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="compute threads: floor and endpoint")
    ap.add_argument("--skip-build", action="store_true", help="leave out the gallery-build comparison")
    ap.add_argument("--build-photos-per-class", type=int, default=150, help="photos per class of the build dataset")
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from pipelines.gallery import build_gallery
    from pipelines.ray_runtime import ensure_ray
    from pipelines.tracking import resolve_reference
    from sbir.config import ServeConfig, load_config

    args.runs = args.runs.resolve()
    tracking = f"sqlite:///{args.runs / 'mlflow.db'}"
    resolved = resolve_reference(args.model, tracking)
    config = load_config(PRESET, [f"data.prepared={args.prepared}"])
    ensure_ray()
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    work = Path(tempfile.mkdtemp(prefix="sbir-bench-serve-"))
    try:
        gallery = work / "test"
        build_gallery(resolved, str(gallery), config, prepared=args.prepared, roles=("test",))
        sketches = images_of(args.prepared, "sketch", "test", 64)
        rerank_k = ServeConfig().rerank_k
        floors = in_process(resolved.directory, str(gallery), sketches, args.threads, rerank_k)
        print(
            "in-process: "
            + ", ".join(
                f"{m} floor {v['floor_s'] * 1000:.1f} ms, bound {v['bound_per_s']:.0f}/s" for m, v in floors.items()
            )
        )
        fused = [f"serve.ingress.threads={args.threads}", "serve.ingress.num_cpus=1"]
        loads = endpoint_loads(args, gallery, tracking, sketches, "fused", fused)
        sharded = [
            f"serve.ingress.threads={args.threads}",
            "serve.ingress.num_cpus=0.5",
            "serve.gallery.shards=2",
            "serve.gallery.shard.num_cpus=0.5",
            "serve.gallery.shard.threads=1",
        ]
        loads += endpoint_loads(args, gallery, tracking, sketches, "2 shards", sharded)
        builds = {} if args.skip_build else gallery_builds(args, resolved, work)  # last: it leaves idle workers
    finally:
        shutil.rmtree(work, ignore_errors=True)

    body = report(args, floors, loads, builds)
    print(body)
    if args.write:
        write_section(args.write, SECTION, body)
        print(f"wrote the '{SECTION}' section of {args.write}")


def build_dataset(work: Path, photos_per_class: int) -> str:
    """A synthetic dataset like the demo's (60 classes, 64 px) with more photos per class, prepared."""
    from pipelines.prepare import prepare_dataset
    from sbir.data.readers import read_split
    from sbir.data.synth import write_synthetic_dataset

    data = work / "build-data"
    write_synthetic_dataset(
        data, num_classes=60, sketches_per_class=2, photos_per_class=photos_per_class, image_size=64,
        progress=False, workers=2,
    )  # fmt: skip
    split = read_split("synthetic", data, "zeroshot1")
    prepared = str(work / "build-prepared")
    prepare_dataset(split, prepared, source=f"synthetic:{data}")
    return prepared


def gallery_builds(args, resolved, work: Path) -> dict[str, tuple[int, float]]:
    """The gallery of every photo of a dataset: a plain single-process build against Ray Data with 1 and 2
    actors, the same total threads. Each Ray Data build runs twice on the same cluster: *cold* pays for
    starting the actors' worker processes (what one `sbir index build` pays), *warm* does not."""
    from pipelines.gallery import build_gallery
    from sbir.config import load_config

    prepared = build_dataset(work, args.build_photos_per_class)
    threads = args.threads
    builds = {"plain loop, 1 process": plain_build(resolved.directory, prepared, work / "plain", 64, threads)}
    print(f"plain: {builds['plain loop, 1 process']}", flush=True)
    for actors in (1, 2):
        per_actor = max(1, threads // actors)
        overrides = [f"eval.num_workers={actors}", f"eval.cpus_per_worker={per_actor}"]
        cfg = load_config(PRESET, overrides)
        for start in ("cold", "warm"):
            out = work / f"ray-{actors}-{start}"
            build = build_gallery(resolved, str(out), cfg, prepared=prepared, roles=("train", "val", "test"))
            builds[f"Ray Data, {actors} actor(s) x {per_actor} thread(s), {start}"] = (build.photos, build.seconds)
            print(f"Ray Data {actors} {start}: {build.photos} photos in {build.seconds:.1f} s", flush=True)
            shutil.rmtree(out, ignore_errors=True)
    return builds


def report(args, floors: dict, loads: list[Load], builds: dict) -> str:
    by = {(r.topology, r.mode, r.clients): r for r in loads}
    rows = "\n".join(
        f"| {r.topology} | `{r.mode}` | {r.clients} | {r.requests} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.per_s:.1f} | "
        f"{r.mean_batch:.1f} | {r.mean_rerank_batch:.1f} | {r.busy:.0%} | {r.client_busy:.0%} | {r.errors} |"
        for r in loads
    )
    goals = []
    for mode, limit in (("ret", 1.5), ("rn_rerank", 1.15)):
        one, many = by[("fused", mode, 1)], by[("fused", mode, BATCH)]
        floor, bound = floors[mode]["floor_s"] * 1000, floors[mode]["bound_per_s"]
        goals.append(
            f"| `{mode}` | {floor:.1f} | {one.p50_ms:.1f} | **{one.p50_ms / floor:.2f}x** (≤ {limit}x) | "
            f"{bound:.0f} | {many.per_s:.1f} | **{many.per_s / bound:.0%}** (≥ 50%) | "
            f"{many.per_s / one.per_s:.1f}x |"
        )
    build_rows = ""
    if builds:
        plain_n, plain_s = next(iter(builds.values()))
        build_rows = "\n".join(
            f"| {name} | {n} | {s:.1f} | {n / s:.0f} | **{(n / s) / (plain_n / plain_s):.2f}x** |"
            for name, (n, s) in builds.items()
        )
    return f"""Measured {dt.date.today()} on the project machine with `bench/bench_serve.py`: {machine_line()},
torch {torch.__version__}. Model: the ZSE-SBIR champion of `make demo` (`{args.model}`, tiny, 64 px); gallery: the
demo's unseen-class photos; queries: its unseen-class sketch PNGs uploaded as multipart forms over loopback HTTP by
asyncio clients in the benchmark's own process (k = 10, `rerank_k` = 200). One run, every row side by side.
Compute threads {args.threads} for the in-process figures and the ingress (`serve.ingress.threads`).

**Goals.** *Floor*: decode + encode + search of one sketch in one process with the endpoint's own functions.
*Bound*: the same work in batches of {BATCH}, requests/s. The endpoint rows are the fused topology (one ingress
replica holding the encoder and the gallery).

| mode | floor (ms) | 1 client, p50 (ms) | ratio | bound (req/s) | {BATCH} clients (req/s) | of bound | vs 1 client |
|---|---:|---:|---:|---:|---:|---:|---:|
{chr(10).join(goals)}

**Topologies.** *fused*: the ingress replica decodes, encodes, searches and re-ranks (no hop after the
proxy). *2 shards*: the ingress encodes; two GalleryShard deployments each hold half the gallery and its
tokens, search and re-rank their own candidates; the ingress merges. *batch*: searches encoded together;
*re-rank batch*: queries whose re-rank pairs went through the relation head in one pass; *CPU busy*: the
share of the machine's CPU time (all cores, all processes) busy during the run; *clients*: the part of it the
benchmark's own HTTP clients used.

| topology | mode | clients | requests | p50 (ms) | p99 (ms) | req/s | batch | re-rank batch | CPU | clients | errors |
|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
{rows}

**Gallery build** of every photo of a synthetic dataset like the demo's (60 classes, 64 px,
{args.build_photos_per_class} photos per class), written as a saved gallery with its photos, with the same total
threads ({args.threads}): a plain single-process build against `sbir index build`'s Ray Data batch inference (goal
≥ 0.9x). *Cold*: the first build on the cluster, which starts the actors' worker processes (what one `sbir index
build` pays); *warm*: the same build again.

| how | photos | seconds | images/s | vs plain |
|---|---:|---:|---:|---:|
{build_rows}
"""


if __name__ == "__main__":
    main()
