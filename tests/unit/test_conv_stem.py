"""The conv-BatchNorm stem for random-init tiny ViTs, alone and inside CLIP-AT."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from sbir.config import ClipATConfig, load_config
from sbir.models.clip_at import build_clip_at
from sbir.models.conv_stem import ConvStem


@pytest.mark.parametrize("patch", [2, 8, 16])
def test_stem_gives_the_patch_embedding_grid(patch: int) -> None:
    stem = ConvStem(48, patch)
    out = stem(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 48, 64 // patch, 64 // patch)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in stem.modules()) == patch.bit_length() - 1


def test_per_modality_stem_keeps_separate_statistics() -> None:
    stem = ConvStem(16, 4, modalities=("sketch", "photo"))
    stem.train()
    stem(torch.randn(4, 3, 16, 16) + 3.0, "sketch")
    stem(torch.randn(4, 3, 16, 16) - 3.0, "photo")
    first = stem.norms[0]
    assert not torch.allclose(first["sketch"].running_mean, first["photo"].running_mean)
    with pytest.raises(ValueError, match="per modality"):
        stem(torch.randn(1, 3, 16, 16))


@pytest.mark.parametrize("patch", [1, 6, 12])
def test_stem_rejects_patch_sizes_it_cannot_reach(patch: int) -> None:
    with pytest.raises(ValueError, match="power-of-two patch size"):
        ConvStem(48, patch)


def test_clip_at_conv_stem_replaces_the_patch_embedding_and_always_trains() -> None:
    model = build_clip_at(ClipATConfig(backbone="sbir-tiny-vit", pretrained=None, stem="conv_bn", freeze="ln_only"))
    assert isinstance(model.encoder.visual.conv1, ConvStem)
    names = model.trainable_parameter_names()
    stem_names = [n for n in names if ".conv1." in n]
    assert stem_names, "the random-init stem must be trainable even when the backbone is frozen"
    assert not any(".transformer.resblocks.0.attn.in_proj_weight" in n for n in names)  # ln_only still holds

    images = torch.randn(4, 3, 64, 64)
    for modality in ("sketch", "photo"):
        emb = model.encode(images, modality)
        assert emb.shape == (4, model.embed_dim)
        emb.sum().backward()
    assert model.encoder.visual.conv1.convs[0].weight.grad.abs().sum() > 0


def test_conv_stem_refuses_pretrained_weights() -> None:
    with pytest.raises(ValidationError, match="stem=conv_bn"):
        ClipATConfig(backbone="sbir-tiny-vit", pretrained="openai", stem="conv_bn")


def test_synthetic_preset_uses_the_stem_and_paper_presets_do_not() -> None:
    assert load_config("synthetic_clip_at").model.clip_at.stem == "conv_bn"
    assert load_config("clip_at_sketchy25").model.clip_at.stem == "patch"
    assert load_config("synthetic_zse").model.zse.stem == "conv_bn"
    assert load_config("zse_sketchy25").model.zse.stem == "patch"


def test_zse_conv_stem_replaces_the_patch_embedding() -> None:
    from sbir.config import ZSEConfig
    from sbir.models.zse.vit import VisionTransformer

    vit = VisionTransformer(ZSEConfig(size="tiny", stem="conv_bn", tokenizer_scope="none"))
    assert isinstance(vit.embedding, ConvStem)
    out = vit(torch.randn(2, 3, 64, 64), "sketch")
    assert out.tokens.shape[1] == 1 + (64 // 8) ** 2
    out.tokens.sum().backward()
    assert vit.embedding.convs[0].weight.grad.abs().sum() > 0


def test_zse_conv_stem_refuses_pretrained_weights(tmp_path) -> None:
    from sbir.config import ZSEConfig

    with pytest.raises(ValidationError, match="stem=conv_bn"):
        ZSEConfig(size="tiny", stem="conv_bn", backbone_weights=str(tmp_path / "vit.safetensors"))
