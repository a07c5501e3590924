"""ZSE-SBIR: official layout, presets, relation stage, EViT and weight loading."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from sbir.config import ZSEConfig
from sbir.models.zse import ZSESBIR, load_official_checkpoint, official_state_dict_spec
from sbir.models.zse.official import CheckpointMismatchError
from sbir.models.zse.pretrained import load_backbone_weights
from sbir.models.zse.relation import Downsample, KernelRelationHead, cosine_matrix


def _random_official_state(spec: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {k: torch.randn(shape, generator=gen) * 0.02 for k, shape in spec.items()}


@pytest.fixture(scope="module")
def base_official():
    torch.manual_seed(0)
    return ZSESBIR(ZSEConfig()).eval()


def test_official_preset_has_exactly_the_release_names_and_shapes(base_official):
    spec = official_state_dict_spec()
    own = {k: tuple(v.shape) for k, v in base_official.state_dict().items()}
    assert own == spec
    assert sum(p.numel() for p in base_official.parameters()) == 102_180_632


def test_release_checkpoint_loads_strictly_and_runs(base_official, tmp_path):
    state = _random_official_state(official_state_dict_spec())
    path = tmp_path / "best_checkpoint.pth"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    load_official_checkpoint(base_official, path)
    loaded = base_official.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        out = base_official(x, x)
    assert out.score.shape == (1,) and 0 < out.score.item() < 1
    assert out.kernel.shape == (1, 49, 49)


def _save_like_the_release(path, state: dict[str, torch.Tensor]) -> None:
    """What the release's train.py writes: the state dict beside NumPy float64 metrics from np.nanmean."""
    import numpy as np

    torch.save(
        {
            "model": state,
            "epoch": 7,
            "map_all": np.nanmean(np.array([0.5, 0.75])),
            "precision_100": np.nanmean(np.array([0.25, np.nan])),
        },
        path,
    )


def _as_numpy1_file(src, dst) -> None:
    """The same file as NumPy 1 writes it: the scalar global is named numpy.core, not numpy._core."""
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray\nscalar" in data
                data = data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
            zout.writestr(item, data)


def test_release_style_checkpoint_with_numpy_scalars_loads_strictly(tmp_path):
    model = ZSESBIR(ZSEConfig(size="tiny"))
    state = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    release = tmp_path / "best_checkpoint.pth"
    _save_like_the_release(release, {f"module.{k}": v for k, v in state.items()})
    numpy1 = tmp_path / "numpy1_best_checkpoint.pth"
    _as_numpy1_file(release, numpy1)
    for path in (release, numpy1):
        fresh = ZSESBIR(ZSEConfig(size="tiny"))
        info = load_official_checkpoint(fresh, path)
        assert info == {"epoch": 7, "map_all": 0.625, "precision_100": 0.25}
        assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())


class _Payload:
    """An object whose unpickling would run code (here harmlessly: os.getcwd)."""

    def __reduce__(self):
        import os

        return (os.getcwd, ())


def test_release_loader_still_refuses_arbitrary_pickled_objects(tmp_path):
    from sbir.checkpoint import CheckpointError

    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": _Payload()}, path)
    with pytest.raises(CheckpointError, match=r"weights-only load refused it: .*getcwd"):
        load_official_checkpoint(ZSESBIR(ZSEConfig(size="tiny")), path)


