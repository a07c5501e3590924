"""Tests for sbir.reports: PR curves, top-k pictures, sample queries, the retrieval grid and the report pages."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sbir.reports import (
    plot_precision_recall,
    precision_recall_curve,
    retrieval_grid,
    sample_queries,
    top_k_rankings,
    write_report,
)
from sbir.reports.grid import FRAME, GAP, HIT_COLOUR, LABEL_HEIGHT, MISS_COLOUR, grid_size

# --------------------------------------------------------------------------- precision-recall curve


def _reference_curve(scores: np.ndarray, q_labels: np.ndarray, g_labels: np.ndarray, points: int) -> np.ndarray:
    """Literal per-query 11-point interpolated PR: full stable argsort, precision at every rank."""
    levels = np.linspace(0.0, 1.0, points)
    curves = []
    for row, label in zip(scores, q_labels, strict=True):
        rel = g_labels[np.argsort(-row, kind="stable")] == label
        n_rel = rel.sum()
        if n_rel == 0:
            continue
        tp = np.cumsum(rel)
        precision = tp / np.arange(1, len(row) + 1)
        recall = tp / n_rel
        curves.append([precision[recall >= level - 1e-12].max() for level in levels])
    return np.mean(curves, axis=0)


def test_pr_curve_perfect_ranking_is_one_everywhere():
    g_labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    q_labels = np.array([0, 1, 2])
    scores = (q_labels[:, None] == g_labels[None, :]).astype(np.float32) + 0.01 * np.arange(9)[None, ::-1]
    recall, precision = precision_recall_curve(scores, q_labels, g_labels)
    np.testing.assert_allclose(recall, np.linspace(0, 1, 11))
    np.testing.assert_array_equal(precision, np.ones(11))


def test_pr_curve_hand_computed():
    # Ranking (scores descending): relevant, irrelevant, relevant, irrelevant, relevant. R = 3.
    # Precision at the hits: 1, 2/3, 3/5. Interpolated: recall <= 1/3 -> 1, <= 2/3 -> 2/3, else 3/5.
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])
    g_labels = np.array([0, 1, 0, 1, 0])
    _, precision = precision_recall_curve(scores, np.array([0]), g_labels)
    expected = [1, 1, 1, 1, 2 / 3, 2 / 3, 2 / 3, 0.6, 0.6, 0.6, 0.6]
    np.testing.assert_allclose(precision, expected)
    # With 3 points (0, 0.5, 1): level 0.5 needs 2 hits -> 2/3.
    recall3, precision3 = precision_recall_curve(scores, np.array([0]), g_labels, recall_points=3)
    np.testing.assert_allclose(recall3, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(precision3, [1.0, 2 / 3, 0.6])


def test_pr_curve_ties_follow_gallery_order():
    # All scores equal: the order is the gallery order, so hits are at ranks 2 and 4 -> 1/2 and 2/4.
    scores = np.zeros((1, 4))
    _, precision = precision_recall_curve(scores, np.array([1]), np.array([0, 1, 0, 1]), recall_points=3)
    np.testing.assert_allclose(precision, [0.5, 0.5, 0.5])


@pytest.mark.parametrize("tie_step", [None, 0.25, 0.05])
def test_pr_curve_matches_reference_and_is_chunk_invariant(tie_step):
    rng = np.random.default_rng(3)
    scores = rng.standard_normal((37, 120))
    if tie_step is not None:  # coarse rounding: many tie groups that mix relevant and irrelevant items
        scores = np.round(scores / tie_step) * tie_step
    q_labels = rng.integers(0, 6, 37)
    g_labels = rng.integers(0, 6, 120)
    _, whole = precision_recall_curve(scores, q_labels, g_labels, query_chunk=1000)
    for chunk in (1, 5, 16):
        _, chunked = precision_recall_curve(scores, q_labels, g_labels, query_chunk=chunk)
        np.testing.assert_array_equal(chunked, whole)
    np.testing.assert_allclose(whole, _reference_curve(scores, q_labels, g_labels, 11), rtol=0, atol=1e-12)


def test_pr_curve_many_ties_use_the_argsort_path():
    # More than 32 tied relevant items in a row: the fallback path must agree with the reference.
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 3, (6, 200)).astype(np.float32)
    q_labels = rng.integers(0, 2, 6)
    g_labels = rng.integers(0, 2, 200)
    _, precision = precision_recall_curve(scores, q_labels, g_labels, recall_points=21)
    np.testing.assert_allclose(precision, _reference_curve(scores, q_labels, g_labels, 21), rtol=0, atol=1e-12)


def test_pr_curve_excludes_queries_without_relevant_items():
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((5, 30))
    g_labels = rng.integers(0, 3, 30)
    q_labels = np.array([0, 1, 2, 7, 9])  # labels 7 and 9 are not in the gallery
    _, with_empty = precision_recall_curve(scores, q_labels, g_labels)
    _, without = precision_recall_curve(scores[:3], q_labels[:3], g_labels)
    np.testing.assert_array_equal(with_empty, without)
    with pytest.raises(ValueError, match="no query has a relevant"):
        precision_recall_curve(scores[3:], q_labels[3:], g_labels)


def test_pr_curve_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        precision_recall_curve(np.array([[0.1, np.nan]]), np.array([0]), np.array([0, 1]))
    with pytest.raises(ValueError, match="recall_points"):
        precision_recall_curve(np.zeros((1, 2)), np.array([0]), np.array([0, 1]), recall_points=1)
    with pytest.raises(ValueError, match="gallery_labels"):
        precision_recall_curve(np.zeros((1, 2)), np.array([0]), np.array([0, 1, 2]))


def test_plot_writes_a_readable_png(tmp_path):
    recall = np.linspace(0, 1, 11)
    path = plot_precision_recall(
        {"zse/rn": (recall, 1 - 0.5 * recall), "zse/ret": (recall, 1 - 0.8 * recall)},
        tmp_path / "plots" / "pr.png",
        title="PR <test>",
    )
    assert path == tmp_path / "plots" / "pr.png"
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (600, 450)
        pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 3  # something was drawn
    with pytest.raises(ValueError):
        plot_precision_recall({}, tmp_path / "empty.png")


def test_importing_reports_is_cheap():
    code = "import sys, sbir.reports; print(sorted(m for m in ('matplotlib', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- rankings and sample queries


def test_top_k_rankings_breaks_ties_by_lower_index():
    scores = np.array([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 1.0]])
    np.testing.assert_array_equal(top_k_rankings(scores, 3), [[1, 2, 4], [4, 0, 1]])
    assert top_k_rankings(scores, 10).shape == (2, 5)  # capped at the gallery size
    with pytest.raises(ValueError):
        top_k_rankings(scores, 0)


def test_sample_queries_spreads_over_classes_and_is_deterministic():
    labels = np.repeat(np.arange(5), [10, 1, 4, 6, 3])
    picked = sample_queries(labels, 5, seed=7)
    assert len(picked) == 5 and len(set(labels[picked])) == 5
    more = sample_queries(labels, 8, seed=7)
    assert len(set(more.tolist())) == 8 and set(labels[more]) == set(range(5))
    assert np.bincount(labels[more], minlength=5).max() <= 2  # no third query before every class has two
    np.testing.assert_array_equal(sample_queries(labels, 8, seed=7), more)
    assert len(sample_queries(labels, 100)) == len(labels)
    three = sample_queries(labels, 3, seed=0)
    assert len(set(labels[three])) == 3
    assert {tuple(sample_queries(labels, 3, seed=s)) for s in range(6)} != {tuple(three)}  # the seed matters


# --------------------------------------------------------------------------- retrieval grid


def test_retrieval_grid_size_and_frame_colours():
    thumb, k = 20, 3
    gallery_labels = np.array([0, 1, 0, 2, 1])
    colours = [(10 * j, 50, 200) for j in range(5)]
    loaded: list[int] = []

    def load(j: int) -> Image.Image:
        loaded.append(j)
        return Image.new("RGB", (40, 40), colours[j])

    queries = [Image.new("RGB", (30, 20), (0, 0, 0)), Image.new("RGB", (20, 20), (0, 0, 0))]
    rankings = np.array([[0, 1, 2], [3, 1, 4]])
    grid = retrieval_grid(queries, load, rankings, np.array([0, 1]), gallery_labels, ["cat", "dog", "cow"], thumb)

    cell = thumb + 2 * FRAME
    assert grid.size == (4 * cell + 5 * GAP, 2 * (cell + LABEL_HEIGHT) + 3 * GAP) == grid_size(2, k, thumb)
    assert sorted(loaded) == [0, 1, 1, 2, 3, 4]  # only the shown photos are loaded

    pixels = grid.load()

    def frame_pixel(row: int, col: int) -> tuple[int, int, int]:
        x = GAP + col * (cell + GAP) + 1
        y = GAP + row * (cell + LABEL_HEIGHT + GAP) + 1
        return pixels[x, y]

    def centre_pixel(row: int, col: int) -> tuple[int, int, int]:
        x = GAP + col * (cell + GAP) + cell // 2
        y = GAP + row * (cell + LABEL_HEIGHT + GAP) + cell // 2
        return pixels[x, y]

    # Query 0 (class 0): gallery 0 hit, 1 miss, 2 hit. Query 1 (class 1): 3 miss, 1 hit, 4 hit.
    assert [frame_pixel(0, c) for c in (1, 2, 3)] == [HIT_COLOUR, MISS_COLOUR, HIT_COLOUR]
    assert [frame_pixel(1, c) for c in (1, 2, 3)] == [MISS_COLOUR, HIT_COLOUR, HIT_COLOUR]
    assert centre_pixel(0, 2) == colours[1] and centre_pixel(1, 1) == colours[3]
    # The class name is drawn under each query: dark pixels in the label band.
    band = np.asarray(grid)[GAP + cell : GAP + cell + LABEL_HEIGHT, GAP : GAP + cell]
    assert band.min() < 128


def test_retrieval_grid_rejects_mismatched_rankings():
    with pytest.raises(ValueError, match="rankings"):
        retrieval_grid([Image.new("RGB", (8, 8))], lambda j: Image.new("RGB", (8, 8)), np.zeros((2, 1), int),
                       np.array([0]), np.array([0]))  # fmt: skip
    with pytest.raises(ValueError, match="outside"):
        retrieval_grid([Image.new("RGB", (8, 8))], lambda j: Image.new("RGB", (8, 8)), np.array([[3]]),
                       np.array([0]), np.array([0]))  # fmt: skip


# --------------------------------------------------------------------------- report pages


def _metrics() -> dict[str, dict[str, float]]:
    return {
        "zse/ret": {"p_100": np.float32(0.25), "map_all_voc": np.float64(0.5), "n_queries": 12.0, "custom": 3.0},
        "zse/rn": {"map_all_voc": 0.625, "p_100": 0.375, "n_queries": np.int64(12), "acc_1": float("nan")},
    }


def test_write_report_json_round_trip(tmp_path):
    (tmp_path / "pr.png").write_bytes(b"png")
    files = write_report(
        tmp_path,
        title="run",
        metrics=_metrics(),
        info={"checkpoint": Path("ckpt/zse"), "epochs": np.int64(3), "timing_s": np.float32(1.5), "cfg": {"a": (1, 2)}},
        images={"PR curve": tmp_path / "pr.png"},
        notes=["selected on test classes"],
    )
    assert (files.json, files.markdown, files.html) == (
        tmp_path / "report.json",
        tmp_path / "report.md",
        tmp_path / "report.html",
    )
    doc = json.loads(files.json.read_text(encoding="utf-8"))
    assert set(doc) == {"title", "metrics", "info", "images", "notes", "created", "rows"}
    assert doc["metrics"]["zse/ret"] == {"p_100": 0.25, "map_all_voc": 0.5, "n_queries": 12.0, "custom": 3.0}
    assert doc["metrics"]["zse/rn"]["n_queries"] == 12 and doc["metrics"]["zse/rn"]["acc_1"] is None
    assert doc["info"] == {"checkpoint": "ckpt/zse", "epochs": 3, "timing_s": 1.5, "cfg": {"a": [1, 2]}}
    assert doc["images"] == {"PR curve": "pr.png"}
    assert doc["notes"] == ["selected on test classes"]
    assert doc["created"].endswith("+00:00")


def test_write_report_markdown_table(tmp_path):
    files = write_report(tmp_path, title="run", metrics=_metrics(), info={"split": "zeroshot1"})
    md = files.markdown.read_text(encoding="utf-8")
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| metric |"))
    assert header == "| metric | `zse/ret` | `zse/rn` | definition |"
    rows = [line for line in lines if line.startswith("| `")]
    names = [row.split("|")[1].strip().strip("`") for row in rows]
    # metric_infos order first (map_all_voc before p_100, then acc_1, then the counts), unknown names last.
    assert names == ["map_all_voc", "p_100", "acc_1", "n_queries", "custom"]
    assert rows[0].startswith("| `map_all_voc` | 0.5000 | 0.6250 | AP over the full ranking")
    assert "| `p_100` | 0.2500 | 0.3750 |" in md
    assert "| `n_queries` | 12 | 12 |" in md
    assert "| `acc_1` | – | nan |" in md
    assert "| `custom` | 3.0000 | – |  |" in md
    assert "| split | `zeroshot1` |" in md


def test_write_report_html_escapes_and_links_relatively(tmp_path):
    out = tmp_path / "report"
    (out / "plots").mkdir(parents=True)
    (out / "plots" / "pr curve.png").write_bytes(b"png")
    (out / "grid.png").write_bytes(b"png")
    files = write_report(
        out,
        title="<b>&",
        metrics=_metrics(),
        info={"note": "<script>alert(1)</script>"},
        images={"PR <curve>": out / "plots" / "pr curve.png", "grid": out / "grid.png"},
        notes=["selected on <test> classes"],
    )
    page = files.html.read_text(encoding="utf-8")
    assert "<title>&lt;b&gt;&amp;</title>" in page and "<h1>&lt;b&gt;&amp;</h1>" in page
    assert "<b>&" not in page and "<script" not in page
    assert "selected on &lt;test&gt; classes" in page
    assert 'src="plots/pr%20curve.png"' in page and 'src="grid.png"' in page
    assert str(tmp_path) not in page and "http" not in page
    md = files.markdown.read_text(encoding="utf-8")
    assert "](plots/pr%20curve.png)" in md and "](grid.png)" in md
    assert md.startswith("# \\<b\\>\\&\n")
    assert json.loads(files.json.read_text())["images"] == {"PR <curve>": "plots/pr curve.png", "grid": "grid.png"}


def test_write_report_rejects_images_outside_out_dir(tmp_path):
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(b"png")
    out = tmp_path / "report"
    with pytest.raises(ValueError, match=re.escape(str(outside))):
        write_report(out, title="t", metrics={}, info={}, images={"x": outside})
    with pytest.raises(ValueError, match=r"escape\.png"):
        write_report(out, title="t", metrics={}, info={}, images={"x": out / ".." / "escape.png"})
    assert not out.exists()  # nothing is written when an image is rejected


def test_report_rows_show_pictures_side_by_side_and_empty_info_is_left_out(tmp_path):
    from sbir.reports import ReportRow

    for name in ("q0.png", "q0_attention.png"):
        (tmp_path / name).write_bytes(b"png")
    files = write_report(
        tmp_path,
        title="run",
        metrics=_metrics(),
        info={"target": None, "role": "test"},
        rows=[ReportRow("Query 0", {"top-k": tmp_path / "q0.png", "attention": tmp_path / "q0_attention.png"})],
    )
    doc = json.loads(files.json.read_text())
    assert doc["info"] == {"role": "test"}  # no "target: null" on the page
    assert doc["rows"] == [{"caption": "Query 0", "images": {"top-k": "q0.png", "attention": "q0_attention.png"}}]
    page = files.html.read_text()
    assert page.index('<div class="row">') < page.index('src="q0.png"') < page.index('src="q0_attention.png"')
    assert "target" not in page


def test_chance_precision_is_the_mean_share_of_relevant_photos():
    from sbir.reports import chance_precision

    # Gallery: 2 of class 0, 1 of class 1, 1 of class 2; queries of classes 0, 1 and 5 (no relevant photo).
    assert chance_precision(np.array([0, 1, 5]), np.array([0, 0, 1, 2])) == pytest.approx((2 / 4 + 1 / 4) / 2)


def test_the_pr_plot_draws_baselines_and_chance(tmp_path):
    r = np.linspace(0, 1, 11)
    plain = plot_precision_recall({"zse/rn": (r, 1 - r / 2)}, tmp_path / "a.png")
    full = plot_precision_recall(
        {"zse/rn": (r, 1 - r / 2)}, tmp_path / "b.png", "Sketchy-25, test", {"untrained zse/rn": (r, 0.3 - r / 10)}, 0.1
    )
    assert np.asarray(Image.open(full)).tobytes() != np.asarray(Image.open(plain)).tobytes()


def test_retrieval_grid_marks_hits_by_shape_and_writes_rank_and_score():
    thumb = 48
    gallery = [Image.new("RGB", (48, 48), (120, 120, 250)) for _ in range(3)]
    labels = np.array([0, 1, 0])
    args = ([Image.new("RGB", (48, 48), (0, 0, 0))], lambda j: gallery[j], np.array([[0, 1]]), np.array([0]), labels)
    with_scores = np.asarray(retrieval_grid(*args, ["cat", "dog"], thumb, scores=np.array([[0.91, 0.42]])))
    without = np.asarray(retrieval_grid(*args, ["cat", "dog"], thumb))
    cell = thumb + 2 * FRAME

    def mark(grid: np.ndarray, col: int) -> np.ndarray:
        """Which pixels of a result's corner mark are drawn (not white)."""
        x, y = GAP + col * (cell + GAP) + FRAME + 1, GAP + FRAME + 1
        return (grid[y : y + 12, x : x + 12] != 255).any(axis=2)

    hit_mark, miss_mark = mark(with_scores, 1), mark(with_scores, 2)
    assert hit_mark.any() and miss_mark.any()
    assert not np.array_equal(hit_mark, miss_mark), "a tick and a cross differ in shape, not only in colour"
    band = slice(GAP + cell, GAP + cell + LABEL_HEIGHT)
    assert not np.array_equal(with_scores[band], without[band]), "the scores are written under the photos"
