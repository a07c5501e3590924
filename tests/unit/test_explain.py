"""Explainability outputs (docs/explain.md) on a random-init tiny ZSE-SBIR in eval mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sbir.config import ZSEConfig
from sbir.explain import Explanation, explain_pair, save_explanation
from sbir.explain.attention import render_attention_overlay, ret_attention_maps, top_k_cells
from sbir.explain.correspondence import (
    attention_correspondence,
    cosine_correspondence,
    post_ca_patch_tokens,
    sketch_to_photo,
    top_matches,
)
from sbir.explain.render import denormalize, hsv_colours
from sbir.explain.synthesis import NOT_REPLACED, assign_sources, synthesize
from sbir.models.zse.model import ZSESBIR

CONFIGS = {
    "official": {"size": "tiny"},
    "paper": {"size": "tiny", "preset": "paper"},
    "evit": {"size": "tiny", "downsample": "linear", "evit_keep": [1, 0.75, 1, 1]},
    "evit_paper": {"size": "tiny", "preset": "paper", "downsample": "linear", "evit_keep": [1, 0.75, 1, 1]},
}


def _model(name: str) -> ZSESBIR:
    torch.manual_seed(0)
    return ZSESBIR(ZSEConfig(**CONFIGS[name])).eval()


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request: pytest.FixtureRequest) -> ZSESBIR:
    return _model(request.param)


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    """A sparse 'sketch' (dark strokes on white) and a noisy 'photo', normalised to [-1, 1]."""
    gen = torch.Generator().manual_seed(1)
    sketch = torch.ones(3, 64, 64)
    sketch[:, 10:12, 5:60] = -1.0
    sketch[:, 15:55, 30:33] = -1.0
    photo = torch.rand(3, 64, 64, generator=gen) * 2 - 1
    return sketch, photo


def _encode(model: ZSESBIR, images: tuple[torch.Tensor, torch.Tensor]):
    sketch, photo = images
    with torch.no_grad():
        s = model.encode(sketch[None], "sketch", need_weights=True)
        p = model.encode(photo[None], "photo", need_weights=True)
        return s, p, model.relate(s, p)


# ------------------------------------------------------------------ attention maps


def test_attention_maps(model: ZSESBIR, images) -> None:
    s, p, _ = _encode(model, images)
    g, heads = model.cfg.grid, model.cfg.heads
    for enc in (s, p):
        maps = ret_attention_maps(enc, g)
        assert maps.shape == (heads, g, g) and maps.dtype == np.float32
        assert (maps >= 0).all()
        assert (maps.reshape(heads, -1).sum(1) <= 1 + 1e-5).all()
        # Each kept patch reads its own column of row 0; dropped patches read exactly 0.
        pos = enc.positions[0].numpy()
        np.testing.assert_array_equal(maps.reshape(heads, -1)[:, pos], enc.last_attn[0, :, 0, 1:].numpy())
        kept = np.zeros(g * g, dtype=bool)
        kept[pos] = True
        assert (maps.reshape(heads, -1)[:, ~kept] == 0).all()
        if model.cfg.evit_active:
            assert kept.sum() < g * g


def test_attention_maps_need_weights() -> None:
    model = _model("official")
    with torch.no_grad():
        enc = model.encode(torch.zeros(1, 3, 64, 64), "sketch")
    with pytest.raises(ValueError, match="need_weights=True"):
        ret_attention_maps(enc, model.cfg.grid)


def test_overlay_colours_only_top_k_cells(images) -> None:
    model = _model("official")
    s, _, _ = _encode(model, images)
    maps = ret_attention_maps(s, model.cfg.grid)
    image = denormalize(images[0])
    overlay = np.asarray(render_attention_overlay(image, maps, model.cfg.patch_size, top_k=3))
    keep = top_k_cells(maps, 3)
    assert (keep.reshape(keep.shape[0], -1).sum(1) == 3).all()
    touched = np.repeat(np.repeat(keep.any(0), 8, 0), 8, 1)
    np.testing.assert_array_equal(overlay[~touched], image[~touched])
    assert (overlay[touched] != image[touched]).any(axis=-1).all()
    colours = hsv_colours(4)
    assert colours.shape == (4, 3) and tuple(colours[0]) == (255, 0, 0) and len({tuple(c) for c in colours}) == 4


# ------------------------------------------------------------------ correspondences


def test_attention_correspondence_rows_are_distributions(model: ZSESBIR, images) -> None:
    s, p, rel = _encode(model, images)
    n = model.cfg.num_patches
    corr = sketch_to_photo(model, s, p, "attention", top_m=4, relation=rel)
    assert corr.matrix.shape == (n, n) and corr.top_index.shape == (n, 4) and corr.top_score.shape == (n, 4)
    assert (corr.matrix >= 0).all()
    np.testing.assert_allclose(corr.matrix.sum(1), 1.0, atol=1e-5)
    # Dropped photo tokens are masked keys: they get no attention and never rank.
    assert (corr.matrix[:, ~corr.photo_kept] == 0).all()
    assert corr.photo_kept[corr.top_index].all()
    assert (np.diff(corr.top_score, axis=1) <= 0).all()
    np.testing.assert_array_equal(np.take_along_axis(corr.matrix, corr.top_index, 1), corr.top_score)
    assert corr.sketch_kept.shape == corr.photo_kept.shape == (n,)


def test_attention_orientation_is_sketch_query_photo_key(model: ZSESBIR, images) -> None:
    """Recompute softmax(Q_sketch K_photo^T) by hand: under either wiring the result must match."""
    s, p, rel = _encode(model, images)
    enc = model.ca.encoder
    # Under q_own_k_other_v_own the sketch branch (layer1) has sketch queries; under q_other_kv_own
    # the photo branch (layer2) does.
    layer = enc.layer1[0] if model.cfg.ca_wiring == "q_own_k_other_v_own" else enc.layer2[0]
    mha = layer.self_attn
    h, d = mha.heads, model.cfg.width
    with torch.no_grad():
        q = mha.linears[0](s.tokens).view(1, -1, h, d // h).transpose(1, 2)
        k = mha.linears[1](p.tokens).view(1, -1, h, d // h).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) * (d // h) ** -0.5
        if p.mask is not None:
            key_mask = torch.cat([torch.ones(1, 1, dtype=torch.bool), p.mask], 1)
            scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        expected = scores.softmax(-1)[0, :, 1:, 1:].mean(0)
    expected = (expected / expected.sum(1, keepdim=True)).numpy()
    got = attention_correspondence(rel, model.cfg.ca_wiring)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_cosine_correspondence(model: ZSESBIR, images) -> None:
    s, p, _ = _encode(model, images)
    n = model.cfg.num_patches
    corr = sketch_to_photo(model, s, p, "cosine", top_m=3)
    assert corr.method == "cosine" and corr.matrix.shape == (n, n)
    assert (np.abs(corr.matrix) <= 1 + 1e-5).all()
    with torch.no_grad():
        ss, pp = post_ca_patch_tokens(model, s, p)
    direct = torch.nn.functional.cosine_similarity(ss[0, :, None], pp[0, None, :], dim=-1).numpy()
    np.testing.assert_allclose(corr.matrix, direct, atol=1e-5)
    np.testing.assert_array_equal(corr.matrix, cosine_correspondence(model, s, p))
    assert corr.photo_kept[corr.top_index].all()
    assert corr.top_index.shape == (n, 3)


def test_top_matches_respects_mask_and_m() -> None:
    m = np.array([[0.1, 0.5, 0.4], [0.3, 0.3, 0.9]], dtype=np.float32)
    idx, score = top_matches(m, 5, photo_kept=np.array([True, False, True]))
    np.testing.assert_array_equal(idx, [[2, 0], [2, 0]])
    np.testing.assert_allclose(score, [[0.4, 0.1], [0.9, 0.3]], rtol=1e-6)
    with pytest.raises(ValueError, match="top_m"):
        top_matches(m, 0)


def test_unknown_method_raises(images) -> None:
    model = _model("official")
    s, p, _ = _encode(model, images)
    with pytest.raises(ValueError, match="unknown correspondence method"):
        sketch_to_photo(model, s, p, "relation")  # type: ignore[arg-type]


# ------------------------------------------------------------------ synthesis


def _assert_blocks_copied(synth_image: np.ndarray, photo: np.ndarray, source: np.ndarray, ps: int) -> None:
    g = source.shape[0]
    for i, j in enumerate(source.ravel()):
        if j == NOT_REPLACED:
            continue
        (r, c), (jr, jc) = divmod(i, g), divmod(int(j), g)
        out_block = synth_image[ps * r : ps * (r + 1), ps * c : ps * (c + 1)]
        np.testing.assert_array_equal(out_block, photo[ps * jr : ps * (jr + 1), ps * jc : ps * (jc + 1)])


@pytest.mark.parametrize("method", ["attention", "cosine"])
@pytest.mark.parametrize("assignment", ["argmax", "hungarian"])
def test_synthesis_cells_are_photo_patches(model: ZSESBIR, images, method: str, assignment: str) -> None:
    s, p, rel = _encode(model, images)
    g, ps, n = model.cfg.grid, model.cfg.patch_size, model.cfg.num_patches
    corr = sketch_to_photo(model, s, p, method, relation=rel)  # type: ignore[arg-type]
    photo = denormalize(images[1])
    synth = synthesize(photo, corr.matrix, ps, assignment)  # type: ignore[arg-type]
    assert synth.image.shape == (64, 64, 3) and synth.image.dtype == np.uint8
    assert synth.source.shape == (g, g)
    # Universal replacement: every cell is replaced by an exact photo block.
    assert (synth.source >= 0).all() and (synth.source < n).all()
    _assert_blocks_copied(synth.image, photo, synth.source, ps)
    if assignment == "argmax":
        np.testing.assert_array_equal(synth.source.ravel(), corr.matrix.argmax(1))
    else:
        assert len(np.unique(synth.source)) == synth.source.size  # each photo cell at most once
        total = corr.matrix[np.arange(n), synth.source.ravel()].sum()
        assert total >= corr.matrix[np.arange(n), np.random.default_rng(0).permutation(n)].sum() - 1e-5


@pytest.mark.parametrize("assignment", ["argmax", "hungarian"])
def test_synthesis_restricted_to_kept_tokens(images, assignment: str) -> None:
    model = _model("evit")
    s, p, rel = _encode(model, images)
    ps = model.cfg.patch_size
    corr = sketch_to_photo(model, s, p, "cosine", relation=rel)
    assert not corr.photo_kept.all() and not corr.sketch_kept.all()
    photo = denormalize(images[1])
    synth = synthesize(
        photo, corr.matrix, ps, assignment, corr.sketch_kept, corr.photo_kept, restrict_to_kept=True, fill=7
    )  # type: ignore[arg-type]
    src = synth.source.ravel()
    assert (src[~corr.sketch_kept] == NOT_REPLACED).all()
    replaced = src[src != NOT_REPLACED]
    assert corr.photo_kept[replaced].all()
    if assignment == "hungarian":
        assert len(np.unique(replaced)) == replaced.size
    _assert_blocks_copied(synth.image, photo, synth.source, ps)
    for i in np.flatnonzero(src == NOT_REPLACED):
        r, c = divmod(int(i), model.cfg.grid)
        assert (synth.image[ps * r : ps * (r + 1), ps * c : ps * (c + 1)] == 7).all()


def test_hungarian_with_fewer_photo_cells_leaves_unmatched() -> None:
    aff = np.random.default_rng(0).random((4, 4))
    src = assign_sources(aff, "hungarian", None, np.array([True, False, True, False]), restrict_to_kept=True)
    assert (src != NOT_REPLACED).sum() == 2 and set(src[src >= 0]) == {0, 2}
    with pytest.raises(ValueError, match="unknown assignment"):
        assign_sources(aff, "greedy")  # type: ignore[arg-type]


# ------------------------------------------------------------------ pipeline, PNGs, determinism


def test_explain_pair_and_pngs(model: ZSESBIR, images, tmp_path: Path) -> None:
    sketch, photo = images
    expl = explain_pair(model, sketch, photo, top_m=3, assignment="hungarian")
    assert isinstance(expl, Explanation)
    g, heads, n = model.cfg.grid, model.cfg.heads, model.cfg.num_patches
    assert expl.sketch_attention.shape == expl.photo_attention.shape == (heads, g, g)
    assert expl.correspondence.matrix.shape == (n, n) and expl.correspondence.top_index.shape == (n, 3)
    assert expl.synthesis.image.shape == expl.sketch_image.shape == expl.photo_image.shape == (64, 64, 3)
    assert 0 < expl.score < 1
    paths = save_explanation(expl, tmp_path / "a", arrays=True)
    sizes = {
        "sketch_attention.png": (64, 64),
        "photo_attention.png": (64, 64),
        "correspondences.png": (64 + 8 + 64, 64),
        "synthesis.png": (64, 64),
    }
    assert [q.name for q in paths] == [*sizes, "explanation.npz"]
    for q in paths[:-1]:
        with Image.open(q) as im:
            assert im.format == "PNG" and im.size == sizes[q.name] and im.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a" / "synthesis.png")), expl.synthesis.image)
    assert np.load(paths[-1])["correspondence"].shape == (n, n)
    scaled = save_explanation(expl, tmp_path / "b", scale=2)
    with Image.open(scaled[2]) as im:
        assert im.size == (2 * (64 + 8 + 64), 128)


def test_determinism(images, tmp_path: Path) -> None:
    model = _model("evit")
    sketch, photo = images
    a = explain_pair(model, sketch, photo, method="cosine")
    b = explain_pair(model, sketch.clone(), photo.clone(), method="cosine")
    for x, y in [
        (a.sketch_attention, b.sketch_attention),
        (a.photo_attention, b.photo_attention),
        (a.correspondence.matrix, b.correspondence.matrix),
        (a.correspondence.top_index, b.correspondence.top_index),
        (a.correspondence.top_score, b.correspondence.top_score),
        (a.synthesis.image, b.synthesis.image),
        (a.synthesis.source, b.synthesis.source),
    ]:
        np.testing.assert_array_equal(x, y)
    pa = save_explanation(a, tmp_path / "a")
    pb = save_explanation(b, tmp_path / "b")
    assert [q.read_bytes() for q in pa] == [q.read_bytes() for q in pb]


def test_explain_pair_input_errors(images) -> None:
    model = _model("official")
    sketch, photo = images
    with pytest.raises(ValueError, match="3x64x64"):
        explain_pair(model, sketch[:, :32], photo)
    model.train()
    with pytest.raises(ValueError, match=r"model\.eval"):
        explain_pair(model, sketch, photo)


def test_denormalize_range() -> None:
    img = denormalize(torch.stack([torch.full((2, 2), -1.0), torch.zeros(2, 2), torch.ones(2, 2)]))
    assert img.shape == (2, 2, 3) and img.dtype == np.uint8
    assert tuple(img[0, 0]) == (0, 128, 255)


def test_token_dropping_in_the_last_layer_still_explains(toy_batch):
    """The attention map of a block that drops tokens is over the tokens it attended to (before dropping);
    returning the positions after dropping made the map builder fail."""
    from sbir.config import ZSEConfig
    from sbir.models.zse import ZSESBIR

    torch.manual_seed(0)
    cfg = ZSEConfig(size="tiny", downsample="linear", evit_keep=[1.0, 1.0, 1.0, 0.5])
    model = ZSESBIR(cfg).eval()
    sketches, photos, _ = toy_batch
    expl = explain_pair(model, sketches[0], photos[0])
    assert expl.sketch_attention.shape == (cfg.heads, cfg.grid, cfg.grid)
    assert (expl.sketch_attention > 0).sum(axis=(1, 2)).max() <= cfg.num_patches