def test_release_checkpoint_rejects_wrong_size(tmp_path, tiny_zse):
    state = _random_official_state(official_state_dict_spec())
    with pytest.raises(CheckpointMismatchError, match="wrong shape"):
        load_official_checkpoint(tiny_zse, state)
    del state["rn.rn.0.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"missing: rn\.rn\.0\.weight"):
        load_official_checkpoint(ZSESBIR(ZSEConfig(depth=1)), state)


def test_paper_and_kernel_presets_load_the_rest_of_the_release():
    state = _random_official_state(official_state_dict_spec())
    paper = ZSESBIR(ZSEConfig(preset="paper", depth=12))
    assert not any(k.startswith("ca.encoder.layers.") for k in paper.state_dict())
    load_official_checkpoint(paper, state)  # dead copy skipped by rule
    kernel = ZSESBIR(ZSEConfig(relation_head="kernel"))
    load_official_checkpoint(kernel, state)
    assert torch.equal(kernel.conv2d.weight, state["conv2d.weight"])
    assert sum(p.numel() for p in kernel.rn.parameters()) == kernel.cfg.kernel_count + 1


def test_encode_and_relate_shapes(tiny_zse, toy_batch):
    sketches, photos, _ = toy_batch
    enc = tiny_zse.encode(sketches, "sketch")
    assert enc.ret.shape == (12, 64) and enc.tokens.shape == (12, 65, 64) and enc.mask is None
    rel = tiny_zse.relate(enc, tiny_zse.encode(photos, "photo"))
    assert rel.score.shape == (12,) and rel.kernel.shape == (12, 16, 16)
    assert ((rel.score > 0) & (rel.score < 1)).all()
    with pytest.raises(ValueError, match="aligned pairs"):
        tiny_zse.relate(enc, tiny_zse.encode(photos[:3], "photo"))


def test_score_matrix_equals_pairwise_relation(tiny_zse, toy_batch):
    sketches, photos, _ = toy_batch
    sk = tiny_zse.encode(sketches[:5], "sketch")
    ph = tiny_zse.encode(photos[:7], "photo")
    matrix = tiny_zse.score_matrix(sk, ph, pair_batch=6)
    with torch.no_grad():
        for i in range(5):
            for j in range(7):
                single = tiny_zse.relate(sk.select(slice(i, i + 1)), ph.select(slice(j, j + 1))).score
                assert matrix[i, j].item() == pytest.approx(single.item(), abs=1e-5)


def test_tokenizer_scope_controls_modalities(toy_batch):
    sketches, _, _ = toy_batch
    torch.manual_seed(0)
    paper = ZSESBIR(ZSEConfig(size="tiny", preset="paper")).eval()
    vit = paper.sa.model
    assert vit.uses_tokenizer("sketch") and not vit.uses_tokenizer("photo")
    # Same pixels, different modality -> different tokens only because of the tokenizer.
    a = paper.encode(sketches[:2], "sketch").ret
    b = paper.encode(sketches[:2], "photo").ret
    assert not torch.allclose(a, b)
    none = ZSESBIR(ZSEConfig(size="tiny", tokenizer_scope="none")).eval()
    assert not hasattr(none.sa.model, "scale")


def test_wirings_differ(toy_batch):
    sketches, photos, _ = toy_batch
    scores = []
    for wiring in ("q_own_k_other_v_own", "q_other_kv_own"):
        torch.manual_seed(0)
        model = ZSESBIR(ZSEConfig(size="tiny", ca_wiring=wiring)).eval()
        with torch.no_grad():
            scores.append(model(sketches[:3], photos[:3]).sketch_ret)
    assert not torch.allclose(scores[0], scores[1])


def test_post_ca_features_depend_on_the_paired_image(tiny_zse, toy_batch):
    sketches, photos, _ = toy_batch
    with torch.no_grad():
        a = tiny_zse(sketches[:1], photos[:1]).sketch_ret
        b = tiny_zse(sketches[:1], photos[5:6]).sketch_ret
    assert not torch.allclose(a, b)


def test_spatial_downsample_is_local_and_scramble_is_not():
    torch.manual_seed(0)
    tokens = torch.randn(1, 64, 64)
    bumped = tokens.clone()
    bumped[0, 0] += 10.0  # patch (0, 0)
    for mode, expect_local in (("spatial_2x2", True), ("reshape_scramble", False)):
        down = Downsample(ZSEConfig(size="tiny", downsample=mode))
        changed = (down(bumped) - down(tokens)).abs().sum(-1)[0] > 1e-6
        if expect_local:
            assert changed.nonzero().flatten().tolist() == [0]  # only relation token (0, 0)
        else:
            assert changed.sum() > 1


def test_evit_drops_tokens_and_masks_relation(toy_batch):
    sketches, photos, _ = toy_batch
    cfg = ZSEConfig(size="tiny", downsample="linear", evit_keep=[1, 0.75, 1, 0.5])
    torch.manual_seed(0)
    model = ZSESBIR(cfg).eval()
    enc = model.encode(sketches[:2], "sketch")
    assert enc.mask is not None and enc.mask.sum(1).tolist() == [24, 24]  # 64 -> 48 -> 24
    assert (enc.tokens[:, 1:][~enc.mask] == 0).all()
    rel = model.relate(enc, model.encode(photos[:2], "photo"))
    assert rel.kernel.shape == (2, 64, 64)
    assert (rel.kernel[0][~enc.mask[0]] == 0).all()  # removed sketch tokens are not counted


def test_kernel_head_pooling_matches_definition():
    head = KernelRelationHead(kernels=5, sigma=0.2, scale=1.0)
    s = torch.rand(2, 3, 3) * 2 - 1
    mu = torch.linspace(-1, 1, 5)
    phi = torch.exp(-((s[..., None] - mu) ** 2) / (2 * 0.2**2))
    expected = torch.log(phi.sum(2) + 1e-10).sum(1)
    assert torch.allclose(head.pooled(s), expected, atol=1e-5)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    masked = head.pooled(s, mask, mask)
    expected0 = torch.log(phi[0, :2, :2].sum(1) + 1e-10).sum(0)
    assert torch.allclose(masked[0], expected0, atol=1e-5)


def test_cosine_matrix_zero_vectors_give_zero():
    s = torch.zeros(1, 2, 4)
    s[0, 0] = 1
    p = torch.ones(1, 3, 4)
    m = cosine_matrix(s, p)
    assert torch.isfinite(m).all() and (m[0, 1] == 0).all()


def test_timm_backbone_weights_load_with_explicit_map(tmp_path):
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    cfg = ZSEConfig(size="tiny")
    vit = timm_vit.VisionTransformer(
        img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0, num_classes=10
    )
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    model = ZSESBIR(cfg)
    load_backbone_weights(model, path, "timm")
    assert torch.equal(model.sa.model.embedding.weight, vit.patch_embed.proj.weight)
    assert torch.equal(model.sa.model.transformer.layers[2][0].mlp.net[3].weight, vit.blocks[2].mlp.fc2.weight)
    extra = dict(vit.state_dict())
    extra["blocks.0.ls1.gamma"] = torch.ones(64)
    save_file({k: v.contiguous() for k, v in extra.items()}, str(path))
    with pytest.raises(CheckpointMismatchError, match="no mapping"):
        load_backbone_weights(model, path, "timm")


def test_training_reduces_loss_on_a_fixed_batch(toy_batch):
    from sbir.losses.zse import zse_loss

    sketches, photos, _ = toy_batch
    torch.manual_seed(0)
    model = ZSESBIR(ZSEConfig(size="tiny", dropout=0.0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # Quadruplets: anchor class c, same-class other sketch, positive photo of c, photo of class c+1.
    idx = torch.arange(0, 12, 3)
    batch = (sketches[idx], sketches[idx + 1], photos[idx + 2], photos[(idx + 3) % 12])
    first = None
    for _ in range(25):
        parts = zse_loss(model, *batch)
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
        first = first if first is not None else parts["loss"].item()
    assert parts["loss"].item() < 0.5 * first


@pytest.mark.parametrize("sigma", [0.05, 0.1, 0.2])
@pytest.mark.parametrize("kernels", [5, 11, 21])
@pytest.mark.parametrize("centre", [0.0, 0.9])  # tokens uncorrelated, or near-identical as in random-init ViTs
def test_the_kernel_head_starts_at_half_with_a_live_gradient(sigma, kernels, centre):
    torch.manual_seed(0)
    s = (centre + 0.05 * torch.randn(8, 49, 49)).clamp(-1, 1).requires_grad_(True)
    head = KernelRelationHead(kernels, sigma, 0.01)
    head.eval()
    saturated = head(s)  # before its first training batch: bias 0, the eps floor drags every logit down
    head.train()
    score = head(s)
    assert abs(float(score.detach().mean()) - 0.5) < 0.05 and bool(head.initialised)
    grad = torch.autograd.grad(score.sum(), s)[0].abs().mean()
    grad_saturated = torch.autograd.grad(saturated.sum(), s)[0].abs().mean()
    assert grad > 1e-4, "the sigmoid is not saturated: the kernel matrix gets a gradient"
    if sigma <= 0.1:
        assert float(saturated.detach().mean()) < 0.02 and grad > 10 * grad_saturated
    before = head.bias.detach().clone()
    head(s)
    assert torch.equal(head.bias.detach(), before), "initialised once, then trained like any parameter"
