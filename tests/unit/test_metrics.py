"""Metrics (docs/metrics.md) against a plain per-query reference, sklearn, and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from sbir.metrics import (
    TIE_BREAKS,
    MetricInputError,
    compute_metrics,
    compute_per_query_metrics,
    format_metrics,
    metric_names,
    tie_keys,
    tie_spread,
)

# --------------------------------------------------------------------------- reference


def ref_order(s: np.ndarray, rel: np.ndarray, mode: str, key: np.ndarray) -> list[int]:
    """Gallery columns in ranked order, by an explicit sort key per item (the spec, literally)."""
    n = len(s)
    if mode in ("random", "stable_index"):
        return sorted(range(n), key=lambda j: (-s[j], key[j]))
    if mode == "optimistic":
        return sorted(range(n), key=lambda j: (-s[j], not rel[j], j))
    return sorted(range(n), key=lambda j: (-s[j], bool(rel[j]), j))


def ref_query(s, rel, mode, key, cut, ks):
    """All label metrics of one query from the definitions in docs/metrics.md#metric-names (None if R = 0)."""
    n = len(s)
    order = ref_order(s, rel, mode, key)
    y = [int(rel[j]) for j in order]
    big_r = sum(y)
    if big_r == 0:
        return None
    tp = np.cumsum(y)
    prec = [tp[k] / (k + 1) for k in range(n)]

    def ap(c, interp, z):
        total = 0.0
        for k in range(c):
            if y[k]:
                total += max(prec[k:c]) if interp == "voc" else prec[k]
        return 0.0 if z == 0 else total / z

    c = min(cut, n)
    out = {
        "map_all_voc": ap(n, "voc", big_r),
        "map_all_plain": ap(n, "plain", big_r),
        f"map_{cut}_voc_strict": ap(c, "voc", min(big_r, c)),
        f"map_{cut}_plain_strict": ap(c, "plain", min(big_r, c)),
        f"map_{cut}_plain_lenient": ap(c, "plain", tp[c - 1]),
        f"map_{cut}_plain_overR": ap(c, "plain", big_r),
    }
    for k in ks:
        kk = min(k, n)
        out[f"p_{k}"] = tp[kk - 1] / kk
    for k in ks:
        m = min(k, big_r)
        out[f"p_{k}_minR"] = tp[m - 1] / m
    out[f"rel_at_{cut}"] = float(y[c - 1])
    return out


def ref_metrics(scores, ql, gl, mode="random", seed=0, cut=200, ks=(100, 200), pairs=None, acc_ks=(1, 5, 10)):
    scores = np.asarray(scores, dtype=np.float64)
    key = tie_keys(scores.shape[1], mode, seed)
    per = []
    for q in range(scores.shape[0]):
        got = ref_query(scores[q], gl == ql[q], mode, key, cut, ks)
        if got is not None:
            per.append(got)
    out = {name: float(np.mean([p[name] for p in per])) for name in per[0]}
    if pairs is not None:
        hits = {k: [] for k in acc_ks}
        for q in range(scores.shape[0]):
            if pairs[q] < 0:
                continue
            rel = np.zeros(scores.shape[1], bool)
            rel[pairs[q]] = True
            rank = ref_order(scores[q], rel, mode, key).index(pairs[q]) + 1
            for k in acc_ks:
                hits[k].append(100.0 * (rank <= k))
        out.update({f"acc_{k}": float(np.mean(hits[k])) for k in acc_ks})
    out["n_queries"] = float(len(per))
    out["n_queries_no_relevant"] = float(scores.shape[0] - len(per))
    return out


def assert_close(got: dict, want: dict, atol: float = 1e-9) -> None:
    for name, value in want.items():
        assert name in got, name
        assert got[name] == pytest.approx(value, abs=atol), (name, got[name], value)


def tied_problem(seed: int, n_q: int = 12, n_g: int = 60, n_cls: int = 4, decimals: int = 1):
    rng = np.random.default_rng(seed)
    scores = rng.random((n_q, n_g)).round(decimals)
    ql = rng.integers(0, n_cls, n_q)
    gl = rng.integers(0, n_cls, n_g)
    return scores, ql, gl


# --------------------------------------------------------------------------- against the reference


