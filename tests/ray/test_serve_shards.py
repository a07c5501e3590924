"""A gallery sharded over GalleryShard deployments answers as the whole one; updates land on one shard and
survive a restart; large approximate galleries round-trip and serve.

Real Ray Serve on loopback. The two-node placement of shards is in test_cluster_job.py, on its `ray start`
cluster.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from tests.ray.serving import Served, build_local_gallery, free_port


def _start(config: str, model: str, gallery: Path, runs: Path, tracking: str | None, *extra: str) -> str:
    from sbir.config import load_config
    from serve.launch import start_endpoint

    overrides = [
        f"serve.port={free_port()}",
        f"run.dir={runs}",
        "serve.ingress.num_cpus=0.25",
        "serve.gallery.shard.num_cpus=0.25",
        *extra,
    ]
    args = {"config": config, "model": model, "gallery": str(gallery), "tracking_uri": tracking, "overrides": overrides}
    return start_endpoint(load_config(config, overrides), args).url


def _search(url: str, sketch: Path, **fields) -> dict:
    answer = httpx.post(
        f"{url}/v1/search",
        files={"sketch": ("s.png", sketch.read_bytes(), "image/png")},
        data={k: str(v) for k, v in fields.items()},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def _offline(checkpoint: Path, gallery: Path, sketches: list[Path], k: int, mode: str, rerank_k: int):
    """The whole gallery's own search in this process (what the unsharded endpoint answers, tested elsewhere)."""
    from sbir.inference.encoder import Encoder

    encoder = Encoder.from_checkpoint(checkpoint, device="cpu")
    whole = encoder.open_gallery(gallery)
    queries = encoder.encode_bytes([p.read_bytes() for p in sketches], "sketch")
    return whole.search(queries, k, mode, rerank_k=rerank_k)


def _sketches(served: Served) -> list[Path]:
    return [Path(served.split.root) / r.path for r in served.split.records if r.modality == "sketch"][:6]


def _copy_of_the_served_gallery(served: Served, tmp_path: Path) -> Path:
    from serve.model import resolve_serving

    source = resolve_serving(served.reference, None, served.tracking_uri, served.runs_dir).gallery_dir
    copy = tmp_path / "gallery"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("journal"))  # updates of other tests stay there
    return copy


