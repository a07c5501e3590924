"""Galleries over both families: retrieval modes, search vs score matrices, updates, save/load, devices."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from sbir.config import IndexConfig, load_config
from sbir.inference.encoder import Encoder
from sbir.inference.gallery import Gallery, GalleryError, GalleryItem, RelationGallery
from sbir.inference.saved_gallery import Provenance, load_gallery, save_gallery
from sbir.inference.search import RERANK_OFFSET, stable_topk
from sbir.methods import family_of, get_family, registered


def _items(ids, labels=None) -> list[GalleryItem]:
    labels = labels if labels is not None else [0] * len(ids)
    return [GalleryItem(int(i), f"photo/{i}.jpg", f"class{int(c)}", int(c)) for i, c in zip(ids, labels, strict=True)]


@pytest.fixture
def zse_gallery(tiny_zse, toy_batch):
    sketches, photos, labels = toy_batch
    encoder = Encoder(tiny_zse, get_family("zse"), None, batch_size=5)  # type: ignore[arg-type]
    gallery = RelationGallery(tiny_zse, encoder.encode(photos, "photo"), _items(range(100, 112), labels))
    return gallery, encoder.encode(sketches[:4], "sketch")


# --------------------------------------------------------------------------- ZSE-SBIR retrieval modes


def test_ret_is_cosine_of_pre_ca_tokens(zse_gallery):
    gallery, queries = zse_gallery
    scores = gallery.score_matrix(queries, "ret")
    q = torch.nn.functional.normalize(queries.ret, dim=-1)
    p = torch.nn.functional.normalize(gallery.photos.ret, dim=-1)
    assert torch.allclose(scores, q @ p.T, atol=1e-6)


def test_rerank_with_k_equal_gallery_ranks_exactly_like_rn(zse_gallery):
    gallery, queries = zse_gallery
    rn = gallery.score_matrix(queries, "rn", pair_batch=7)
    rerank = gallery.score_matrix(queries, "rn_rerank", rerank_k=len(gallery), pair_batch=5)
    assert torch.equal(stable_topk(rn, len(gallery)), stable_topk(rerank, len(gallery)))
    assert torch.allclose(rerank - RERANK_OFFSET, rn, atol=1e-5)


def test_rerank_reorders_only_the_top_k(zse_gallery):
    gallery, queries = zse_gallery
    k = 4
    ret = gallery.score_matrix(queries, "ret")
    rn = gallery.score_matrix(queries, "rn")
    rerank = gallery.score_matrix(queries, "rn_rerank", rerank_k=k)
    order = stable_topk(rerank, len(gallery))
    for row in range(len(queries)):
        top_ret = set(stable_topk(ret[row : row + 1], k)[0].tolist())
        head, tail = order[row, :k].tolist(), order[row, k:].tolist()
        assert set(head) == top_ret  # the same K candidates ...
        assert head == sorted(head, key=lambda j: -rn[row, j].item())  # ... in relation order
        assert tail == sorted(tail, key=lambda j: -ret[row, j].item())  # the rest in ret order


def test_search_top_k_matches_score_matrix(zse_gallery):
    gallery, queries = zse_gallery
    for mode in ("ret", "rn", "rn_rerank"):
        result = gallery.search(queries, k=5, mode=mode, rerank_k=6)
        full = gallery.score_matrix(queries, mode, rerank_k=6)
        expected = gallery.ids[stable_topk(full, 5).numpy()]
        assert np.array_equal(result.ids, expected), mode
        assert result.scores.shape == (4, 5)


def test_an_approximate_index_finds_the_same_items_on_a_small_gallery(zse_gallery):
    gallery, queries = zse_gallery
    hnsw = RelationGallery(gallery.model, gallery.photos, gallery.items, IndexConfig(kind="hnsw", ef_search=64))
    for mode in ("ret", "rn_rerank"):
        approx = hnsw.search(queries, k=5, mode=mode, rerank_k=6)
        exact = gallery.search(queries, k=5, mode=mode, rerank_k=6)
        assert np.array_equal(approx.ids, exact.ids), mode


def test_unknown_mode_is_rejected(zse_gallery):
    gallery, queries = zse_gallery
    with pytest.raises(ValueError, match="ret, rn, rn_rerank"):
        gallery.score_matrix(queries, "exhaustive")


def test_fp16_scores_are_rounded_to_half_precision(zse_gallery):
    gallery, queries = zse_gallery
    fp32 = gallery.score_matrix(queries, "rn")
    fp16 = gallery.score_matrix(queries, "rn", precision="fp16")
    assert torch.equal(fp16, fp32.half().float())


def test_ids_from_a_foreign_index_are_rejected(zse_gallery):
    from sbir.inference.index import EmbeddingIndex

    gallery, _ = zse_gallery
    index = EmbeddingIndex(gallery.embeddings.shape[1])
    index.add(gallery.embeddings.numpy(), gallery.ids + 1000)
    with pytest.raises(GalleryError, match="not in the gallery"):
        RelationGallery(gallery.model, gallery.photos, gallery.items, index=index)


def test_a_bi_encoder_gallery_scores_only_ret(zse_gallery):
    gallery, queries = zse_gallery
    plain = Gallery(gallery.model, gallery.photos, gallery.items)
    assert torch.equal(plain.score_matrix(queries, "ret"), gallery.score_matrix(queries, "ret"))
    with pytest.raises(GalleryError, match="scores ret"):
        plain.score_matrix(queries, "rn")


# --------------------------------------------------------------------------- every registered family


def _family_setup(name: str, toy_batch):
    """A small random model of the family, its encoder, and encoded toy queries and photos."""
    preset = {"zse": "synthetic_zse", "clip_at": "synthetic_clip_at"}[name]
    config = load_config(preset)
    family = family_of(config)
    torch.manual_seed(0)
    model = family.build_model(config.model, load_pretrained=False).eval()
    encoder = Encoder(model, family, family.image_transform(config, model), batch_size=4)
    sketches, photos, labels = toy_batch
    size = encoder.transform.size
    resize = torch.nn.functional.interpolate
    sketches, photos = resize(sketches, size=size), resize(photos, size=size)
    return config, family, model, encoder, encoder.encode(sketches, "sketch"), encoder.encode(photos, "photo"), labels


@pytest.mark.parametrize("name", registered())
def test_each_family_round_trips_build_encode_save_load_search(name, toy_batch, tmp_path):
    config, family, model, _, queries, photos, labels = _family_setup(name, toy_batch)
    gallery = family.gallery(model, photos, _items(range(len(photos)), labels), config.index)
    provenance = Provenance(family.name, "ckpt/best", "ab" * 32, config.model.model_dump(mode="json"))
    save_gallery(gallery, tmp_path / "gallery", provenance)

    loaded = load_gallery(
        tmp_path / "gallery", model, method=family.name, encoding=family.encoding, checkpoint_sha256="ab" * 32
    )
    assert type(loaded) is type(gallery) and loaded.items == gallery.items
    for mode in family.modes:
        before = gallery.search(queries, k=5, mode=mode, rerank_k=6)
        after = loaded.search(queries, k=5, mode=mode, rerank_k=6)
        assert np.array_equal(before.ids, after.ids), mode
        assert np.allclose(before.scores, after.scores, atol=1e-6), mode


@pytest.mark.parametrize("name", registered())
def test_offline_evaluation_and_search_of_the_same_gallery_rank_alike(name, toy_batch):
    """Every mode: `search(k = whole gallery)` returns exactly the order of the evaluation's score matrix."""
    config, family, model, _, queries, photos, labels = _family_setup(name, toy_batch)
    gallery = family.gallery(model, photos, _items(range(len(photos)), labels), config.index)
    for mode in family.modes:
        full = gallery.score_matrix(queries, mode, rerank_k=6)
        found = gallery.search(queries, k=len(gallery), mode=mode, rerank_k=6)
        # Same scores for the returned ids (FAISS and torch may differ in the last float bits) ...
        assert np.allclose(found.scores, np.take_along_axis(full.numpy(), gallery.rows_of(found.ids), 1), atol=1e-5)
        # ... and the same order, up to the order inside groups of near-tied scores.
        order = gallery.ids[stable_topk(full, len(gallery)).numpy()]
        groups = _tie_groups(np.sort(full.numpy(), axis=1)[:, ::-1], tol=1e-6)
        for row, row_groups in enumerate(groups):
            for group in row_groups:
                assert set(found.ids[row, group]) == set(order[row, group]), (mode, row, group)
        assert sum(len(g) for g in groups) > len(groups) * len(gallery) / 2, "most scores are distinct"


