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
SETTLE_S = 0.3  # pause before each paired sample: longer than OpenMP's spin after a parallel region


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
class InProcess:
    """The endpoint's own functions in this process: decode, encode and search a batch of sketch PNGs."""

    def __init__(self, checkpoint: Path, gallery_dir: str, threads: int, rerank_k: int) -> None:
        from sbir.config import ServeConfig
        from sbir.inference.encoder import Encoder

        self.threads = threads
        self.rerank_k = rerank_k
        self.encoder = Encoder.from_checkpoint(checkpoint, device="cpu")
        self.gallery = self.encoder.open_gallery(gallery_dir)
        self.limits = ServeConfig()

    def work(self, batch: list[bytes], mode: str) -> None:
        from PIL import Image

        from serve.requests import decode_image

        images = [Image.fromarray(decode_image(data, self.limits)) for data in batch]
        self.gallery.search(self.encoder.encode_images(images, "sketch"), 10, mode, rerank_k=self.rerank_k)

    def timed(self, batch: list[bytes], mode: str) -> float:
        """Seconds of one `work` call with the endpoint's compute threads (the machine's default after)."""
        torch.set_num_threads(self.threads)
        try:
            started = time.perf_counter()
            self.work(batch, mode)
            return time.perf_counter() - started
        finally:
            torch.set_num_threads(os.cpu_count() or 1)


def in_process(local: InProcess, sketches: list[bytes]) -> dict:
    """Bound per mode: requests/s of the endpoint's work done in batches of 16 in this process."""
    out = {}
    for mode in local.encoder.family.served_modes:
        local.timed(sketches[:2], mode)
        batches = [
            local.timed([sketches[(i * BATCH + j) % len(sketches)] for j in range(BATCH)], mode) for i in range(6)
        ]
        out[mode] = {"bound_per_s": BATCH / statistics.median(batches)}
    return out


@dataclass
class Paired:
    """Medians (seconds) of alternating samples: the in-process floor, and the endpoint as the client, the
    replica's ASGI app (``Server-Timing``) and the search handler (its ``timings``) saw each request."""

    floor: float
    client: float
    app: float
    handler: float
    stages: dict[str, float]


def _multipart(sketch: bytes, mode: str) -> tuple[bytes, str]:
    """A search request's multipart body, built once, so the client's own cost stays out of the latency."""
    boundary = "sbir-bench-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="sketch"; filename="s.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + sketch
        + b"\r\n",
        f'--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\n10\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="mode"\r\n\r\n{mode}\r\n'.encode(),
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def paired(url: str, local: InProcess, sketches: list[bytes], mode: str, samples: int) -> Paired:
    """One sketch in this process, then the same sketch through the endpoint, alternately, so that both see the
    same machine (its load drifts between runs by more than the gap under test). The client is the standard
    library's keep-alive connection sending a prepared body: what remains is the endpoint's own latency. Each
    sample starts after a pause of SETTLE_S, so the other side's idle compute threads (OpenMP spins a while
    after its work) are asleep and take no core from the sample."""
    import http.client
    import json
    from urllib.parse import urlsplit

    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    bodies = [_multipart(sketch, mode) for sketch in sketches]
    floor, client_s, app_s, handler_s, stages = [], [], [], [], {}
    try:
        for i in range(samples + 2):
            time.sleep(SETTLE_S)
            in_proc = local.timed([sketches[i % len(sketches)]], mode)
            body, content_type = bodies[i % len(bodies)]
            time.sleep(SETTLE_S)
            started = time.perf_counter()
            connection.request("POST", "/v1/search", body=body, headers={"Content-Type": content_type})
            response = connection.getresponse()
            payload = response.read()
            over_http = time.perf_counter() - started
            if response.status != 200:
                raise RuntimeError(f"search answered {response.status}: {payload[:300]!r}")
            if i < 2:  # the first pairs warm both up
                continue
            floor.append(in_proc)
            client_s.append(over_http)
            app_s.append(float(response.getheader("server-timing").split("dur=")[1]) / 1000)
            timings = json.loads(payload)["timings"]
            handler_s.append(timings["total"])
            for stage, seconds in timings.items():
                stages.setdefault(stage, []).append(seconds)
    finally:
        connection.close()
    med = statistics.median
    return Paired(med(floor), med(client_s), med(app_s), med(handler_s), {k: med(v) for k, v in stages.items()})


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


