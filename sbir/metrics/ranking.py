"""Ranking metrics for sketch-based image retrieval: every variant of docs/metrics.md, side by side.

What: given a query x gallery score matrix (higher = more similar) and class labels, compute the
AP family (``map_all_voc``, ``map_all_plain``, ``map_{cut}_voc_strict``, ``map_{cut}_plain_strict``,
``map_{cut}_plain_lenient``, ``map_{cut}_plain_overR``), precision (``p_K``, ``p_K_minR``),
``rel_at_{cut}`` and, with a pair index (fine-grained), ``acc_K``. Queries without a relevant gallery
item (R = 0) are excluded from every mean and counted.

Why this way: published ZS-SBIR numbers disagree mostly because of metric code, not models
(interpolation, normaliser, cut, tie handling). Reporting every variant under its own name, with one
documented and deterministic tie rule, makes results comparable with each paper.

How (fast and memory-bounded): queries are processed in chunks of ``query_chunk`` rows. For each
chunk every score row is sorted once (values only: NumPy's SIMD sort, several times faster than an
argsort), and the rank of each *relevant* item is found by binary search in its sorted row. Every
metric is a function of the ascending ranks ``r_1 < ... < r_R`` of the R relevant items only
(precision at the m-th hit is ``m / r_m``), so all later work is on chunk x R arrays, not
chunk x G. Ties (equal scores) are resolved exactly:

* ``optimistic`` / ``pessimistic``: relevant items take the first / last slots of their tie group,
  which follows from counts alone (items strictly better, items tied, relevant items tied).
* ``random`` / ``stable_index``: among tied items the order is a per-gallery-item key (a seeded
  permutation of the gallery, or the column index). A tie group made only of relevant items gives
  the same metrics in any order, so only relevant items tied with an irrelevant one ("mixed") need
  the key: rows with a few of them scan the row once per item; rows with many (fp16 scores) sort a
  composite integer key (score code, tie key) once and binary-search it.

Working memory is a few ``query_chunk`` x G arrays, never Q x G: each chunk is split across
``torch.get_num_threads()`` worker threads (NumPy's sort releases the GIL). Every query's
values are independent of the chunk size and the thread count, so results are bit-identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Literal

import numpy as np
import torch

from sbir.errors import SbirError
from sbir.metrics.names import metric_names

TieBreak = Literal["random", "stable_index", "optimistic", "pessimistic"]
#: Allowed tie-breaking rules (the same choices as ``EvalConfig.tie_break``).
TIE_BREAKS: tuple[str, ...] = ("random", "stable_index", "optimistic", "pessimistic")


class MetricInputError(SbirError, ValueError):
    """Bad input to the metric functions (shape, dtype, NaN, empty gallery, ...)."""


# --------------------------------------------------------------------------- input checking


@dataclass
class _Inputs:
    scores: torch.Tensor | np.ndarray  # Q x G
    n_queries: int
    n_gallery: int
    query_labels: np.ndarray | None
    gallery_labels: np.ndarray | None
    pair_index: np.ndarray | None
    cut: int
    ks: tuple[int, ...]
    acc_ks: tuple[int, ...] | None
    query_chunk: int


def _int_labels(labels: Any, name: str, length: int, length_name: str) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise MetricInputError(f"{name} must be 1-D (one label per row), got shape {arr.shape}")
    if arr.shape[0] != length:
        raise MetricInputError(f"{name} has {arr.shape[0]} entries but the score matrix has {length} {length_name}")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise MetricInputError(
            f"{name} must be an integer array (class ids), got dtype {arr.dtype}; "
            "map class names to ids first (e.g. np.unique(names, return_inverse=True))"
        )
    return arr.astype(np.int64, copy=False)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise MetricInputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _positive_ints(values: Sequence[int], name: str) -> tuple[int, ...]:
    if isinstance(values, int | np.integer):
        values = (int(values),)
    out: list[int] = []
    for v in values:
        v = _positive_int(v, f"every entry of {name}")
        if v not in out:
            out.append(v)
    if not out:
        raise MetricInputError(f"{name} must not be empty")
    return tuple(out)


def _check_inputs(
    scores: Any,
    query_labels: Any,
    gallery_labels: Any,
    *,
    query_chunk: int,
    cut: int,
    ks: Sequence[int],
    pair_index: Any,
    acc_ks: Sequence[int],
) -> _Inputs:
    if isinstance(scores, torch.Tensor):
        if scores.is_complex() or scores.dtype == torch.bool:
            raise MetricInputError(f"scores must be real numbers, got dtype {scores.dtype}")
        shape = tuple(scores.shape)
    else:
        if not isinstance(scores, np.ndarray):
            scores = np.asarray(scores)
        if scores.dtype == bool or not (
            np.issubdtype(scores.dtype, np.floating) or np.issubdtype(scores.dtype, np.integer)
        ):
            raise MetricInputError(f"scores must be real numbers, got dtype {scores.dtype}")
        shape = scores.shape
    if len(shape) != 2:
        raise MetricInputError(f"scores must be a 2-D (queries x gallery) matrix, got shape {shape}")
    n_q, n_g = shape
    if n_q == 0:
        raise MetricInputError("scores has no rows: there are no queries to evaluate")
    if n_g == 0:
        raise MetricInputError("scores has no columns: the gallery is empty")
    if (query_labels is None) != (gallery_labels is None):
        raise MetricInputError("give both query_labels and gallery_labels, or neither (pair_index only)")
    ql = gl = None
    if query_labels is not None:
        ql = _int_labels(query_labels, "query_labels", n_q, "rows (queries)")
        gl = _int_labels(gallery_labels, "gallery_labels", n_g, "columns (gallery items)")
    pairs = None
    acc = None
    if pair_index is not None:
        pairs = _int_labels(pair_index, "pair_index", n_q, "rows (queries)")
        bad = (pairs < -1) | (pairs >= n_g)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise MetricInputError(
                f"pair_index[{i}] = {pairs[i]} is not a gallery column in [0, {n_g}) "
                "(use -1 for a query whose paired photo is not in the gallery)"
            )
        acc = _positive_ints(acc_ks, "acc_ks")
    elif ql is None:
        raise MetricInputError("no relevance given: pass query_labels and gallery_labels, or pair_index")
    return _Inputs(
        scores=scores,
        n_queries=n_q,
        n_gallery=n_g,
        query_labels=ql,
        gallery_labels=gl,
        pair_index=pairs,
        cut=_positive_int(cut, "cut"),
        ks=_positive_ints(ks, "ks"),
        acc_ks=acc,
        query_chunk=_positive_int(query_chunk, "query_chunk"),
    )


def _rows(scores: Any, q0: int, q1: int) -> np.ndarray:
    """Rows q0:q1 as a C-contiguous float32/float64 NumPy array (low precision widened exactly)."""
    if isinstance(scores, torch.Tensor):
        x = scores[q0:q1].detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        elif not x.is_floating_point():
            x = x.double()
        out = x.cpu().numpy()
    else:
        out = scores[q0:q1]
        if out.dtype == np.float16:
            out = out.astype(np.float32)
        elif not np.issubdtype(out.dtype, np.floating) or out.dtype.itemsize > 8:
            out = out.astype(np.float64)
    return np.ascontiguousarray(out)


def tie_keys(n_gallery: int, tie_break: str, tie_seed: int = 0) -> np.ndarray:
    """Per-gallery-item tie key: among equal scores, the smaller key ranks first.

    ``random``: a permutation of ``range(n_gallery)`` drawn with ``np.random.default_rng(tie_seed)``
    (the same key for every query, so the order is deterministic given the seed). ``stable_index``:
    the column index (gallery order). The optimistic / pessimistic rules use the key only to order
    relevant items among themselves, which does not change any metric.
    """
    if tie_break == "random":
        return np.random.default_rng(tie_seed).permutation(n_gallery).astype(np.int64)
    return np.arange(n_gallery, dtype=np.int64)


# --------------------------------------------------------------------------- core


def _searchsorted(sorted_rows: np.ndarray, values: np.ndarray, right: bool) -> np.ndarray:
    """Row-wise binary search (torch's batched searchsorted; zero-copy on NumPy buffers)."""
    return torch.searchsorted(torch.from_numpy(sorted_rows), torch.from_numpy(values), right=right).numpy()


def _reverse_cummax(x: np.ndarray) -> np.ndarray:
    return np.maximum.accumulate(x[:, ::-1], axis=1)[:, ::-1]


def _row_sum(x: np.ndarray) -> np.ndarray:
    """Sequential row sums: trailing zero padding never changes the result (chunking invariance)."""
    if x.shape[1] == 0:
        return np.zeros(x.shape[0])
    return np.cumsum(x, axis=1)[:, -1]


def _metrics_from_ranks(
    ranks: np.ndarray, valid: np.ndarray, r: np.ndarray, n_gallery: int, cut: int, ks: tuple[int, ...]
) -> dict[str, np.ndarray]:
    """All label metrics from the ascending 1-based ranks of each query's relevant items.

    ``ranks``/``valid``: chunk x Rmax, the first ``r[q]`` entries of row q are valid and ascending.
    """
    m = np.arange(1, ranks.shape[1] + 1, dtype=np.float64)
    rank_f = np.where(valid, ranks, 1).astype(np.float64)
    prec = np.where(valid, m[None, :] / rank_f, 0.0)  # precision at each hit (TP = m at rank r_m)
    rf = np.maximum(r, 1).astype(np.float64)
    c = min(cut, n_gallery)
    in_cut = valid & (ranks <= c)
    prec_c = np.where(in_cut, prec, 0.0)
    tp_c = in_cut.sum(axis=1)
    sum_c = _row_sum(prec_c)
    out = {
        "map_all_voc": _row_sum(_reverse_cummax(prec)) / rf,
        "map_all_plain": _row_sum(prec) / rf,
        f"map_{cut}_voc_strict": _row_sum(_reverse_cummax(prec_c)) / np.minimum(rf, c),
        f"map_{cut}_plain_strict": sum_c / np.minimum(rf, c),
        f"map_{cut}_plain_lenient": np.where(tp_c > 0, sum_c / np.maximum(tp_c, 1), 0.0),
        f"map_{cut}_plain_overR": sum_c / rf,
    }
    for k in ks:
        kk = min(k, n_gallery)
        out[f"p_{k}"] = (valid & (ranks <= kk)).sum(axis=1) / kk
    for k in ks:
        mk = np.minimum(k, np.maximum(r, 1))
        out[f"p_{k}_minR"] = (valid & (ranks <= mk[:, None])).sum(axis=1) / mk
    out[f"rel_at_{cut}"] = (valid & (ranks == c)).any(axis=1).astype(np.float64)
    return out


def _relevant_ranks(
    s: np.ndarray,
    v: np.ndarray,
    cols: np.ndarray,
    valid: np.ndarray,
    modes: tuple[str, ...],
    keys: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Ascending 1-based ranks of the relevant items of each row, per tie mode.

    ``s``: chunk x G scores; ``v``: the same rows sorted ascending; ``cols``: chunk x Rmax relevant
    gallery columns (valid prefix given by ``valid``). Returns chunk x Rmax int64 arrays whose valid
    prefix is ascending.
    """
    n_g = s.shape[1]
    rmax = cols.shape[1]
    neg = -np.take_along_axis(s, cols, axis=1)
    neg[~valid] = np.nan  # padding sorts after every real value, -inf included
    order = np.argsort(neg, axis=1)
    rel_cols = np.take_along_axis(cols, order, axis=1)
    rel_sorted = np.negative(np.take_along_axis(neg, order, axis=1))  # descending, padding last
    le = _searchsorted(v, rel_sorted, right=False)  # items strictly below
    gt = n_g - _searchsorted(v, rel_sorted, right=True)  # items strictly above
    eq = n_g - gt - le  # items tied with it (including itself)
    # Runs of equal values among the relevant items (NaN padding never equals anything).
    pos = np.arange(rmax)
    new = np.ones_like(valid)
    new[:, 1:] = rel_sorted[:, 1:] != rel_sorted[:, :-1]
    run_start = np.maximum.accumulate(np.where(new, pos, 0), axis=1)
    last = np.ones_like(valid)
    last[:, :-1] = new[:, 1:]
    run_end = np.minimum.accumulate(np.where(last, pos, rmax)[:, ::-1], axis=1)[:, ::-1]
    n_rel_tied = run_end - run_start + 1
    optimistic = gt + 1 + (pos[None, :] - run_start)  # relevant items fill the first slots of their tie group
    mixed = valid & (eq > n_rel_tied)  # relevant items tied with at least one irrelevant item
    out: dict[str, np.ndarray] = {}
    for mode in modes:
        if mode == "optimistic":
            out[mode] = optimistic
        elif mode == "pessimistic":
            out[mode] = optimistic + (eq - n_rel_tied)  # ... or the last slots
        elif not mixed.any():
            out[mode] = optimistic  # ties only among relevant items: every order gives these ranks
        else:
            ranks = optimistic.copy()
            mr, mc = np.nonzero(mixed)
            before = _tied_before(s, v, mr, rel_sorted[mr, mc], rel_cols[mr, mc], le[mr, mc], keys[mode])
            ranks[mr, mc] = gt[mr, mc] + 1 + before
            rows = np.unique(mr)
            sub = np.where(valid[rows], ranks[rows], np.iinfo(np.int64).max)
            sub.sort(axis=1)
            ranks[rows] = sub
            out[mode] = ranks
    return out


#: Above this many mixed-tie items in a row, one composite-key sort of the row is cheaper than
#: scanning the row once per item.
_DIRECT_TIE_LIMIT = 8


def _value_codes(s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Integer codes that order like the scores and are equal exactly for tied scores.

    float32: the IEEE bit pattern made monotone (O(G), no search), returned pre-shifted by 32 bits so
    a tie key fits below. float64: the number of strictly smaller scores (binary search in the sorted
    row), scaled by G. Returns (codes, scale) with codes = ordinal * scale.
    """
    if s.dtype == np.float32:
        bits = (s + np.float32(0.0)).view(np.int32)  # +0.0 turns -0.0 into +0.0 (they compare equal)
        ordinal = np.where(bits < 0, bits ^ np.int32(0x7FFFFFFF), bits).astype(np.int64)
        return ordinal << 32
    return _searchsorted(v, s, right=False) * v.shape[1]


def _tied_before(
    s: np.ndarray,
    v: np.ndarray,
    rows: np.ndarray,
    values: np.ndarray,
    item_cols: np.ndarray,
    below: np.ndarray,
    key: np.ndarray,
) -> np.ndarray:
    """For items (rows[i], item_cols[i]) with score values[i]: how many items of that row tie with
    it and have a smaller tie key (so rank before it). ``rows`` must be non-decreasing.

    Rows with few such items scan the row once per item. Rows with many (heavily tied scores, e.g.
    fp16) sort a composite integer key (value code, tie key) once and binary-search it: the items
    before (value, key) minus ``below`` (the items with a strictly smaller score).
    """
    out = np.empty(rows.shape[0], dtype=np.int64)
    row_ids, first, counts = np.unique(rows, return_index=True, return_counts=True)
    per_item = np.repeat(counts, counts)
    light = np.flatnonzero(per_item <= _DIRECT_TIE_LIMIT)
    block = max(1, s.shape[0])  # temporaries stay within chunk x G
    for b0 in range(0, light.size, block):
        idx = light[b0 : b0 + block]
        tied = s[rows[idx]] == values[idx, None]
        out[idx] = (tied & (key[None, :] < key[item_cols[idx]][:, None])).sum(axis=1)
    heavy = np.flatnonzero(counts > _DIRECT_TIE_LIMIT)
    for b0 in range(0, heavy.size, block):
        hb = heavy[b0 : b0 + block]
        rr = row_ids[hb]
        codes = _value_codes(s[rr], v[rr])
        codes += key[None, :]
        codes.sort(axis=1)
        # Items of these rows as a padded (rows x max items) matrix; padding searches harmlessly.
        width = int(counts[hb].max())
        slot = np.arange(width)[None, :]
        present = slot < counts[hb, None]
        idx = np.where(present, first[hb, None] + slot, first[hb, None])
        item_codes = _value_codes(values[idx], v[rr])
        queries = np.ascontiguousarray(item_codes + key[item_cols[idx]])
        found = _searchsorted(codes, queries, right=False)
        out[idx[present]] = found[present] - below[idx[present]]
    return out


def _pair_ranks(s: np.ndarray, pairs: np.ndarray, modes: tuple[str, ...], keys: dict[str, np.ndarray]) -> dict:
    """1-based rank of each query's paired gallery column, per tie mode (pairs must be >= 0)."""
    ps = s[np.arange(s.shape[0]), pairs][:, None]
    gt = (s > ps).sum(axis=1)
    tied = s == ps
    out = {}
    for mode in modes:
        if mode == "optimistic":
            before = 0
        elif mode == "pessimistic":
            before = tied.sum(axis=1) - 1
        else:
            key = keys[mode]
            before = (tied & (key[None, :] < key[pairs][:, None])).sum(axis=1)
        out[mode] = gt + 1 + before
    return out


def _evaluate(inp: _Inputs, modes: tuple[str, ...], tie_seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Per-query metric arrays (NaN where the query is excluded) for each tie mode."""
    n_q, n_g = inp.n_queries, inp.n_gallery
    keys = {m: tie_keys(n_g, m, tie_seed) for m in modes if m in ("random", "stable_index")}
    label_names = metric_names(inp.cut, inp.ks) if inp.query_labels is not None else []
    acc_names = [f"acc_{k}" for k in inp.acc_ks] if inp.acc_ks is not None else []
    res = {m: {n: np.full(n_q, np.nan) for n in label_names + acc_names} for m in modes}

    if inp.query_labels is not None:
        g_order = np.argsort(inp.gallery_labels, kind="stable")
        g_sorted = inp.gallery_labels[g_order]
        start = np.searchsorted(g_sorted, inp.query_labels, side="left")
        n_rel = np.searchsorted(g_sorted, inp.query_labels, side="right") - start

    def block(q0: int, q1: int) -> None:
        s = _rows(inp.scores, q0, q1)
        v = np.sort(s, axis=1)  # NaN sorts last
        if np.isnan(v[:, -1]).any():
            row = q0 + int(np.flatnonzero(np.isnan(v[:, -1]))[0])
            raise MetricInputError(
                f"scores contain NaN (first in query row {row}); fix the model output or mask those "
                "entries with -inf before computing metrics"
            )
        if inp.query_labels is not None:
            r = n_rel[q0:q1]
            rmax = int(r.max())
            if rmax:
                valid = np.arange(rmax)[None, :] < r[:, None]
                cols = g_order[np.where(valid, start[q0:q1, None] + np.arange(rmax)[None, :], 0)]
                ranks = _relevant_ranks(s, v, cols, valid, modes, keys)
                has = r > 0
                for mode in modes:
                    values = _metrics_from_ranks(ranks[mode], valid, r, n_g, inp.cut, inp.ks)
                    for name, arr in values.items():
                        res[mode][name][q0:q1] = np.where(has, arr, np.nan)
        if inp.pair_index is not None:
            p = inp.pair_index[q0:q1]
            ok = p >= 0
            if ok.any():
                pranks = _pair_ranks(s[ok], p[ok], modes, keys)
                for mode in modes:
                    for k in inp.acc_ks:
                        res[mode][f"acc_{k}"][q0 + np.flatnonzero(ok)] = 100.0 * (pranks[mode] <= k)

    # Each chunk is split across the torch thread count (NumPy's sort releases the GIL), so at most
    # query_chunk rows are in flight; every query's values are independent of the split.
    workers = max(1, min(torch.get_num_threads(), inp.query_chunk))
    if workers == 1 or n_q < 2 * workers:
        for q0 in range(0, n_q, inp.query_chunk):
            block(q0, min(q0 + inp.query_chunk, n_q))
        return res
    with ThreadPoolExecutor(workers, thread_name_prefix="sbir-metrics") as pool:
        for q0 in range(0, n_q, inp.query_chunk):
            q1 = min(q0 + inp.query_chunk, n_q)
            edges = np.linspace(q0, q1, workers + 1).round().astype(int)
            parts = [(int(a), int(b)) for a, b in pairwise(edges.tolist()) if b > a]
            for fut in [pool.submit(block, a, b) for a, b in parts]:
                fut.result()
    return res


def _aggregate(inp: _Inputs, per_query: dict[str, np.ndarray]) -> dict[str, float]:
    out: dict[str, float] = {}
    if inp.query_labels is not None:
        names = metric_names(inp.cut, inp.ks)
        used = ~np.isnan(per_query[names[0]])
        n_used = int(used.sum())
        if n_used == 0:
            raise MetricInputError(
                "no query has a relevant gallery item (R = 0 for every query): check that query and "
                "gallery labels use the same class-id space"
            )
        for name in names:
            out[name] = float(np.mean(per_query[name][used]))
    if inp.acc_ks is not None:
        used_p = inp.pair_index >= 0
        if not used_p.any():
            raise MetricInputError("every pair_index entry is -1: no query has its paired photo in the gallery")
        for k in inp.acc_ks:
            out[f"acc_{k}"] = float(np.mean(per_query[f"acc_{k}"][used_p]))
    if inp.query_labels is not None:
        out["n_queries"] = float(n_used)
        out["n_queries_no_relevant"] = float(inp.n_queries - n_used)
    if inp.acc_ks is not None:
        out["n_queries_pair"] = float(used_p.sum())
        out["n_queries_no_pair"] = float(inp.n_queries - used_p.sum())
    return out


# --------------------------------------------------------------------------- public API


def compute_per_query_metrics(
    scores: Any,
    query_labels: Any,
    gallery_labels: Any,
    *,
    tie_break: TieBreak = "random",
    tie_seed: int = 0,
    query_chunk: int = 256,
    cut: int = 200,
    ks: Sequence[int] = (100, 200),
    pair_index: Any = None,
    acc_ks: Sequence[int] = (1, 5, 10),
) -> dict[str, np.ndarray]:
    """Per-query values of every metric (float64 arrays of length Q; NaN for excluded queries).

    Same arguments as :func:`compute_metrics`. Useful for per-class breakdowns and significance
    tests; ``compute_metrics`` is the mean over the non-NaN entries.
    """
    inp = _check_inputs(
        scores, query_labels, gallery_labels,
        query_chunk=query_chunk, cut=cut, ks=ks, pair_index=pair_index, acc_ks=acc_ks,
    )  # fmt: skip
    _check_tie(tie_break)
    return _evaluate(inp, (tie_break,), tie_seed)[tie_break]


def compute_metrics(
    scores: Any,
    query_labels: Any,
    gallery_labels: Any,
    *,
    tie_break: TieBreak = "random",
    tie_seed: int = 0,
    query_chunk: int = 256,
    cut: int = 200,
    ks: Sequence[int] = (100, 200),
    pair_index: Any = None,
    acc_ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Every named retrieval metric of docs/metrics.md for one score matrix, as ``{name: value}``.

    Args:
        scores: Q x G similarity matrix (torch tensor on any device, or NumPy array; higher = more
            similar). fp16/bf16 are widened exactly; NaN is rejected, ±inf is allowed.
        query_labels, gallery_labels: integer class ids (length Q and G); relevant = same id.
            Both may be None when ``pair_index`` is given (then only ``acc_K`` is reported).
        tie_break: ``random`` (default; seeded random key per gallery item, the same for all
            queries), ``stable_index`` (gallery order; biased on class-contiguous galleries),
            ``optimistic`` (relevant first among ties) or ``pessimistic`` (relevant last).
        tie_seed: seed of the random tie key (record it with the results).
        query_chunk: queries per chunk; peak extra memory is a few chunk x G arrays.
        cut: depth of the ``map_{cut}_*`` and ``rel_at_{cut}`` variants (capped at G).
        ks: precision depths for ``p_K`` (denominator min(K, G)) and ``p_K_minR`` (min(K, R)).
        pair_index: optional Q ints, the gallery column of each query's paired photo
            (fine-grained); -1 = not in the gallery (excluded from acc and counted).
        acc_ks: depths of ``acc_K`` (percent of queries whose paired photo has rank <= K).

    Returns:
        AP values and precisions in [0, 1], ``acc_K`` in percent, and counts ``n_queries`` (queries
        averaged over) and ``n_queries_no_relevant`` (R = 0, excluded); with a pair index also
        ``n_queries_pair`` and ``n_queries_no_pair``.

    Raises:
        MetricInputError: bad shapes, dtypes, NaN scores, empty gallery, bad options, or no query
            with any relevant item.
    """
    inp = _check_inputs(
        scores, query_labels, gallery_labels,
        query_chunk=query_chunk, cut=cut, ks=ks, pair_index=pair_index, acc_ks=acc_ks,
    )  # fmt: skip
    _check_tie(tie_break)
    return _aggregate(inp, _evaluate(inp, (tie_break,), tie_seed)[tie_break])


def tie_spread(
    scores: Any,
    query_labels: Any,
    gallery_labels: Any,
    *,
    tie_break: TieBreak = "random",
    tie_seed: int = 0,
    query_chunk: int = 256,
    cut: int = 200,
    ks: Sequence[int] = (100, 200),
    pair_index: Any = None,
    acc_ks: Sequence[int] = (1, 5, 10),
) -> dict[str, dict[str, float]]:
    """Optimistic and pessimistic bounds of every metric, computed in one pass with ``tie_break``.

    Returns ``{"optimistic": {...}, "pessimistic": {...}, tie_break: {...}, "spread": {...}}``
    where ``spread[name] = optimistic - pessimistic`` (0 for every metric when no relevant item
    ties with an irrelevant one). Sorting work is shared, so this costs little more than one
    :func:`compute_metrics` call.
    """
    inp = _check_inputs(
        scores, query_labels, gallery_labels,
        query_chunk=query_chunk, cut=cut, ks=ks, pair_index=pair_index, acc_ks=acc_ks,
    )  # fmt: skip
    _check_tie(tie_break)
    modes = tuple(dict.fromkeys(("optimistic", "pessimistic", tie_break)))
    per_mode = _evaluate(inp, modes, tie_seed)
    out = {mode: _aggregate(inp, per_mode[mode]) for mode in modes}
    out["spread"] = {
        name: out["optimistic"][name] - out["pessimistic"][name]
        for name in out["optimistic"]
        if not name.startswith("n_")
    }
    return out


def _check_tie(tie_break: str) -> None:
    if tie_break not in TIE_BREAKS:
        raise MetricInputError(f"tie_break must be one of {', '.join(TIE_BREAKS)}; got {tie_break!r}")