def _tie_groups(sorted_scores: np.ndarray, tol: float) -> list[list[slice]]:
    """Per row, the runs of consecutive (descending) scores closer than `tol` to their neighbour."""
    out = []
    for row in sorted_scores:
        cuts = [0, *(np.flatnonzero(np.abs(np.diff(row)) > tol) + 1).tolist(), len(row)]
        out.append([slice(a, b) for a, b in itertools.pairwise(cuts)])
    return out


def test_add_and_remove_photos(zse_gallery):
    gallery, queries = zse_gallery
    extra = gallery.photos.select(torch.tensor([0, 1]))
    gallery.add(extra, _items([500, 501]))
    assert len(gallery) == 14 and len(gallery.index) == 14
    best = gallery.search(queries.select(torch.tensor([0])), k=14, mode="ret")
    assert {500, 501} <= set(best.ids[0].tolist())
    assert gallery.remove([500, 100]) == 2
    result = gallery.search(queries, k=12, mode="rn_rerank", rerank_k=12)
    assert not {500, 100} & set(result.ids.ravel().tolist()) and len(gallery) == 12
    with pytest.raises(GalleryError, match="unique"):
        gallery.add(extra, _items([101, 502]))
    with pytest.raises(GalleryError, match="not in the gallery"):
        gallery.remove([999])
    assert len(gallery) == 12