@pytest.mark.parametrize("mode", TIE_BREAKS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_with_ties(mode, seed):
    scores, ql, gl = tied_problem(seed)
    kw = {"cut": 20, "ks": (5, 30, 100)}
    got = compute_metrics(scores, ql, gl, tie_break=mode, tie_seed=seed, **kw)
    assert_close(got, ref_metrics(scores, ql, gl, mode, seed, **kw))
    assert list(got)[: len(metric_names(20, (5, 30, 100)))] == metric_names(20, (5, 30, 100))


@pytest.mark.parametrize("mode", TIE_BREAKS)
def test_matches_reference_heavy_ties_and_small_gallery(mode):
    # Two distinct score values only, gallery smaller than the cut and the precision depths.
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 2, (15, 40)).astype(np.float32)
    ql, gl = rng.integers(0, 3, 15), rng.integers(0, 3, 40)
    got = compute_metrics(scores, ql, gl, tie_break=mode, tie_seed=3)
    assert_close(got, ref_metrics(scores, ql, gl, mode, 3), atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("decimals", [1, 2, 3])
def test_matches_reference_sparse_and_dense_ties(dtype, decimals):
    # Few ties (decimals=3: row scans) and many (decimals=1: composite-key sort), both dtypes.
    scores, ql, gl = tied_problem(10 + decimals, n_q=10, n_g=150, n_cls=3, decimals=decimals)
    scores = scores.astype(dtype)
    for mode in ("random", "stable_index"):
        got = compute_metrics(scores, ql, gl, tie_break=mode, tie_seed=1, cut=40, ks=(10, 40))
        assert_close(got, ref_metrics(scores, ql, gl, mode, 1, cut=40, ks=(10, 40)), atol=1e-9)


def test_signed_zero_and_infinities_tie_correctly():
    rng = np.random.default_rng(12)
    scores = rng.choice(np.array([0.0, -0.0, 1.0, -np.inf, np.inf], dtype=np.float32), size=(12, 70))
    ql, gl = rng.integers(0, 3, 12), rng.integers(0, 3, 70)
    for mode in TIE_BREAKS:
        got = compute_metrics(scores, ql, gl, tie_break=mode, cut=30, ks=(10,))
        assert_close(got, ref_metrics(scores, ql, gl, mode, 0, cut=30, ks=(10,)), atol=1e-9)


@pytest.mark.parametrize("mode", TIE_BREAKS)
def test_matches_reference_with_pairs(mode):
    scores, ql, gl = tied_problem(4, n_q=20, n_g=30)
    pairs = np.random.default_rng(5).integers(-1, 30, 20)
    pairs[0] = -1
    got = compute_metrics(scores, ql, gl, tie_break=mode, cut=10, ks=(10,), pair_index=pairs)
    want = ref_metrics(scores, ql, gl, mode, 0, cut=10, ks=(10,), pairs=pairs)
    assert_close(got, want)
    assert got["n_queries_pair"] == float((pairs >= 0).sum())
    assert got["n_queries_no_pair"] == float((pairs < 0).sum())


def test_tie_free_agrees_across_modes_and_with_sklearn():
    rng = np.random.default_rng(11)
    scores = rng.standard_normal((10, 500))
    ql, gl = rng.integers(0, 5, 10), rng.integers(0, 5, 500)
    results = [compute_metrics(scores, ql, gl, tie_break=m) for m in TIE_BREAKS]
    for other in results[1:]:
        assert_close(other, results[0], atol=0)
    # map_all_plain = sklearn AP on the whole row; lenient @200 = sklearn AP on the top-200 slice.
    plain, lenient = [], []
    for q in range(10):
        y = gl == ql[q]
        plain.append(average_precision_score(y, scores[q]))
        top = np.argsort(-scores[q])[:200]
        lenient.append(average_precision_score(y[top], scores[q][top]) if y[top].any() else 0.0)
    assert results[0]["map_all_plain"] == pytest.approx(np.mean(plain), abs=1e-12)
    assert results[0]["map_200_plain_lenient"] == pytest.approx(np.mean(lenient), abs=1e-12)


# --------------------------------------------------------------------------- hand-computed cases


def test_protocols_example_p100():
    # R = 40: hits at ranks 1-30 and 51-60 (the example in docs/metrics.md#metric-names).
    n_g = 300
    rel_ranks = list(range(1, 31)) + list(range(51, 61))
    scores = -np.arange(1, n_g + 1, dtype=np.float64)[None, :]  # column j has rank j + 1
    gl = np.zeros(n_g, dtype=np.int64)
    gl[[r - 1 for r in rel_ranks]] = 1
    got = compute_metrics(scores, np.array([1]), gl, ks=(100,))
    assert got["p_100_minR"] == pytest.approx(0.75)
    assert got["p_100"] == pytest.approx(0.40)
    plain = (30 + sum((30 + i) / (50 + i) for i in range(1, 11))) / 40
    assert got["map_all_plain"] == pytest.approx(plain)
    # VOC: precision rises from 31/51 to 40/60 over the second block, so those hits get 2/3.
    assert got["map_all_voc"] == pytest.approx((30 + 10 * 40 / 60) / 40)
    assert got["map_200_plain_lenient"] == pytest.approx(plain)
    assert got["rel_at_200"] == 0.0


def test_voc_envelope_hand_case():
    # Relevance by rank: 0 1 0 1 1 (R = 3). Plain: (1/2 + 2/4 + 3/5) / 3. VOC: (3/5 + 3/5 + 3/5) / 3.
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    gl = np.array([0, 1, 0, 1, 1])
    got = compute_metrics(scores, np.array([1]), gl, cut=4, ks=(2,))
    assert got["map_all_plain"] == pytest.approx((0.5 + 0.5 + 0.6) / 3)
    assert got["map_all_voc"] == pytest.approx(0.6)
    # cut 4: hits at 2, 4. plain sum = 1/2 + 2/4 = 1; voc sum = 1/2 + 1/2 = 1.
    assert got["map_4_plain_strict"] == pytest.approx(1 / 3)
    assert got["map_4_plain_lenient"] == pytest.approx(1 / 2)
    assert got["map_4_plain_overR"] == pytest.approx(1 / 3)
    assert got["map_4_voc_strict"] == pytest.approx(1 / 3)
    assert got["p_2"] == pytest.approx(0.5) and got["p_2_minR"] == pytest.approx(0.5)
    assert got["rel_at_4"] == 1.0


def test_lenient_is_zero_without_hits_in_cut():
    scores = np.array([[3.0, 2.0, 1.0]])
    got = compute_metrics(scores, np.array([1]), np.array([0, 0, 1]), cut=2)
    assert got["map_2_plain_lenient"] == 0.0 and got["map_2_voc_strict"] == 0.0


def test_tie_modes_hand_case():
    # One tie group of 4 with 1 relevant item at column 3; stable_index puts it last.
    scores = np.ones((1, 4))
    gl = np.array([0, 0, 0, 1])
    ql = np.array([1])
    assert compute_metrics(scores, ql, gl, tie_break="optimistic")["map_all_plain"] == 1.0
    assert compute_metrics(scores, ql, gl, tie_break="pessimistic")["map_all_plain"] == 0.25
    assert compute_metrics(scores, ql, gl, tie_break="stable_index")["map_all_plain"] == 0.25
    key = tie_keys(4, "random", 0)
    want = 1.0 / (1 + int((key < key[3]).sum()))
    assert compute_metrics(scores, ql, gl, tie_break="random")["map_all_plain"] == pytest.approx(want)


# --------------------------------------------------------------------------- properties


def test_chunking_invariance():
    scores, ql, gl = tied_problem(3, n_q=37, n_g=80, n_cls=6)
    for mode in TIE_BREAKS:
        a = compute_metrics(scores, ql, gl, tie_break=mode, query_chunk=1)
        b = compute_metrics(scores, ql, gl, tie_break=mode, query_chunk=7)
        c = compute_metrics(scores, ql, gl, tie_break=mode, query_chunk=10_000)
        assert a == b == c


def test_thread_count_invariance():
    scores, ql, gl = tied_problem(13, n_q=50, n_g=90, n_cls=5, decimals=2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = compute_metrics(scores, ql, gl, query_chunk=16, pair_index=np.arange(50))
        torch.set_num_threads(2)
        threaded = compute_metrics(scores, ql, gl, query_chunk=16, pair_index=np.arange(50))
    finally:
        torch.set_num_threads(before)
    assert serial == threaded


def test_random_tie_break_deterministic_given_seed():
    scores, ql, gl = tied_problem(5, n_q=30, n_g=100)
    a = compute_metrics(scores, ql, gl, tie_seed=123)
    b = compute_metrics(scores, ql, gl, tie_seed=123)
    c = compute_metrics(scores, ql, gl, tie_seed=124)
    assert a == b
    assert a != c  # with this many ties a different key changes something
    assert np.array_equal(tie_keys(100, "random", 9), tie_keys(100, "random", 9))


def test_optimistic_ge_random_ge_pessimistic():
    scores, ql, gl = tied_problem(6, n_q=40, n_g=120, decimals=1)
    spread = tie_spread(scores, ql, gl, cut=50, ks=(10, 50), tie_seed=2)
    assert set(spread) == {"optimistic", "pessimistic", "random", "spread"}
    for name, opt in spread["optimistic"].items():
        if name.startswith("n_") or name.startswith("rel_at"):
            continue  # rel_at_c is a single position: not monotone in the tie rule
        assert opt >= spread["random"][name] - 1e-12 >= spread["pessimistic"][name] - 2e-12, name
        assert spread["spread"][name] == pytest.approx(opt - spread["pessimistic"][name])
    # The spread pass agrees with separate calls.
    for mode in ("optimistic", "pessimistic", "random"):
        alone = compute_metrics(scores, ql, gl, tie_break=mode, cut=50, ks=(10, 50), tie_seed=2)
        assert_close(spread[mode], alone, atol=0)


def test_zero_relevant_queries_excluded_and_counted():
    scores, ql, gl = tied_problem(8, n_q=10, n_g=50, n_cls=3)
    ql = ql.copy()
    ql[[2, 5]] = 99  # not in the gallery
    got = compute_metrics(scores, ql, gl)
    assert got["n_queries"] == 8 and got["n_queries_no_relevant"] == 2
    keep = ql != 99
    assert_close(got, compute_metrics(scores[keep], ql[keep], gl) | {"n_queries_no_relevant": 2.0}, atol=0)
    per = compute_per_query_metrics(scores, ql, gl)
    assert np.isnan(per["map_all_voc"][[2, 5]]).all() and not np.isnan(per["map_all_voc"][keep]).any()


def test_torch_and_low_precision_inputs():
    scores, ql, gl = tied_problem(9, n_q=8, n_g=40)
    np_res = compute_metrics(scores.astype(np.float32), ql, gl)
    t_res = compute_metrics(torch.tensor(scores, dtype=torch.float32, requires_grad=True), torch.tensor(ql), gl)
    assert np_res == t_res
    half = torch.tensor(scores, dtype=torch.float16)
    assert_close(compute_metrics(half, ql, gl), ref_metrics(half.float().numpy(), ql, gl), atol=1e-6)


def test_pair_only_and_signed_zero():
    scores = np.array([[0.0, -0.0, 1.0], [1.0, 0.5, 0.5]])
    got = compute_metrics(scores, None, None, pair_index=np.array([1, 2]), acc_ks=(1, 2), tie_break="pessimistic")
    # Query 0: -0.0 ties with 0.0 behind 1.0 -> pessimistic rank 3. Query 1: tie at rank 2-3 -> 3.
    assert got == {"acc_1": 0.0, "acc_2": 0.0, "n_queries_pair": 2.0, "n_queries_no_pair": 0.0}
    opt = compute_metrics(scores, None, None, pair_index=np.array([1, 2]), acc_ks=(2,), tie_break="optimistic")
    assert opt["acc_2"] == 100.0


def test_format_metrics():
    got = compute_metrics(*tied_problem(1), pair_index=np.arange(12))
    text = format_metrics(got)
    assert "map_all_voc" in text and "n_queries" in text and "acc_1" in text
    assert format_metrics(got, markdown=True).startswith("| metric | value |")


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((np.zeros(5), [0], [0]), {}, "2-D"),
        ((np.zeros((2, 0)), [0, 1], []), {}, "gallery is empty"),
        ((np.zeros((0, 3)), [], [0, 1, 2]), {}, "no queries"),
        ((np.zeros((2, 3)), [0], [0, 1, 2]), {}, "query_labels has 1 entries"),
        ((np.zeros((2, 3)), [0, 1], [0, 1]), {}, "gallery_labels has 2 entries"),
        ((np.zeros((2, 3)), [0.5, 1.0], [0, 1, 2]), {}, "integer array"),
        ((np.array([[0.1, np.nan, 0.3]]), [0], [0, 1, 2]), {}, "NaN"),
        ((np.zeros((1, 3)), [7], [0, 1, 2]), {}, "same class-id space"),
        ((np.zeros((1, 3)), [0], [0, 1, 2]), {"tie_break": "first"}, "tie_break must be one of"),
        ((np.zeros((1, 3)), [0], [0, 1, 2]), {"query_chunk": 0}, "query_chunk"),
        ((np.zeros((1, 3)), [0], [0, 1, 2]), {"cut": 0}, "cut"),
        ((np.zeros((1, 3)), [0], [0, 1, 2]), {"ks": (10, -1)}, "ks"),
        ((np.zeros((1, 3)), [0], [0, 1, 2]), {"pair_index": [3]}, "pair_index"),
        ((np.zeros((1, 3)), None, None), {}, "no relevance"),
        ((np.zeros((1, 3), dtype=bool), [0], [0, 1, 2]), {}, "real numbers"),
    ],
)
def test_bad_input(args, kwargs, match):
    with pytest.raises(MetricInputError, match=match):
        compute_metrics(*args, **kwargs)