def endpoint_loads(
    args, gallery: Path, tracking: str, sketches: list[bytes], topology: str, overrides: list[str], local: InProcess
) -> tuple[list[Load], dict[str, Paired]]:
    """1 and 16 clients in each served mode against one deployed topology, and the paired floor samples."""
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
    loads, pairs = [], {}
    try:
        run_clients(endpoint.url, sketches, 4, 4, "rn_rerank")  # warm-up
        for mode, samples in (("ret", 60), ("rn_rerank", 20)):
            pairs[mode] = paired(endpoint.url, local, sketches, mode, samples)
            print(f"{topology} {mode} paired: {pairs[mode]}", flush=True)
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
    return loads, pairs


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
    ap.add_argument("--skip-shards", action="store_true", help="leave out the 2-shard topology")
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
        local = InProcess(resolved.directory, str(gallery), args.threads, ServeConfig().rerank_k)
        bounds = in_process(local, sketches)
        print("in-process: " + ", ".join(f"{m} bound {v['bound_per_s']:.0f}/s" for m, v in bounds.items()))
        fused = [f"serve.ingress.threads={args.threads}", "serve.ingress.num_cpus=1"]
        loads, pairs = endpoint_loads(args, gallery, tracking, sketches, "fused", fused, local)
        sharded = [
            f"serve.ingress.threads={args.threads}",
            "serve.ingress.num_cpus=0.5",
            "serve.gallery.shards=2",
            "serve.gallery.shard.num_cpus=0.5",
            "serve.gallery.shard.threads=1",
        ]
        if not args.skip_shards:
            loads += endpoint_loads(args, gallery, tracking, sketches, "2 shards", sharded, local)[0]
        builds = {} if args.skip_build else gallery_builds(args, resolved, work)  # last: it leaves idle workers
    finally:
        shutil.rmtree(work, ignore_errors=True)

    body = report(args, bounds, pairs, loads, builds)
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
    from pipelines.tracking import ResolvedCheckpoint
    from sbir.config import load_config

    # The checkpoint folder itself, as `sbir index build --checkpoint <folder>` gets it: no MLflow run to log the
    # gallery to, so both builds do the same work (read, decode, encode, index, save with the photos).
    checkpoint = ResolvedCheckpoint(str(resolved.directory), resolved.directory)
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
            build = build_gallery(checkpoint, str(out), cfg, prepared=prepared, roles=("train", "val", "test"))
            builds[f"Ray Data, {actors} actor(s) x {per_actor} thread(s), {start}"] = (build.photos, build.seconds)
            print(f"Ray Data {actors} {start}: {build.photos} photos in {build.seconds:.1f} s", flush=True)
            shutil.rmtree(out, ignore_errors=True)
    return builds


def report(args, bounds: dict, pairs: dict, loads: list[Load], builds: dict) -> str:
    by = {(r.topology, r.mode, r.clients): r for r in loads}
    rows = "\n".join(
        f"| {r.topology} | `{r.mode}` | {r.clients} | {r.requests} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.per_s:.1f} | "
        f"{r.mean_batch:.1f} | {r.mean_rerank_batch:.1f} | {r.busy:.0%} | {r.client_busy:.0%} | {r.errors} |"
        for r in loads
    )
    goals = []
    for mode, limit in (("ret", 1.5), ("rn_rerank", 1.15)):
        one, many = by[("fused", mode, 1)], by[("fused", mode, BATCH)]
        floor, single, bound = pairs[mode].floor * 1000, pairs[mode].client * 1000, bounds[mode]["bound_per_s"]
        goals.append(
            f"| `{mode}` | {floor:.1f} | {single:.1f} | {pairs[mode].app * 1000:.1f} | "
            f"{pairs[mode].handler * 1000:.1f} | "
            f"**{single / floor:.2f}x** (≤ {limit}x) | "
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
*1 client*: the same sketch over HTTP to the endpoint (a keep-alive connection sending a prepared body). The two
are sampled alternately (60 pairs for `ret`, 20 for `rn_rerank`; medians), each after a {SETTLE_S} s pause, so both
see the same machine and neither shares it with the other's idle OpenMP threads, which spin for a while after
their work: measured apart, the floor drifted between runs by more than the gap under test. *App* and *handler*:
the same requests as the replica's ASGI app (`Server-Timing`) and the search handler (its `timings`) saw them.
*Bound*: the same work in batches of {BATCH}, requests/s.
The endpoint rows are the fused topology (one ingress replica holding the encoder and the gallery).

| mode | floor (ms) | 1 client, p50 (ms) | app (ms) | handler (ms) | ratio | bound (req/s) | {BATCH} clients (req/s) \
| of bound | vs 1 client |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|
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