# --------------------------------------------------------------------------- saved galleries are checked


def _saved(zse_gallery, tmp_path):
    gallery, _ = zse_gallery
    return save_gallery(gallery, tmp_path / "g", Provenance("zse", "ckpt", "cd" * 32, {}))


def _load(root, gallery, method: str, checkpoint_sha256: str | None = None):
    family = get_family(method)
    return load_gallery(
        root, gallery.model, method=family.name, encoding=family.encoding, checkpoint_sha256=checkpoint_sha256
    )


def test_a_corrupt_saved_gallery_is_refused(zse_gallery, tmp_path):
    gallery, _ = zse_gallery
    root = _saved(zse_gallery, tmp_path)
    with (root / "encoding.safetensors").open("r+b") as fh:
        fh.seek(200)
        fh.write(b"\x00\x01\x02")
    with pytest.raises(GalleryError, match="checksum"):
        _load(root, gallery, "zse")


def test_a_gallery_built_with_other_weights_or_method_is_refused(zse_gallery, tmp_path):
    gallery, _ = zse_gallery
    root = _saved(zse_gallery, tmp_path)
    with pytest.raises(GalleryError, match="other weights"):
        _load(root, gallery, "zse", checkpoint_sha256="ef" * 32)
    with pytest.raises(GalleryError, match="built for method 'zse'"):
        _load(root, gallery, "clip_at")
    meta = json.loads((root / "gallery.json").read_text())
    (root / "gallery.json").write_text(json.dumps(meta | {"version": 99}))
    with pytest.raises(GalleryError, match="format version 99"):
        _load(root, gallery, "zse")


# --------------------------------------------------------------------------- devices


def test_galleries_score_on_the_models_device(tiny_zse, toy_batch):
    """PyTorch's meta device refuses a tensor from another device inside a layer, as CUDA does: a gallery
    built from CPU encodings for a model on `meta` must move everything there and score there."""
    sketches, photos, _ = toy_batch
    cpu_queries = tiny_zse.encode(sketches[:3], "sketch")
    cpu_photos = tiny_zse.encode(photos[:6], "photo")
    seen: set[str] = set()
    model = tiny_zse.to("meta")
    for module in model.modules():
        module.register_forward_pre_hook(
            lambda _m, args: seen.update(a.device.type for a in args if isinstance(a, torch.Tensor))
        )
    gallery = RelationGallery(model, cpu_photos, _items(range(6)))
    for mode in ("ret", "rn", "rn_rerank"):
        scores = gallery.score_matrix(cpu_queries, mode, rerank_k=4)
        assert scores.device.type == "meta" and scores.shape == (3, 6), mode
    assert seen == {"meta"}, "every tensor entering the model was on the model's device"


def test_encoder_moves_images_to_the_models_device(tiny_zse, toy_batch):
    sketches, _, _ = toy_batch
    encoder = Encoder(tiny_zse.to("meta"), get_family("zse"), None, batch_size=3)  # type: ignore[arg-type]
    encoding = encoder.encode(sketches[:5], "sketch")
    assert encoding.device.type == "meta" and len(encoding) == 5


def test_asking_for_cuda_without_a_gpu_is_a_clear_error():
    from sbir.errors import DeviceError
    from sbir.inference.encoder import resolve_device

    assert resolve_device("cpu").type == "cpu"
    if torch.cuda.is_available():
        assert resolve_device("auto").type == resolve_device("cuda").type == "cuda"
        return
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_long_relation_scoring_logs_its_progress_and_short_scoring_stays_quiet(monkeypatch, caplog):
    from sbir.inference import gallery

    with caplog.at_level("INFO", logger="sbir.inference.gallery"):
        quiet = gallery.PairProgress(100)
        quiet.done(50)
        assert caplog.text == ""  # under PROGRESS_EVERY_S: nothing
        monkeypatch.setattr(gallery, "PROGRESS_EVERY_S", 0.0)
        progress = gallery.PairProgress(3000)
        progress.done(1500)
        progress.done(3000)  # the end says nothing: the caller reports the result
    assert caplog.text.count("relation pairs") == 1 and "1,500/3,000 (50%)" in caplog.text
