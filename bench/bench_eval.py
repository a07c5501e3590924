"""Benchmark ZSE-SBIR retrieval scoring: exhaustive ``rn`` vs ``rn_rerank`` (and ``ret``) by gallery size.

Loads a trained ZSE-SBIR checkpoint (``--checkpoint``, e.g. the best checkpoint of ``make demo``) or builds
the tiny model of the ``synthetic_zse`` preset with random weights (seed 0), encodes a sketch query set and a
photo gallery from the built-in synthetic generator (or random images with ``--data random``) once, then
times ``RelationGallery.score_matrix`` in each mode for several gallery sizes and computes mAP@all with
``sbir.metrics.compute_metrics``. With a checkpoint, queries and gallery come only from classes the model
never trained on (neither its seen nor its validation classes), so mAP@all is zero-shot. Optionally writes a
``## Evaluation: rn vs rn_rerank`` section of a Markdown file.

    .venv/bin/python bench/bench_eval.py --checkpoint demo_out/runs/<zse run>/best --write docs/benchmarks.md
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from report import machine_line, write_section

from sbir.checkpoint import load_checkpoint
from sbir.config import load_config
from sbir.data.readers import read_split
from sbir.data.synth import category_catalogue, write_synthetic_dataset
from sbir.inference.encoder import Encoder
from sbir.inference.gallery import GalleryItem, RelationGallery
from sbir.methods import get_family
from sbir.methods.zse import ZSEFamily
from sbir.metrics import compute_metrics
from sbir.models.zse import ZSESBIR

SECTION = "## Evaluation: rn vs rn_rerank"
PRESET = "synthetic_zse"


@dataclass
class Row:
    gallery: int
    mode: str  # ret, rn, rn_rerank@K
    seconds: float
    pairs: int  # relation-head pairs scored
    map_all: float
    load: float
    queries: int  # queries actually scored (fewer than all only for a capped `rn`)
    measured_s: float  # time of the scored queries (= seconds unless capped)
    map_rn_queries: float = float("nan")  # mAP@all over the queries `rn` scored (all of them unless capped)
    p100_rn_queries: float = float("nan")  # P@100 over the same queries


def load1() -> float:
    return os.getloadavg()[0]


def synthetic_images(args: argparse.Namespace, size: int, work: Path, exclude: set[str]):
    """Sketches (queries) and photos (gallery) from the synthetic generator, normalised, with class labels.

    Classes named in `exclude` (a checkpoint's training classes) are generated but left out of both sets.
    """
    names = [c.name for c in category_catalogue()[: args.classes]]
    kept = [n for n in names if n not in exclude]
    if not kept:
        raise SystemExit(f"the first {args.classes} synthetic classes are all training classes; raise --classes")
    root = work / "synth"
    summary = write_synthetic_dataset(
        root,
        seed=args.seed,
        num_classes=args.classes,
        sketches_per_class=args.queries_per_class,
        photos_per_class=-(-max(args.galleries) // len(kept)),
        image_size=size,
        workers=min(2, os.cpu_count() or 1),
        progress=False,
    )
    print(f"synthetic dataset written in {summary.seconds:.1f} s")
    split = read_split("synthetic", root, "zeroshot1", val_fraction=0.0)
    transform = ZSEFamily.transform_for(size)

    def load(modality: str):
        records = sorted(  # every role: seen/unseen in this split means nothing to the benchmarked model
            (r for r in split.select(modality=modality) if r.class_name not in exclude), key=lambda r: r.path
        )
        images = []
        for r in records:
            with Image.open(Path(split.root) / r.path) as im:
                images.append(transform(im.convert("RGB"), modality))
        return torch.stack(images), np.array([split.class_id(r.class_name) for r in records])

    sketches, sketch_labels = load("sketch")
    photos, photo_labels = load("photo")
    return sketches, sketch_labels, photos, photo_labels


def random_images(args: argparse.Namespace, size: int):
    """N(0, 1) images with round-robin class labels (no signal: every mAP is chance level)."""
    g = torch.Generator().manual_seed(args.seed)
    n_q = args.classes * args.queries_per_class
    n_g = max(args.galleries)
    sketches = torch.randn(n_q, 3, size, size, generator=g)
    photos = torch.randn(n_g, 3, size, size, generator=g)
    return sketches, np.arange(n_q) % args.classes, photos, np.arange(n_g) % args.classes


def stratified_order(labels: np.ndarray) -> np.ndarray:
    """Gallery rows ordered so that every prefix spreads evenly over the classes (i-th photo of each class)."""
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        rank[rows] = np.arange(len(rows))
    return np.lexsort((labels, rank))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--galleries", type=int, nargs="+", default=[250, 1000, 4000], help="gallery sizes (photos)")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--queries-per-class", type=int, default=2, help="sketch queries per class")
    ap.add_argument("--rerank-k", type=int, nargs="+", default=None, help="default: the preset's eval.rerank_k")
    ap.add_argument("--data", choices=["synthetic", "random"], default="synthetic")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    ap.add_argument("--pair-batch", type=int, default=1024, help="pairs per relation-head forward")
    ap.add_argument(
        "--rn-max-pairs",
        type=int,
        default=0,
        help="cap on the pairs of one `rn` run: above it `rn` scores a class-spread subset of the queries and "
        "its full time is extrapolated linearly (0 = no cap, score every pair)",
    )
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of `ret` and `rn_rerank` (median reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", type=Path, help="trained ZSE-SBIR checkpoint directory (default: random weights)")
    ap.add_argument("--write", type=Path, help="Markdown file whose evaluation section is replaced")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    exclude: set[str] = set()
    if args.checkpoint:
        model, meta = load_checkpoint(args.checkpoint)
        if not isinstance(model, ZSESBIR):
            raise SystemExit(f"{args.checkpoint} holds a {meta.method} model; this benchmark needs ZSE-SBIR")
        config = meta.config
        exclude = set(meta.classes.get("seen", [])) | set(meta.classes.get("val", []))
        args.model_note = (
            f"Model: the trained checkpoint `{args.checkpoint.name}` of run `{meta.extra.get('run_name', '?')}` "
            f"(ZSE-SBIR size `{config.model.zse.size}`, stem `{config.model.zse.stem}`, switches `{meta.preset}`; "
            f"epoch {meta.extra.get('epoch', '?')}, validation mAP@all "
            f"{meta.metrics.get('val_score', float('nan')):.4f}); queries and gallery come only from classes it never "
            f"trained on ({len(exclude)} seen and validation classes left out), so mAP@all is zero-shot."
        )
    else:
        config = load_config(PRESET)
        torch.manual_seed(0)
        model = ZSESBIR(config.model.zse).eval()
        args.model_note = (
            f"Model: the tiny ZSE-SBIR of the `{PRESET}` preset with **random weights** (seed 0): the times are those "
            "of a trained model of the same size, but the mAP values are close to chance and only check that each "
            "mode ranks something."
        )
    zse_cfg = config.model.zse
    rerank_ks = args.rerank_k or [config.eval.rerank_k]
    size = zse_cfg.image_size

    work = Path(tempfile.mkdtemp(prefix="sbir-bench-eval-"))
    loads = [load1()]
    try:
        t0 = time.perf_counter()
        if args.data == "synthetic":
            sketches, sketch_labels, photos, photo_labels = synthetic_images(args, size, work, exclude)
        else:
            sketches, sketch_labels, photos, photo_labels = random_images(args, size)
        print(f"{len(sketches)} queries, {len(photos)} photos ready in {time.perf_counter() - t0:.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.query_labels, args.image_size = sketch_labels, size  # for the report
    order = stratified_order(photo_labels)
    photos, photo_labels = photos[order], photo_labels[order]
    if max(args.galleries) > len(photos):
        raise SystemExit(f"only {len(photos)} photos for a gallery of {max(args.galleries)}")

    t0 = time.perf_counter()
    encoder = Encoder(model, get_family("zse"), ZSEFamily.transform_for(size))
    query_enc = encoder.encode(sketches, "sketch")
    photo_enc = encoder.encode(photos[: max(args.galleries)], "photo")
    encode_s = time.perf_counter() - t0
    n_encoded = len(sketches) + max(args.galleries)
    print(f"encoded {n_encoded} images in {encode_s:.1f} s")

    with torch.no_grad():  # warm-up: the first relation-head call pays one-off kernel set-up
        model.pair_scores(query_enc.select(slice(0, 8)), photo_enc.select(slice(0, 8)))

    rows: list[Row] = []
    chance: dict[int, float] = {}
    n_q = len(sketches)
    for g in sorted(args.galleries):
        items = [GalleryItem(i, f"photo/{i}", class_id=int(c)) for i, c in enumerate(photo_labels[:g])]
        gallery = RelationGallery(model, photo_enc.select(slice(0, g)), items)
        labels = photo_labels[:g]
        chance[g] = chance_map(sketch_labels, labels)
        modes = [("ret", "ret", 0, 0)] + [(f"rn_rerank@{k}", "rn_rerank", k, n_q * min(k, g)) for k in rerank_ks]
        modes.append(("rn", "rn", 0, n_q * g))
        rn_queries = np.arange(n_q)
        if args.rn_max_pairs and n_q * g > args.rn_max_pairs:
            rn_queries = np.sort(stratified_order(sketch_labels)[: max(1, args.rn_max_pairs // g)])
        for name, mode, k, pairs in modes:
            exhaustive = mode == gallery.exhaustive_mode
            queries = rn_queries if exhaustive else np.arange(n_q)
            before = load1()
            times = []
            for _ in range(1 if exhaustive else max(1, args.repeat)):
                t0 = time.perf_counter()
                scores = gallery.score_matrix(
                    query_enc.select(torch.from_numpy(queries)), mode, rerank_k=k or 200, pair_batch=args.pair_batch
                )
                times.append(time.perf_counter() - t0)
            measured = statistics.median(times)
            seconds = measured * n_q / len(queries)
            loads += [before, load1()]
            metrics = compute_metrics(
                scores.float().numpy(), sketch_labels[queries], labels, tie_break="random", tie_seed=0
            )
            subset = np.searchsorted(queries, rn_queries)  # rows of `rn`'s queries in this matrix
            same = compute_metrics(
                scores.float().numpy()[subset], sketch_labels[rn_queries], labels, tie_break="random", tie_seed=0
            )
            rows.append(
                Row(
                    g, name, seconds, pairs, metrics["map_all_voc"], before, len(queries), measured,
                    same["map_all_voc"], same["p_100"],
                )
            )  # fmt: skip
            note = f" (extrapolated from {len(queries)} queries: {measured:.2f} s)" if len(queries) < n_q else ""
            print(
                f"gallery {g:5d} {name:14s} {seconds:8.2f} s{note}  mAP@all {metrics['map_all_voc']:.4f}  "
                f"load {before:.1f}"
            )

    if args.write:
        body = report_body(args, rows, rerank_ks, n_q, encode_s, n_encoded, loads, chance)
        write_section(args.write, SECTION, body)
        print(f"wrote the '{SECTION}' section of {args.write}")


def rerank_study(rows: list[Row], rerank_ks, n_q: int) -> str:
    """Per gallery: the smallest re-ranking depth K within 1% of `rn` (mAP@all and P@100), on `rn`'s queries."""
    header = " | ".join(f"`rn_rerank@{k}`" for k in rerank_ks)
    lines = [
        "**Re-ranking depth.** `rn_rerank@K` against exhaustive `rn`, both over the queries `rn` scored; "
        "each cell is mAP@all / P@100 (time; speed-up over `rn`):",
        "",
        f"| gallery photos | `ret` | {header} | `rn` | smallest K within 1% of `rn`: mAP@all, P@100 |",
        "|---|" + "---:|" * (len(rerank_ks) + 3),
    ]
    for g in sorted({r.gallery for r in rows}):
        by = {r.mode: r for r in rows if r.gallery == g}
        if "rn" not in by:
            continue
        rn = by["rn"]
        cells, chosen_map, chosen_p = [], None, None
        for k in rerank_ks:
            r = by[f"rn_rerank@{k}"]
            speed = rn.seconds / r.seconds if r.seconds else float("nan")
            cells.append(f"{r.map_rn_queries:.4f} / {r.p100_rn_queries:.4f} ({r.seconds:.1f} s; {speed:.0f}x)")
            if chosen_map is None and r.map_rn_queries >= 0.99 * rn.map_rn_queries:
                chosen_map = k
            if chosen_p is None and r.p100_rn_queries >= 0.99 * rn.p100_rn_queries:
                chosen_p = k
        ret = by["ret"]
        lines.append(
            f"| {g:,} | {ret.map_rn_queries:.4f} / {ret.p100_rn_queries:.4f} | "
            + " | ".join(cells)
            + f" | {rn.map_rn_queries:.4f} / {rn.p100_rn_queries:.4f} ({rn.seconds:.0f} s) "
            f"| {chosen_map or 'none'}, {chosen_p or 'none'} |"
        )
    return "\n".join(lines)


def chance_map(query_labels: np.ndarray, gallery_labels: np.ndarray, seeds: int = 5) -> float:
    """mAP@all of uniformly random scores (mean over seeds): the floor every mode should clear."""
    runs = []
    for seed in range(seeds):
        scores = np.random.default_rng(seed).random((len(query_labels), len(gallery_labels)))
        runs.append(compute_metrics(scores, query_labels, gallery_labels)["map_all_voc"])
    return float(np.mean(runs))


def report_body(
    args, rows: list[Row], rerank_ks, n_q: int, encode_s: float, n_encoded: int, loads, chance: dict[int, float]
) -> str:
    def cells(r: Row) -> str:
        rate = f"{r.pairs / r.seconds:,.0f}" if r.pairs else "-"
        if r.queries == n_q:
            return f"{r.seconds:.2f} | {r.pairs:,} | {rate} | {r.map_all:.4f} | {r.load:.1f}"
        return (
            f"~{r.seconds:.1f} (extrapolated from {r.measured_s:.2f} s for {r.queries} queries) | {r.pairs:,} "
            f"| {rate} | {r.map_all:.4f} ({r.queries} queries) | {r.load:.1f}"
        )

    table = "\n".join(f"| {r.gallery:,} | `{r.mode}` | {cells(r)} |" for r in rows)
    capped = any(r.queries < n_q for r in rows)
    cap_note = (
        f"\n\n`rn` rows marked *extrapolated* scored a class-spread subset of the queries (run cap "
        f"`--rn-max-pairs {args.rn_max_pairs:,}`) and scale the time linearly to all {n_q} queries: `rn` cost is "
        "exactly proportional to the pairs it scores (fixed-size pair batches). Their mAP@all is over "
        "that subset only."
        if capped
        else ""
    )
    by = {(r.gallery, r.mode): r for r in rows}
    k0 = rerank_ks[0]
    ratios = ", ".join(
        f"{by[(g, 'rn')].seconds / by[(g, f'rn_rerank@{k0}')].seconds:.1f}x with {g:,} photos"
        for g in sorted(args.galleries)
        if (g, "rn") in by and (g, f"rn_rerank@{k0}") in by
    )
    n_classes = len(np.unique(args.query_labels))
    data = (
        f"sketches and photos from the built-in synthetic generator ({n_classes} classes of its first "
        f"{args.classes}, {args.queries_per_class} sketches per class as queries; each gallery takes the first "
        "photos of every class in turn, so all classes stay represented)"
        if args.data == "synthetic"
        else f"N(0, 1) random images with round-robin labels over {args.classes} classes"
    )
    k_study = rerank_study(rows, rerank_ks, n_q)
    load_note = (
        f"The 1-minute load average was {min(loads):.1f}-{max(loads):.1f} during the runs; the benchmark itself keeps "
        f"{args.threads} threads busy, and a 1-minute average still carries the tail of whatever ran just before."
    )
    chance_line = ", ".join(f"{chance[g]:.4f} with {g:,} photos" for g in sorted(chance))
    return f"""Measured {dt.date.today()} on the project machine with `bench/bench_eval.py`: {machine_line()},
torch {torch.__version__} with {args.threads} threads, pair batch {args.pair_batch}.
{args.model_note} Image size {args.image_size} px.
Data: {data}. {n_q} queries; the photos are encoded once
({n_encoded:,} images in {encode_s:.1f} s, not included below), and each time is one
`RelationGallery.score_matrix` call for the full Q x G matrix in fp32 (the median of {args.repeat} runs for `ret` and
`rn_rerank`, one run for `rn`, after a warm-up call of the relation head). mAP@all is `map_all_voc` from
`sbir.metrics.compute_metrics` (random tie-break, seed 0). *relation pairs* are the query-photo pairs that go
through cross-attention and the relation head; *load* is the 1-minute load average when the row started.

| gallery photos | mode | time (s) | relation pairs | pairs/s | mAP@all | load |
|---|---|---:|---:|---:|---:|---:|
{table}

`rn` runs the cross-attention and relation head on every query-photo pair, so its time grows linearly with the
gallery; `rn_rerank@K` scores only each query's top K by `ret` (a fixed Q x K pairs) plus the `ret` matrix,
so its time is nearly flat. Time of `rn` over `rn_rerank@{k0}`: {ratios}. `rn_rerank` only reorders `ret`'s
top {k0}, so same-class photos that `ret` ranks lower stay where `ret` put them; `rn` ranks the whole gallery by the
relation head. Random scores give mAP@all {chance_line} (mean of 5 seeds).{cap_note}

{k_study}

{load_note}
"""


if __name__ == "__main__":
    main()
