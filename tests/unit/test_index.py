"""Tests for sbir.inference.index.EmbeddingIndex (flat / ivf / hnsw over FAISS)."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from sbir.inference.index import FORMAT_VERSION, EmbeddingIndex, IndexFileError

DIM = 16
KINDS = ["flat", "ivf", "hnsw"]


def _normed(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _make(kind: str, dim: int = DIM) -> EmbeddingIndex:
    """Small indexes whose approximate kinds are configured to be exact (for comparisons)."""
    return EmbeddingIndex(dim, kind, nlist=8, nprobe=8, hnsw_m=16, ef_search=512)


def _brute_force(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = q.astype(np.float64) @ x.astype(np.float64).T
    order = np.lexsort((np.broadcast_to(ids, scores.shape), -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = _normed(400, seed=1)
    ids = np.random.default_rng(2).permutation(10_000)[:400].astype(np.int64)
    q = _normed(25, seed=3)
    return x, ids, q


# ------------------------------------------------------------------ correctness


def test_flat_matches_numpy_brute_force(data):
    x, ids, q = data
    index = EmbeddingIndex(DIM)
    index.add(x, ids)
    for k in (1, 10, 50):
        scores, got = index.search(q, k)
        ref_scores, ref_ids = _brute_force(x, ids, q, k)
        assert scores.dtype == np.float32 and got.dtype == np.int64
        assert scores.shape == got.shape == (len(q), k)
        np.testing.assert_array_equal(got, ref_ids)
        np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_match_flat_when_configured_exhaustively(kind, data):
    x, ids, q = data
    flat, approx = EmbeddingIndex(DIM), _make(kind)
    flat.add(x, ids)
    approx.add(x, ids)
    k = 10
    f_scores, f_ids = flat.search(q, k)
    a_scores, a_ids = approx.search(q, k)
    recall = np.mean([len(set(a) & set(f)) / k for a, f in zip(a_ids, f_ids, strict=True)])
    assert recall == 1.0
    np.testing.assert_array_equal(a_ids, f_ids)
    np.testing.assert_allclose(a_scores, f_scores, atol=1e-5)


def test_flat_ties_break_by_ascending_id_even_past_the_fetch_margin():
    # 60 identical vectors (exactly representable scores) tie at 1.0; 5 orthogonal ones score 0.
    dim = 4
    tied_ids = np.random.default_rng(0).permutation(np.arange(100, 160)).astype(np.int64)
    tied = np.tile(np.array([[1.0, 0.0, 0.0, 0.0]], dtype=np.float32), (60, 1))
    other = np.tile(np.array([[0.0, 1.0, 0.0, 0.0]], dtype=np.float32), (5, 1))
    index = EmbeddingIndex(dim)
    index.add(other, np.arange(5, dtype=np.int64))
    index.add(tied, tied_ids)
    scores, ids = index.search(np.array([[1.0, 0.0, 0.0, 0.0]], dtype=np.float32), 7)
    np.testing.assert_array_equal(ids[0], np.arange(100, 107))
    np.testing.assert_array_equal(scores[0], np.ones(7, dtype=np.float32))
    # Across the score boundary: all 60 ties by id, then the zeros by id.
    scores, ids = index.search(np.array([[1.0, 0.0, 0.0, 0.0]], dtype=np.float32), 63)
    np.testing.assert_array_equal(ids[0], np.r_[np.arange(100, 160), np.arange(3)])


@pytest.mark.parametrize("kind", KINDS)
def test_k_larger_than_size_is_padded(kind):
    index = EmbeddingIndex(DIM, kind, nlist=2, nprobe=2)
    x = _normed(3)
    index.add(x, np.array([7, 3, 5]))
    scores, ids = index.search(x[:2], 6)
    assert scores.shape == ids.shape == (2, 6)
    assert set(ids[0, :3]) == {3, 5, 7} and ids[0, 0] == 7
    np.testing.assert_array_equal(ids[:, 3:], -1)
    assert np.all(np.isneginf(scores[:, 3:])) and np.all(np.isfinite(scores[:, :3]))


@pytest.mark.parametrize("kind", KINDS)
def test_empty_index_and_zero_k(kind):
    index = _make(kind)
    scores, ids = index.search(_normed(2), 3)
    np.testing.assert_array_equal(ids, -1)
    assert np.all(np.isneginf(scores))
    assert index.search(_normed(2), 0)[1].shape == (2, 0)


# ------------------------------------------------------------------ add / remove


@pytest.mark.parametrize("kind", KINDS)
def test_add_remove_readd(kind, data):
    x, ids, q = data
    index = _make(kind)
    index.add(x, ids)
    assert len(index) == 400
    np.testing.assert_array_equal(index.ids(), np.sort(ids))

    # Remove the current top-3 of every query: none of them may come back.
    _, top = index.search(q, 3)
    gone = np.unique(top)
    assert index.remove(gone) == gone.size
    assert len(index) == 400 - gone.size
    assert not any(index.contains(int(i)) for i in gone)
    assert int(gone[0]) not in index
    _, after = index.search(q, 20)
    assert not np.isin(after, gone).any()

    # Matches exact search over what is left.
    keep = ~np.isin(ids, gone)
    _, ref = _brute_force(x[keep], ids[keep], q, 20)
    np.testing.assert_array_equal(after, ref)

    # Re-adding the removed ids works and restores the original results.
    index.add(x[np.isin(ids, gone)], ids[np.isin(ids, gone)])
    assert len(index) == 400
    _, again = index.search(q, 3)
    np.testing.assert_array_equal(again, top)
    np.testing.assert_allclose(index.reconstruct(ids[:5]), x[:5], atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_remove_everything_then_add(kind):
    index = _make(kind)
    x = _normed(20)
    index.add(x, np.arange(20))
    assert index.remove(np.arange(20)) == 20
    assert len(index) == 0
    np.testing.assert_array_equal(index.search(x[:1], 2)[1], -1)
    index.add(x[:2], np.array([0, 1]))
    np.testing.assert_array_equal(index.search(x[:1], 1)[1], [[0]])


@pytest.mark.parametrize("kind", KINDS)
def test_remove_unknown_ids(kind):
    index = _make(kind)
    index.add(_normed(10), np.arange(10))
    with pytest.raises(KeyError, match=r"\[42, 43\]"):
        index.remove([3, 42, 43])
    assert len(index) == 10  # nothing removed on error
    assert index.remove([3, 42], missing_ok=True) == 1
    assert len(index) == 9 and not index.contains(3)
    with pytest.raises(KeyError, match="3"):
        index.reconstruct([3])


# ------------------------------------------------------------------ persistence


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind, data, tmp_path):
    x, ids, q = data
    index = _make(kind)
    index.add(x, ids)
    index.remove(ids[:7])
    before = index.search(q, 15)
    index.save(tmp_path / "idx")

    loaded = EmbeddingIndex.load(tmp_path / "idx")
    assert (loaded.kind, loaded.dim, loaded.params, len(loaded)) == (kind, DIM, index.params, len(index))
    np.testing.assert_array_equal(loaded.ids(), index.ids())
    after = loaded.search(q, 15)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[0], before[0])

    # The index file is a plain FAISS file; the sidecar is plain JSON.
    assert faiss.read_index(str(tmp_path / "idx" / "index.faiss")).ntotal == len(index)
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["kind"] == kind and meta["count"] == len(index) and meta["version"] == FORMAT_VERSION

    # A loaded index stays fully mutable.
    loaded.remove(ids[7:9])
    loaded.add(x[:1], ids[:1])
    assert len(loaded) == len(index) - 1


def test_save_load_untrained_ivf(tmp_path):
    EmbeddingIndex(DIM, "ivf", nlist=4).save(tmp_path)
    loaded = EmbeddingIndex.load(tmp_path)
    assert not loaded.is_trained and len(loaded) == 0
    loaded.add(_normed(8), np.arange(8))
    assert len(loaded) == 8


def _saved(tmp_path: Path) -> Path:
    index = EmbeddingIndex(DIM)
    index.add(_normed(5), np.arange(5))
    return index.save(tmp_path / "idx")


def test_load_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        EmbeddingIndex.load(tmp_path / "nope")
    d = _saved(tmp_path)
    (d / "index.faiss").unlink()
    with pytest.raises(FileNotFoundError, match=r"index\.faiss"):
        EmbeddingIndex.load(d)
    (d / "index.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"index\.json"):
        EmbeddingIndex.load(d)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda m: "{not json", "corrupt index sidecar"),
        (lambda m: {**m, "version": FORMAT_VERSION + 1}, "format version"),
        (lambda m: {**m, "kind": "lsh"}, "kind"),
        (lambda m: {**m, "kind": "hnsw"}, "not a 'hnsw' index"),
        (lambda m: {**m, "dim": 8}, "dim"),
        (lambda m: {**m, "count": 4}, "count=4"),
        (lambda m: {**m, "params": {"nlist": 1}}, "params"),
        (lambda m: {**m, "index_sha256": "0" * 64}, "checksum"),
    ],
)
def test_load_rejects_bad_sidecar(tmp_path, mutate, match):
    d = _saved(tmp_path)
    meta = json.loads((d / "index.json").read_text())
    new = mutate(meta)
    (d / "index.json").write_text(new if isinstance(new, str) else json.dumps(new))
    with pytest.raises(IndexFileError, match=match):
        EmbeddingIndex.load(d)


def test_load_rejects_corrupt_index_file(tmp_path):
    d = _saved(tmp_path)
    (d / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(IndexFileError, match="checksum"):
        EmbeddingIndex.load(d)


# ------------------------------------------------------------------ input validation


def test_add_validation_errors():
    index = EmbeddingIndex(DIM)
    x = _normed(4)
    with pytest.raises(ValueError, match="dimension 8"):
        index.add(_normed(4, dim=8), np.arange(4))
    with pytest.raises(ValueError, match="2-D"):
        index.add(x[0], np.arange(1))
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN.*\[2\]"):
        index.add(bad, np.arange(4))
    with pytest.raises(ValueError, match=r"duplicate ids within the batch: \[1\]"):
        index.add(x, np.array([0, 1, 1, 2]))
    with pytest.raises(ValueError, match="4 embeddings but 3 ids"):
        index.add(x, np.arange(3))
    with pytest.raises(ValueError, match="non-negative"):
        index.add(x, np.array([0, 1, 2, -1]))
    with pytest.raises(TypeError, match="integer"):
        index.add(x, np.arange(4, dtype=np.float64))
    assert len(index) == 0  # every failed add left the index untouched

    index.add(x, np.arange(4))
    with pytest.raises(ValueError, match=r"already in the index: \[2, 3\]"):
        index.add(_normed(3, seed=9), np.array([2, 3, 10]))
    assert len(index) == 4
    with pytest.raises(ValueError, match="dimension"):
        index.search(_normed(1, dim=8), 1)
    with pytest.raises(ValueError, match="k must be"):
        index.search(x, -1)


def test_constructor_validation():
    with pytest.raises(ValueError, match="kind"):
        EmbeddingIndex(DIM, "lsh")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nlist"):
        EmbeddingIndex(DIM, "ivf", nlist=0)


def test_ivf_training_requirements():
    index = EmbeddingIndex(DIM, "ivf", nlist=16)
    with pytest.raises(ValueError, match=r"at least nlist=16 vectors.*got 5"):
        index.add(_normed(5), np.arange(5))
    assert not index.is_trained and len(index) == 0
    with pytest.raises(ValueError, match="at least nlist=16"):
        index.train(_normed(5))

    # Explicit training on a sample, then small adds are fine.
    index.train(_normed(64, seed=4))
    assert index.is_trained
    index.add(_normed(5), np.arange(5))
    assert len(index) == 5
    with pytest.raises(RuntimeError, match="cannot retrain"):
        index.train(_normed(64, seed=4))


def test_unnormalised_embeddings_log_a_warning(caplog):
    index = EmbeddingIndex(DIM)
    with caplog.at_level("WARNING", logger="sbir.inference.index"):
        index.add(_normed(3) * 2.0, np.arange(3))
    assert "not L2-normalised" in caplog.text


def test_module_does_not_import_ray():
    # Load the file on its own (not via the package __init__, which may legitimately use Ray).
    import subprocess
    import sys

    import sbir.inference.index as mod

    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('sbir_index_alone', {mod.__file__!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_auto_stays_exact_for_small_galleries_and_turns_to_ivf_for_large_ones():
    from sbir.config import IndexConfig
    from sbir.config.sections import AUTO_FLAT_LIMIT

    auto = IndexConfig()
    assert auto.kind == "auto"
    assert auto.for_gallery(AUTO_FLAT_LIMIT // 64, 64).kind == "flat"
    large = auto.for_gallery(1_000_000, 512)
    assert (large.kind, large.nlist, large.nprobe) == ("ivf", 1024, 32)
    assert IndexConfig(kind="hnsw").for_gallery(1_000_000, 512).kind == "hnsw"  # an explicit kind is kept
