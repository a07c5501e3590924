"""Galleries of a million photos: build, save, load, search and serve, per index kind, at the demo model's
dimension and at 512, on class-structured vectors fitted to a real gallery and on random unit vectors.

The vectors must look like real embeddings. Fitted on the demo's CLIP-AT champion (``make demo``): the mean
cosine between class centres and, per class, the mean cosine of a photo to its centre. Thousands of classes
are then sampled with those statistics at any dimension: centres share a common direction with weight
sqrt(mean centre cosine), members lie at their class's measured cosine from their centre. Random unit vectors
are the worst case (no structure for an ANN index to use). Queries are held-out members of the same mixture.

    .venv/bin/python bench/bench_index.py --write docs/benchmarks.md

Everything goes through the project's own code: ``Gallery`` + ``save_gallery`` write the gallery, a child
process ``load_gallery``s it (load time and resident memory per replica), ``GalleryShard.candidates`` is the
search a serving replica runs, and the endpoint serves the fitted gallery at the demo's dimension over HTTP.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from report import machine_line, write_section

SECTION = "## Galleries of a million photos"
PER_CLASS = 200  # photos per class of the sampled mixture: 5,000 classes at a million photos


@dataclass(frozen=True)
class Fit:
    """A Gaussian class mixture measured on real embeddings: where class centres lie, how photos spread
    around their centre (full covariances, so the real anisotropy is kept), and summary cosines."""

    centre_mean: np.ndarray  # d
    centre_cov: np.ndarray  # d x d: spread of the class centres
    within_cov: np.ndarray  # d x d: pooled spread of photos around their class centre
    centre_cosine: float  # mean cosine between two class centres
    member_cosines: np.ndarray  # per class: mean cosine of a photo to its class centre
    classes: int
    photos: int

    @property
    def dim(self) -> int:
        return len(self.centre_mean)


@dataclass
class Row:
    data: str
    dim: int
    kind: str
    params: str
    build_s: float
    save_s: float
    load_s: float
    rss_mib: float
    p50_ms: float
    recall: float


# --------------------------------------------------------------------------- the mixture
def fit_demo(runs: Path, model: str, prepared: str) -> Fit:
    """Centre and spread statistics of the demo champion's photo embeddings (every role)."""
    import pyarrow.compute as pc

    from pipelines.prepare import read_manifest
    from pipelines.tracking import resolve_reference
    from sbir.inference.encoder import Encoder

    resolved = resolve_reference(model, f"sqlite:///{runs / 'mlflow.db'}")
    encoder = Encoder.from_checkpoint(resolved.directory, device="cpu")
    manifest = read_manifest(prepared)
    import pyarrow.dataset as pads

    table = pads.dataset(str(Path(prepared) / manifest.data_dir), format="parquet").to_table(
        ["image", "modality", "class_id"]
    )
    photos = table.filter(pc.equal(table["modality"], "photo"))
    images = [bytes(b) for b in photos["image"].to_pylist()]
    labels = np.asarray(photos["class_id"].to_pylist())
    embeddings = np.concatenate(
        [
            encoder.encode_bytes(images[s : s + 128], "photo").retrieval_embeddings().numpy()
            for s in range(0, len(images), 128)
        ]
    )
    classes = np.unique(labels)
    means = np.stack([embeddings[labels == c].mean(0) for c in classes])
    residuals = np.concatenate([embeddings[labels == c] - means[i] for i, c in enumerate(classes)])
    centres = means / np.linalg.norm(means, axis=1, keepdims=True)
    between = centres @ centres.T
    members = np.asarray([(embeddings[labels == c] @ centres[i]).mean() for i, c in enumerate(classes)])
    return Fit(
        centre_mean=means.mean(0),
        centre_cov=np.cov(means, rowvar=False),
        within_cov=np.cov(residuals, rowvar=False),
        centre_cosine=float(between[~np.eye(len(classes), dtype=bool)].mean()),
        member_cosines=members,
        classes=len(classes),
        photos=len(images),
    )


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _lift(fit: Fit, dim: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The fitted mixture at ``dim``: the same (centre mean, centre cov, within cov) in a random orthonormal
    ``fit.dim``-dimensional subspace, and per-dimension noise in the others as weak as the weakest fitted
    within-class direction (real embeddings also have a low intrinsic dimension)."""
    if dim == fit.dim:
        return fit.centre_mean, fit.centre_cov, fit.within_cov, 0.0
    basis, _ = np.linalg.qr(rng.standard_normal((dim, fit.dim)))
    floor = float(max(np.linalg.eigvalsh(fit.within_cov).min(), 1e-8))
    return basis @ fit.centre_mean, basis @ fit.centre_cov @ basis.T, basis @ fit.within_cov @ basis.T, floor


def sample_mixture(fit: Fit, count: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(unit vectors, class of each): ``count // PER_CLASS`` class centres drawn from the fitted centre
    distribution, photos drawn around them with the fitted within-class covariance."""
    rng = np.random.default_rng(seed)
    mean, centre_cov, within_cov, floor = _lift(fit, dim, rng)
    classes = max(1, count // PER_CLASS)
    centres = rng.multivariate_normal(mean, centre_cov, classes, method="eigh").astype(np.float32)
    spread = np.linalg.cholesky(within_cov + 1e-9 * np.eye(dim)).astype(np.float32)
    labels = rng.integers(0, classes, count)
    vectors = np.empty((count, dim), np.float32)
    for start in range(0, count, 100_000):
        part = labels[start : start + 100_000]
        noise = rng.standard_normal((len(part), dim)).astype(np.float32)
        photos = (
            centres[part] + noise @ spread.T + np.sqrt(floor) * rng.standard_normal((len(part), dim)).astype(np.float32)
        )
        vectors[start : start + len(part)] = _unit(photos)
    return vectors, labels


def random_units(count: int, dim: int, seed: int) -> np.ndarray:
    return _unit(np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32))


# --------------------------------------------------------------------------- build, load, search
LOAD_SCRIPT = """
import gc, json, sys, time
import torch
from sbir.inference.shard import GalleryShard
from sbir.models.encoding import EmbeddingEncoding
def rss():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmRSS"))
    return int(line.split()[1]) / 1024
before = rss()
t = time.perf_counter()
shard = GalleryShard(sys.argv[1], torch.nn.Linear(1, 1), method="clip_at", encoding=EmbeddingEncoding)
took = time.perf_counter() - t
gc.collect()
print(json.dumps({"load_s": took, "rss_mib": rss() - before, "count": len(shard)}))
"""


def build_and_save(vectors: np.ndarray, kind: str, params: dict, out: Path) -> tuple[float, float]:
    from sbir.config import IndexConfig
    from sbir.inference.gallery import Gallery, GalleryItem
    from sbir.inference.saved_gallery import Provenance, save_gallery
    from sbir.models.encoding import EmbeddingEncoding

    items = [GalleryItem(i, f"synthetic/{i}") for i in range(len(vectors))]
    gallery = Gallery(
        torch.nn.Linear(1, 1), EmbeddingEncoding(torch.from_numpy(vectors)), items, IndexConfig(kind=kind, **params)
    )
    started = time.perf_counter()
    _ = gallery.index
    built = time.perf_counter() - started
    started = time.perf_counter()
    save_gallery(gallery, out, Provenance("clip_at", "bench", "0" * 64))
    return built, time.perf_counter() - started


def load_in_a_child(out: Path) -> tuple[float, float]:
    """Load time and peak resident memory of a fresh process holding the gallery, as a serving replica does."""
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(out)], capture_output=True, text=True, env=env, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["load_s"], result["rss_mib"]


