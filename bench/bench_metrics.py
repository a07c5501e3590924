"""Benchmark sbir.metrics.compute_metrics on a Sketchy-25-sized synthetic score matrix.

Measures wall time and peak RSS of the full metric set (every named variant of docs/metrics.md#metric-names)
and, optionally, writes the figures into their own ``## Metrics`` section of a Markdown file
without touching the other sections.

    .venv/bin/python bench/bench_metrics.py --queries 15229 --gallery 17101 --classes 25 \
        --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from report import cpu_name, peak_rss_mib, write_section

from sbir.metrics import compute_metrics, format_metrics, tie_spread

SECTION = "## Metrics"
GOAL_SECONDS = 10.0


def current_rss_mib() -> float:
    """Resident set size now (Linux /proc; falls back to the peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mib()


def class_sizes(total: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    """Uneven class sizes summing to ``total`` (Sketchy-25-like: the largest about 3x the smallest)."""
    weights = rng.uniform(1.0, 3.0, classes)
    sizes = np.floor(weights / weights.sum() * total).astype(np.int64)
    sizes[: total - sizes.sum()] += 1
    return sizes


def make_problem(n_q: int, n_g: int, n_cls: int, seed: int, signal: float):
    """Float32 scores = N(0, 1) noise + ``signal`` for same-class pairs, filled in row blocks."""
    rng = np.random.default_rng(seed)
    ql = np.repeat(np.arange(n_cls), class_sizes(n_q, n_cls, rng))
    gl = np.repeat(np.arange(n_cls), class_sizes(n_g, n_cls, rng))  # class-contiguous, like the lists
    scores = np.empty((n_q, n_g), dtype=np.float32)
    for q0 in range(0, n_q, 1024):
        block = scores[q0 : q0 + 1024]
        rng.standard_normal(out=block, dtype=np.float32)
        block += signal * (ql[q0 : q0 + 1024, None] == gl[None, :])
    return scores, ql, gl


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=15229)
    ap.add_argument("--gallery", type=int, default=17101)
    ap.add_argument("--classes", type=int, default=25)
    ap.add_argument("--query-chunk", type=int, default=256)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--signal", type=float, default=1.5, help="same-class score offset (sets the mAP level)")
    ap.add_argument("--repeat", type=int, default=3, help="headline runs (the median is reported)")
    ap.add_argument("--skip-extra", action="store_true", help="only the headline fp32 compute_metrics run")
    ap.add_argument("--date", default=dt.date.today().isoformat(), help="date written into the report")
    ap.add_argument("--write", type=Path, default=None, help="Markdown file whose '## Metrics' section to update")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    (scores, ql, gl), t_gen = timed(
        lambda: make_problem(args.queries, args.gallery, args.classes, args.seed, args.signal)
    )
    rss_before = current_rss_mib()
    print(f"synthetic {args.queries} x {args.gallery} float32, {args.classes} classes (built in {t_gen:.1f} s)")
    print(f"RSS with the score matrix loaded: {rss_before:.0f} MiB")

    kw = {"query_chunk": args.query_chunk}
    times = []
    for _ in range(max(1, args.repeat)):
        metrics, t_run = timed(lambda: compute_metrics(scores, ql, gl, **kw))
        times.append(t_run)
    t_main = float(np.median(times))
    peak_main = peak_rss_mib()
    spread = f" (median of {len(times)}: min {min(times):.2f}, max {max(times):.2f})" if len(times) > 1 else ""
    print(f"compute_metrics (fp32, tie_break=random): {t_main:.2f} s{spread}, peak RSS {peak_main:.0f} MiB")
    print(format_metrics(metrics))

    rows = [(f"`compute_metrics`, fp32 scores, `tie_break=random`{spread}", t_main, peak_main)]
    if not args.skip_extra:
        _, t_spread = timed(lambda: tie_spread(scores, ql, gl, **kw))
        rows.append(("`tie_spread` (optimistic + pessimistic + random, one pass), fp32", t_spread, peak_rss_mib()))
        print(f"tie_spread (fp32): {t_spread:.2f} s")
        half = scores.astype(np.float16)  # heavily tied scores: every row takes the exact keyed-tie path
        _, t_half = timed(lambda: compute_metrics(half, ql, gl, **kw))
        rows.append(("`compute_metrics`, fp16 scores (heavy ties), `tie_break=random`", t_half, peak_rss_mib()))
        print(f"compute_metrics (fp16 scores, heavy ties): {t_half:.2f} s")
        del half

    met = t_main < GOAL_SECONDS
    print(f"goal (< {GOAL_SECONDS:.0f} s for the full metric set): {'met' if met else 'NOT met'}")
    if args.write is None:
        return
    table = "\n".join(f"| {name} | {t:.2f} | {rss:.0f} |" for name, t, rss in rows)
    extra_note = (
        ""
        if args.skip_extra
        else "The fp16 row's peak also holds the fp16 copy of the matrix (about "
        f"{args.queries * args.gallery * 2 / 2**20:.0f} MiB). fp16 scores tie heavily, so most rows take the "
        "exact composite-key tie path. fp32 rows have only a few ties, resolved by per-item row scans.\n"
    )
    command = f"bench/bench_metrics.py --queries {args.queries} --gallery {args.gallery} --classes {args.classes}"
    versions = (
        f"torch {torch.__version__.split('+')[0]} with {args.threads} threads, NumPy {np.__version__}, "
        f"Python {platform.python_version()}"
    )
    body = f"""
Measured {args.date} on the project machine with
`{command}`:
{os.cpu_count()} CPU cores ({cpu_name()}), no GPU, {versions},
`query_chunk={args.query_chunk}`. The machine is shared with other work, so times vary by about 10%.

Input: a synthetic {args.queries:,} x {args.gallery:,} float32 score matrix (the Sketchy-25 test size),
{args.classes} classes with uneven, class-contiguous sizes, N(0, 1) noise plus {args.signal} for
same-class pairs. The full metric set is every named variant of [metrics.md](metrics.md#metric-names) (`map_all_voc`,
`map_all_plain`, the four `map_200_*`, `p_100`, `p_200`, `p_100_minR`, `p_200_minR`, `rel_at_200`
and the counts).

| Run | Wall time (s) | Peak RSS (MiB) |
|---|---:|---:|
{table}

Peak RSS is the process maximum (`resource.getrusage`) and includes the score matrix: RSS was
{rss_before:.0f} MiB with the matrix loaded, so the headline run's working memory is about
{max(peak_main - rss_before, 0):.0f} MiB (a few `query_chunk` x gallery arrays).
{extra_note}
**Goal (< {GOAL_SECONDS:.0f} s for the full metric set on the 15,229 x 17,101 fp32 matrix):
{"met" if met else "not met"}** ({t_main:.2f} s).

Resulting values (a sanity check; they depend only on the synthetic signal):

{format_metrics(metrics, markdown=True)}
"""
    write_section(args.write, SECTION, body)
    print(f"wrote the '{SECTION}' section of {args.write}")


if __name__ == "__main__":
    main()