def test_three_zse_shards_answer_both_modes_item_for_item_and_keep_updates_across_a_restart(served, tmp_path):
    """Sharded = unsharded for ZSE-SBIR (3 shards, ret and rn_rerank); adds go to the shard of their id,
    a delete to the shard that holds it; a restarted endpoint keeps both."""
    from pipelines.tracking import resolve_reference
    from serve.launch import stop_endpoint

    gallery = _copy_of_the_served_gallery(served, tmp_path)
    checkpoint = resolve_reference(served.reference, served.tracking_uri).directory
    sketches = _sketches(served)
    start = (served.preset, served.reference, gallery, served.runs_dir, served.tracking_uri, "serve.gallery.shards=3")
    url = _start(*start)
    try:
        info = httpx.get(f"{url}/v1/info", timeout=30).json()
        assert info["gallery_shards"] == 3
        for mode in ("ret", "rn_rerank"):
            expected = _offline(checkpoint, gallery, sketches, 8, mode, 5)
            for row, sketch in enumerate(sketches):
                body = _search(url, sketch, k=8, mode=mode, rerank_k=5)
                assert [h["id"] for h in body["results"]] == expected.ids[row].tolist(), mode
                np.testing.assert_allclose([h["score"] for h in body["results"]], expected.scores[row], atol=1e-4)
        photos = [p for p in sorted(Path(served.split.root).rglob("*.jpg"))[:3]]
        files = [("photo", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
        added = httpx.post(f"{url}/v1/gallery", files=files, data={"class": "mine"}, timeout=60).json()["added"]
        new_ids = [item["id"] for item in added]
        assert len({i % 3 for i in new_ids}) == 3, "three consecutive new ids land on three shards"
        assert httpx.delete(f"{url}/v1/gallery/{new_ids[1]}", timeout=30).status_code == 200
        size = info["gallery_size"] + 2
        assert httpx.get(f"{url}/v1/info", timeout=30).json()["gallery_size"] == size
    finally:
        stop_endpoint()
    url = _start(*start)
    try:
        assert httpx.get(f"{url}/v1/info", timeout=30).json()["gallery_size"] == size
        found = {h["id"] for h in _search(url, photos[0], k=200, mode="ret")["results"]}
        assert {new_ids[0], new_ids[2]} <= found and new_ids[1] not in found
    finally:
        stop_endpoint()


def test_two_clip_at_shards_answer_item_for_item(ray_cluster, tmp_path):
    from sbir.checkpoint import save_checkpoint
    from sbir.config import load_config
    from sbir.methods import family_of
    from serve.launch import stop_endpoint
    from tests.helpers import write_small_synthetic

    root = write_small_synthetic(tmp_path / "data")
    config = load_config("synthetic_clip_at", [f"data.root={root}"])
    torch.manual_seed(1)
    checkpoint = save_checkpoint(tmp_path / "ckpt", family_of(config).build_model(config.model, False), config)
    photos = sorted(p for p in root.rglob("*.jpg"))[:20]
    gallery = build_local_gallery(checkpoint, photos, tmp_path / "gallery")
    sketches = sorted(p for p in root.rglob("*.png"))[:5]
    url = _start("synthetic_clip_at", str(checkpoint), gallery, tmp_path / "runs", None, "serve.gallery.shards=2")
    try:
        expected = _offline(checkpoint, gallery, sketches, 10, "ret", 1)
        for row, sketch in enumerate(sketches):
            body = _search(url, sketch, k=10)
            assert [h["id"] for h in body["results"]] == expected.ids[row].tolist()
    finally:
        stop_endpoint()


def _mixture(count: int, dim: int, classes: int, spread: float, seed: int) -> np.ndarray:
    """Unit vectors around `classes` random unit centres (a class-structured gallery, like real embeddings)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = centres[rng.integers(0, classes, count)] + spread * rng.standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_a_50000_item_approximate_gallery_round_trips_and_serves(kind, ray_cluster, tmp_path):
    """Recall against exact search is asserted loosely here; bench/bench_index.py measures it properly."""
    from PIL import Image

    from sbir.checkpoint import save_checkpoint, weights_sha256
    from sbir.config import IndexConfig, load_config
    from sbir.inference.encoder import Encoder
    from sbir.inference.gallery import GalleryItem
    from sbir.inference.saved_gallery import Provenance, save_gallery
    from sbir.methods import family_of
    from sbir.models.encoding import EmbeddingEncoding
    from serve.launch import stop_endpoint

    config = load_config("synthetic_clip_at")
    torch.manual_seed(2)
    checkpoint = save_checkpoint(tmp_path / "ckpt", family_of(config).build_model(config.model, False), config)
    encoder = Encoder.from_checkpoint(checkpoint, device="cpu")
    sketches = []
    for i in range(4):
        path = tmp_path / f"sketch{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        sketches.append(path)
    queries = encoder.encode_bytes([p.read_bytes() for p in sketches], "sketch").retrieval_embeddings().numpy()
    dim = queries.shape[1]
    vectors = _mixture(50_000, dim, 500, 0.3, seed=3)
    vectors[:40] = queries.repeat(10, axis=0) + 0.05  # some true neighbours of the queries, by construction
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    items = [GalleryItem(i, f"synthetic/{i}") for i in range(len(vectors))]
    index = IndexConfig(kind=kind, nlist=256, nprobe=32, ef_search=128)
    gallery = family_of(config).gallery(encoder.model, EmbeddingEncoding(torch.from_numpy(vectors)), items, index)
    provenance = Provenance("clip_at", str(checkpoint), weights_sha256(checkpoint))
    out = save_gallery(gallery, tmp_path / "gallery", provenance)
    loaded = encoder.open_gallery(out)
    assert loaded.index.kind == kind and len(loaded) == 50_000
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    url = _start("synthetic_clip_at", str(checkpoint), out, tmp_path / "runs", None)
    try:
        info = httpx.get(f"{url}/v1/info", timeout=30).json()
        assert info["gallery_size"] == 50_000 and info["index_kind"] == kind
        recall = []
        for row, sketch in enumerate(sketches):
            found = [h["id"] for h in _search(url, sketch, k=10)["results"]]
            recall.append(len(set(found) & set(exact[row].tolist())) / 10)
        assert np.mean(recall) >= 0.7, recall
    finally:
        stop_endpoint()