def search_p50(
    out: Path, queries: np.ndarray, truth: np.ndarray, settings: list[dict]
) -> list[tuple[dict, float, float]]:
    """(setting, p50 ms of one query on one thread, recall@100 against exact) for each search setting."""
    import faiss

    from sbir.inference.shard import GalleryShard
    from sbir.models.encoding import EmbeddingEncoding

    faiss.omp_set_num_threads(1)
    shard = GalleryShard(out, torch.nn.Linear(1, 1), method="clip_at", encoding=EmbeddingEncoding)
    results = []
    for setting in settings:
        for name, value in setting.items():
            setattr(shard.gallery.index, name, value)
        times, found = [], []
        for q in queries:
            started = time.perf_counter()
            _, ids = shard.candidates(q[None], 100)
            times.append(time.perf_counter() - started)
            found.append(ids[0])
        recall = float(np.mean([len(set(f) & set(t)) / 100 for f, t in zip(found, truth, strict=True)]))
        results.append((setting, statistics.median(times) * 1000, recall))
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return results


def exact_top100(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    scores = torch.from_numpy(queries) @ torch.from_numpy(vectors).T
    return torch.topk(scores, 100, dim=1).indices.numpy()


def measure(data: str, vectors: np.ndarray, queries: np.ndarray, kinds: list[str], work: Path) -> list[Row]:
    truth = exact_top100(vectors, queries)
    rows = []
    n, dim = vectors.shape
    nlist = int(2 ** round(np.log2(np.sqrt(n))))  # about sqrt(N) cells: the training cost a 2-core machine affords
    plans = {
        "flat": ({}, [{}]),
        "ivf": ({"nlist": nlist, "nprobe": 8}, [{"nprobe": p} for p in (8, 16, 32, 64, 128, 256)]),
        "hnsw": ({"hnsw_m": 32, "ef_search": 64}, [{"ef_search": e} for e in (64, 128, 256, 512)]),
    }
    for kind in kinds:
        build_params, settings = plans[kind]
        out = work / f"{data}-{dim}-{kind}"
        built, saved = build_and_save(vectors, kind, build_params, out)
        load_s, rss = load_in_a_child(out)
        for setting, p50, recall in search_p50(out, queries, truth, settings):
            params = ", ".join(f"{k}={v}" for k, v in {**build_params, **setting}.items()) or "exact"
            row = Row(data, dim, kind, params, built, saved, load_s, rss, p50, recall)
            print(f"{data} d={dim} {kind} {params}: build {built:.0f} s, load {load_s:.1f} s, {rss:.0f} MiB, "
                  f"p50 {p50:.2f} ms, recall@100 {recall:.3f}", flush=True)  # fmt: skip
            rows.append(row)
        shutil.rmtree(out, ignore_errors=True)
    return rows


# --------------------------------------------------------------------------- serving
def serve_fitted(args, fit: Fit, work: Path) -> dict:
    """The fitted million-photo gallery at the demo's dimension, served by the demo's CLIP-AT champion."""
    import httpx

    from pipelines.ray_runtime import ensure_ray
    from pipelines.tracking import resolve_reference
    from sbir.checkpoint import weights_sha256
    from sbir.config import IndexConfig, load_config
    from sbir.inference.encoder import Encoder
    from sbir.inference.gallery import GalleryItem
    from sbir.inference.saved_gallery import Provenance, save_gallery
    from sbir.models.encoding import EmbeddingEncoding
    from serve.launch import start_endpoint, stop_endpoint

    tracking = f"sqlite:///{args.runs / 'mlflow.db'}"
    resolved = resolve_reference(args.model, tracking)
    encoder = Encoder.from_checkpoint(resolved.directory, device="cpu")
    vectors, _ = sample_mixture(fit, args.count, fit.dim, seed=11)
    items = [GalleryItem(i, f"synthetic/{i}") for i in range(len(vectors))]
    index = IndexConfig(kind="auto")
    gallery = encoder.family.gallery(encoder.model, EmbeddingEncoding(torch.from_numpy(vectors)), items, index)
    out = work / "served"
    save_gallery(gallery, out, Provenance(encoder.family.name, args.model, weights_sha256(resolved.directory)))
    del gallery, vectors
    ensure_ray()
    overrides = [f"run.dir={args.runs}", "serve.ingress.num_cpus=1", "serve.load_before_ready=true"]
    config_args = {"config": "synthetic_clip_at", "model": args.model, "gallery": str(out), "tracking_uri": tracking,
                   "overrides": overrides}  # fmt: skip
    started = time.perf_counter()
    endpoint = start_endpoint(load_config("synthetic_clip_at", overrides), config_args, timeout_s=1800)
    ready_s = time.perf_counter() - started
    try:
        from bench_serve import images_of

        sketches = images_of(args.prepared, "sketch", limit=64)
        totals, searches = [], []
        with httpx.Client(timeout=120) as http:
            info = http.get(f"{endpoint.url}/v1/info").json()
            for i in range(60):
                answer = http.post(
                    f"{endpoint.url}/v1/search",
                    files={"sketch": ("s.png", sketches[i % len(sketches)])},
                    data={"k": "100"},
                )
                answer.raise_for_status()
                totals.append(answer.json()["timings"]["total"])
                searches.append(answer.json()["timings"]["search"])
    finally:
        stop_endpoint()
    return {
        "size": info["gallery_size"],
        "index": info["index_kind"],
        "ready_s": ready_s,
        "total_ms": statistics.median(totals[5:]) * 1000,
        "search_ms": statistics.median(searches[5:]) * 1000,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, default=Path("demo_out/runs"))
    ap.add_argument("--prepared", default="demo_out/prepared")
    ap.add_argument(
        "--model", default="models:/sbir-clip-at-synthetic@champion", help="the demo model to fit and serve"
    )
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--dims", type=int, nargs="+", default=[0, 512], help="0 = the demo model's own dimension")
    ap.add_argument("--kinds", nargs="+", default=["flat", "ivf", "hnsw"])
    ap.add_argument(
        "--hnsw-up-to", type=int, default=128, help="build hnsw only up to this dimension (its build is the slowest)"
    )
    ap.add_argument("--random-kinds", nargs="+", default=["ivf"], help="index kinds measured on random vectors")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--skip-serve", action="store_true")
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.runs = args.runs.resolve()
    torch.set_num_threads(os.cpu_count() or 1)

    fit = fit_demo(args.runs, args.model, args.prepared)
    spread = fit.member_cosines
    print(
        f"fitted on {fit.photos} photos of {fit.classes} classes, d={fit.dim}: centre cosine {fit.centre_cosine:.3f}, "
        f"member cosine {spread.mean():.3f} (per class {spread.min():.3f}-{spread.max():.3f})"
    )
    work = Path(tempfile.mkdtemp(prefix="sbir-bench-index-"))
    rows: list[Row] = []
    served = None
    try:
        for dim in [d or fit.dim for d in args.dims]:
            vectors, _ = sample_mixture(fit, args.count + args.queries, dim, seed=dim)
            kinds = [k for k in args.kinds if k != "hnsw" or dim <= args.hnsw_up_to]
            rows += measure("fitted mixture", vectors[: args.count], vectors[args.count :], kinds, work)
            del vectors
            noise = random_units(args.count + args.queries, dim, seed=dim + 1)
            rows += measure("random units", noise[: args.count], noise[args.count :], args.random_kinds, work)
            del noise
        if not args.skip_serve:
            served = serve_fitted(args, fit, work)
            print(f"served: {served}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    body = report(args, fit, rows, served)
    print(body)
    if args.write:
        write_section(args.write, SECTION, body)


def report(args, fit: Fit, rows: list[Row], served: dict | None) -> str:
    table = "\n".join(
        f"| {r.data} | {r.dim} | `{r.kind}` | {r.params} | {r.build_s:.0f} | {r.save_s:.0f} | {r.load_s:.1f} | "
        f"{r.rss_mib:,.0f} | {r.p50_ms:.2f} | {r.recall:.3f} |"
        for r in rows
    )
    serving = ""
    if served:
        serving = (
            f"\n**Served**: the fitted gallery at d={fit.dim} ({served['size']:,} photos, `index.kind=auto` chose "
            f"`{served['index']}`) behind the endpoint with the demo's CLIP-AT champion (`{args.model}`): ready "
            f"{served['ready_s']:.0f} s after the deploy began; p50 of one search over HTTP "
            f"{served['total_ms']:.1f} ms, "
            f"of which the server's search stage {served['search_ms']:.2f} ms (k = 100, one client).\n"
        )
    spread = fit.member_cosines
    return f"""Measured {dt.date.today()} with `bench/bench_index.py` ({args.count:,} photos per gallery):
{machine_line()}, torch {torch.__version__}. Vectors: a class mixture fitted to the demo's CLIP-AT champion
({fit.photos} photos of {fit.classes} classes, d={fit.dim}: mean centre cosine {fit.centre_cosine:.3f},
photo-to-centre cosine {spread.mean():.3f} on average, {spread.min():.3f}–{spread.max():.3f} by class),
sampled with {PER_CLASS} photos per class at each dimension; and random unit vectors, the worst case.
*Build*: the index over all vectors; *save* and *load*: the project's gallery format (`save_gallery`, and a fresh
process holding the gallery as a serving replica does); *RSS*: the resident memory the loaded gallery adds to that
process; *p50*: one query at a time on one FAISS thread through `GalleryShard.candidates` (k = 100); *recall*:
recall@100 against exact search, {args.queries} held-out queries of the same distribution.

| vectors | d | index | parameters | build (s) | save (s) | load (s) | RSS (MiB) | p50 (ms) | recall@100 |
|---|---:|---|---|---:|---:|---:|---:|---:|---:|
{table}
{serving}"""


if __name__ == "__main__":
    main()
