"""CLIP-AT model: offline tiny backbone, prompt layout, sharing, tuning modes, text classifier, loading."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.constants import IMAGENET_MEAN, OPENAI_DATASET_MEAN

from sbir.config import ClipATConfig
from sbir.losses.clip_at import ClipATLoss
from sbir.models.clip_at import (
    TINY_MODEL_NAME,
    ClipAT,
    build_clip_at,
    clip_at_losses,
    layernorm_parameter_names,
    normalize_class_name,
    official_trainable_names,
)

WIDTH, LAYERS, PATCHES, EMBED = 64, 2, 16, 32  # sbir-tiny-vit: 64 px / 16 px patches = 4x4
LN_PER_COPY = (1 + 2 * LAYERS + 1) * 2 * WIDTH  # ln_pre, ln_1/ln_2 per block, ln_post; weight + bias


def tiny(class_names: list[str] | None = None, **overrides: object) -> ClipAT:
    settings: dict[str, object] = {"backbone": TINY_MODEL_NAME, "pretrained": None, **overrides}
    cfg = ClipATConfig(**settings)
    return build_clip_at(cfg, class_names)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_tiny_builds_offline_and_encodes(images: torch.Tensor) -> None:
    model = tiny()
    assert model.image_size == 64
    assert model.mean == pytest.approx(OPENAI_DATASET_MEAN)
    for modality in ("sketch", "photo"):
        out = model.encode(images, modality)
        assert out.shape == (3, EMBED)
        assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.equal(model(images, "sketch"), model.encode(images, "sketch"))


def test_normalization_and_presets() -> None:
    model = tiny(normalization="imagenet")
    assert model.mean == pytest.approx(IMAGENET_MEAN)
    official = tiny(preset="official")
    assert official.cfg.freeze == "official_freeze" and official.photo_ln is None
    assert official.mean == pytest.approx(IMAGENET_MEAN)


def test_bad_inputs_raise(images: torch.Tensor) -> None:
    model = tiny()
    with pytest.raises(ValueError, match="modality"):
        model.encode(images, "drawing")
    with pytest.raises(ValueError, match="64 x 64"):
        model.encode(torch.randn(1, 3, 32, 32), "sketch")


@pytest.mark.parametrize("pool_type", ["tok", "avg"])
def test_zero_prompts_reproduce_open_clip_forward(images: torch.Tensor, pool_type: str) -> None:
    """With K = 0 the re-implemented forward is exactly open_clip's own visual forward."""
    model = tiny().eval()
    visual = model.encoder.visual
    visual.pool_type = pool_type
    empty = torch.zeros(1, 0, WIDTH)
    with torch.no_grad():
        assert torch.allclose(model.encoder(images, empty), visual(images), atol=1e-5)
        if pool_type == "avg":  # token pooling averages the original tokens only, never the prompts
            seen: dict[str, torch.Tensor] = {}
            hook = visual.ln_post.register_forward_hook(lambda m, a, o: seen.__setitem__("n", a[0].shape[1]))
            model.encode(images, "sketch")
            hook.remove()
            assert seen["n"] == 1 + PATCHES


def test_prompts_are_appended_after_cls_and_patches(images: torch.Tensor) -> None:
    model = tiny(prompt_len=3).eval()
    visual = model.encoder.visual
    seen: dict[str, torch.Tensor] = {}
    h1 = visual.ln_pre.register_forward_hook(lambda m, a, o: seen.__setitem__("ln_pre_in", a[0].detach()))
    h2 = visual.transformer.resblocks[0].register_forward_hook(
        lambda m, a, o: seen.__setitem__("block_in", a[0].detach())
    )
    try:
        with torch.no_grad():
            before = model.encode(images, "sketch")
            tokens_before = seen["ln_pre_in"].clone()
            assert seen["block_in"].shape == (3, 1 + PATCHES + 3, WIDTH)
            # The last K tokens are the raw prompts: no positional embedding added.
            assert torch.allclose(tokens_before[:, -3:], model.prompts("sketch")[0].expand(3, -1, -1))
            # (a random change: a constant shift would be removed by ln_pre)
            model.prompts.sets["sketch"].add_(torch.randn(1, 3, WIDTH))
            after = model.encode(images, "sketch")
    finally:
        h1.remove()
        h2.remove()
    # CLS + patch tokens are unchanged by the prompts; the output changes.
    assert torch.equal(tokens_before[:, : 1 + PATCHES], seen["ln_pre_in"][:, : 1 + PATCHES])
    assert not torch.allclose(before, after)


def test_shallow_vs_deep_prompt_counts_and_replacement(images: torch.Tensor) -> None:
    shallow = tiny(prompt_len=3, prompt_depth="shallow")
    deep = tiny(prompt_len=3, prompt_depth="deep")
    count = lambda m: sum(p.numel() for p in m.prompts.parameters())  # noqa: E731
    assert count(shallow) == 2 * 3 * WIDTH
    assert count(deep) == 2 * LAYERS * 3 * WIDTH
    assert deep.trainable_parameter_count() - shallow.trainable_parameter_count() == 2 * (LAYERS - 1) * 3 * WIDTH
    seen: dict[str, torch.Tensor] = {}
    hook = deep.encoder.visual.transformer.resblocks[1].register_forward_hook(
        lambda m, a, o: seen.__setitem__("in", a[0].detach())
    )
    try:
        with torch.no_grad():
            deep.encode(images, "photo")
    finally:
        hook.remove()
    assert seen["in"].shape == (3, 1 + PATCHES + 3, WIDTH)
    assert torch.equal(seen["in"][:, -3:], deep.prompts("photo")[1].expand(3, -1, -1))


def test_prompt_sharing(images: torch.Tensor) -> None:
    per = tiny(prompt_sharing="per_modality", ln_sharing="shared")
    with torch.no_grad():
        assert not torch.allclose(per.encode(images, "sketch"), per.encode(images, "photo"))
    shared = tiny(prompt_sharing="shared", ln_sharing="shared")
    assert list(shared.prompts.sets.keys()) == ["shared"]
    with torch.no_grad():
        assert torch.equal(shared.encode(images, "sketch"), shared.encode(images, "photo"))


def test_per_modality_layernorm_copies(images: torch.Tensor) -> None:
    model = tiny(prompt_sharing="shared", ln_sharing="per_modality")
    with torch.no_grad():
        # Copies start equal to the backbone's LN, so both modalities agree at initialisation ...
        assert torch.allclose(model.encode(images, "sketch"), model.encode(images, "photo"), atol=1e-6)
        model.photo_ln.params["ln_post__weight"].add_(torch.randn(WIDTH))  # random: a scale would normalise away
        sketch, photo = model.encode(images, "sketch"), model.encode(images, "photo")
    # ... and the photo pass reads the copy while the backbone's own LN stays untouched.
    assert not torch.allclose(sketch, photo)
    assert torch.allclose(model.encoder.visual.ln_post.weight, model.photo_ln.params["ln_post__weight"].new_ones(1))


def test_ln_only_trainable_count() -> None:
    model = tiny(freeze="ln_only", prompt_sharing="per_modality", ln_sharing="per_modality", prompt_len=3)
    assert model.layernorm_parameter_count() == LN_PER_COPY
    assert model.trainable_parameter_count() == 2 * 3 * WIDTH + 2 * LN_PER_COPY
    shared = tiny(freeze="ln_only", prompt_sharing="shared", ln_sharing="shared", prompt_len=3)
    assert shared.trainable_parameter_count() == 3 * WIDTH + LN_PER_COPY
    # Text tower and logit scale stay frozen.
    assert not any(p.requires_grad for p in model.classifier.parameters())


def test_official_freeze_set_matches_released_filter() -> None:
    model = tiny(freeze="official_freeze", ln_sharing="shared", prompt_sharing="shared")
    visual = model.encoder.visual
    expected = set(layernorm_parameter_names(visual)) | {"class_embedding", "positional_embedding", "proj"}
    for i in range(LAYERS):
        expected |= {f"transformer.resblocks.{i}.attn.in_proj_weight", f"transformer.resblocks.{i}.attn.in_proj_bias"}
    assert set(official_trainable_names(visual)) == expected
    trainable = {n.removeprefix("encoder.visual.") for n in model.trainable_parameter_names() if "visual" in n}
    assert trainable == expected
    frozen = {n for n, p in visual.named_parameters() if not p.requires_grad}
    assert "conv1.weight" in frozen and "transformer.resblocks.0.attn.out_proj.weight" in frozen
    assert "transformer.resblocks.0.mlp.c_fc.weight" in frozen


@pytest.mark.parametrize("freeze", ["ln_only", "official_freeze"])
def test_gradients_reach_only_trainable_parameters(images: torch.Tensor, freeze: str) -> None:
    model = tiny(["cat", "dog"], freeze=freeze, prompt_sharing="per_modality", ln_sharing="per_modality")
    sketch, photo = model.encode(images, "sketch"), model.encode(images, "photo")
    labels = torch.tensor([0, 1, 0])
    loss = (1 - (sketch * photo).sum(-1)).mean()
    loss = (
        loss + F.cross_entropy(model.class_logits(sketch), labels) + F.cross_entropy(model.class_logits(photo), labels)
    )
    loss.backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, name
            assert torch.isfinite(param.grad).all(), name
        else:
            assert param.grad is None, name
    # The photo LN copy, not the backbone LN, receives the photo gradient (and vice versa).
    assert model.photo_ln.params["ln_pre__weight"].grad.abs().sum() > 0
    assert model.encoder.visual.ln_pre.weight.grad.abs().sum() > 0


def test_param_groups() -> None:
    model = tiny()
    groups = model.param_groups(lr_prompt=1e-4, lr_backbone=1e-6)
    assert [g["name"] for g in groups] == ["prompts", "backbone"]
    assert [g["lr"] for g in groups] == [1e-4, 1e-6]
    assert sum(p.numel() for g in groups for p in g["params"]) == model.trainable_parameter_count()
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.prompts.parameters()}
    torch.optim.Adam(groups)  # accepted as-is


def test_text_classifier_offline() -> None:
    names = ["alarm_clock", "car_(sedan)", "cat"]
    model = tiny(names)
    assert normalize_class_name("alarm_clock") == "alarm clock"
    emb = model.classifier.class_embeddings
    assert emb.shape == (3, EMBED) and not emb.requires_grad
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    text = model.classifier.text_model
    tokens = open_clip.get_tokenizer(TINY_MODEL_NAME)(["a photo of a alarm clock"])
    with torch.no_grad():
        direct = F.normalize(text.encode_text(tokens), dim=-1)
    assert torch.allclose(emb[0], direct[0], atol=1e-5)
    # Random-init open_clip logit scale is 1/0.07; logits are scale * cosine.
    assert model.cls_scale == pytest.approx(1 / 0.07, rel=1e-4)
    f = F.normalize(torch.randn(4, EMBED), dim=-1)
    assert torch.allclose(model.class_logits(f), model.cls_scale * f @ emb.t(), atol=1e-5)
    model.set_classes(["dog", "bird"])
    assert model.class_logits(f).shape == (4, 2) and model.class_names == ["dog", "bird"]
    # Saved with the model (a checkpoint is rebuilt from a random text tower): see the checkpoint test below.
    assert torch.equal(model.state_dict()["classifier.class_embeddings"], model.classifier.class_embeddings)


def test_classifier_temperature_and_errors() -> None:
    model = tiny(cls_temperature=0.01)
    assert model.cls_scale == pytest.approx(100.0)
    with pytest.raises(RuntimeError, match="set_classes"):
        model.class_logits(torch.randn(2, EMBED))
    with pytest.raises(ValueError, match="placeholder"):
        tiny(cls_template="a photo")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_local_checkpoint_round_trip(tmp_path, suffix: str) -> None:
    torch.manual_seed(123)
    source = open_clip.create_model(TINY_MODEL_NAME, pretrained=None)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"tiny{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    model = tiny(pretrained=str(path))
    assert model.pretrained == str(path.resolve())
    for name, value in model.encoder.visual.state_dict().items():
        assert torch.equal(value, state[f"visual.{name}"]), name
    assert torch.equal(model.classifier.text_model.token_embedding.weight, state["token_embedding.weight"])
    # Photo LN copies start from the loaded weights.
    assert torch.equal(model.photo_ln.params["ln_post__weight"], state["visual.ln_post.weight"])


def test_clear_errors_for_bad_backbones(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"unknown open_clip model.*ViT-B-32"):
        tiny(backbone="ViT-B-3")
    with pytest.raises(ValueError, match="ResNet"):
        build_clip_at(ClipATConfig(backbone="RN50", pretrained=None))
    with pytest.raises(ValueError, match="timm"):
        build_clip_at(ClipATConfig(backbone="convnext_base", pretrained=None))
    with pytest.raises(ValueError, match="known tags"):
        tiny(pretrained="no-such-tag")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tiny(pretrained=str(tmp_path / "missing.pt"))
    wrong = tmp_path / "wrong.pt"
    torch.save({"visual.proj": torch.zeros(3, 3)}, wrong)
    with pytest.raises(RuntimeError, match="could not load checkpoint"):
        tiny(pretrained=str(wrong))


def test_clip_at_losses_glue(images: torch.Tensor) -> None:
    names = ["cat", "dog"]
    labels = torch.tensor([0, 1, 0, 1])
    batch = torch.randn(4, 3, 64, 64)
    cat_cfg = ClipATConfig(backbone=TINY_MODEL_NAME, pretrained=None)
    model = build_clip_at(cat_cfg, names)
    parts = clip_at_losses(model, ClipATLoss(cat_cfg), batch, batch.flip(0), batch.roll(1, 0), labels)
    assert set(parts) == {"triplet", "ce_sketch", "ce_photo", "loss"}
    fg_cfg = ClipATConfig(backbone=TINY_MODEL_NAME, pretrained=None, granularity="fine_grained")
    fg = build_clip_at(fg_cfg, names)
    parts = clip_at_losses(fg, ClipATLoss(fg_cfg), batch, batch.flip(0), batch.roll(1, 0), labels, torch.Generator())
    assert set(parts) == {"triplet", "ce_sketch", "ce_photo", "delta", "ps", "loss"}
    parts["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in fg.parameters() if p.requires_grad)


def test_vit_b32_trainable_counts_match_spec() -> None:
    """ViT-B/32 (random weights, offline; ~3 s): 39,936 LN scalars per copy; official filter 21,733,632."""
    ln_only = build_clip_at(ClipATConfig(backbone="ViT-B-32-quickgelu", pretrained=None))
    assert ln_only.layernorm_parameter_count() == 39_936
    assert sum(p.numel() for p in ln_only.prompts.parameters()) == 4_608
    assert ln_only.trainable_parameter_count() == 4_608 + 2 * 39_936
    assert sum(p.numel() for p in ln_only.encoder.visual.parameters()) == 87_849_216
    del ln_only
    official = build_clip_at(ClipATConfig(backbone="ViT-B-32-quickgelu", pretrained=None, preset="official"))
    visual_trainable = sum(p.numel() for p in official.encoder.visual.parameters() if p.requires_grad)
    assert visual_trainable == 21_733_632
    assert official.trainable_parameter_count() == 21_733_632 + 4_608


def test_clip_at_state_dict_round_trip(images: torch.Tensor) -> None:
    """A trained CLIP-AT state dict (prompts, LN copies, backbone) loads strictly into a fresh model."""
    source, target = tiny(["cat"]), tiny(["cat"])
    with torch.no_grad():
        source.photo_ln.params["ln_pre__bias"].add_(torch.randn(WIDTH))
    target.load_state_dict(source.state_dict())
    with torch.no_grad():
        for modality in ("sketch", "photo"):
            assert torch.equal(source.encode(images, modality), target.encode(images, modality))


def test_a_saved_checkpoint_keeps_the_classifiers_text_embeddings_and_scale(tmp_path):
    """load_checkpoint rebuilds the model with a random text tower; the classifier must still be the trained one's."""
    from sbir.checkpoint import load_checkpoint, save_checkpoint
    from sbir.config import load_config
    from sbir.methods import family_of

    config = load_config("synthetic_clip_at")
    classes = ["cat", "dog", "hot_air_balloon"]
    torch.manual_seed(1)
    trained = family_of(config).build_model(config.model, classes, load_pretrained=False).eval()
    trained.classifier.logit_scale.fill_(100.0)  # as an `openai` backbone has, unlike a random one (14.29)
    save_checkpoint(tmp_path / "ckpt", trained, config, classes={"seen": classes})
    torch.manual_seed(2)  # another random text tower at rebuild time
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert loaded.cls_scale == 100.0
    assert torch.equal(loaded.classifier.class_embeddings, trained.classifier.class_embeddings)
    features = torch.nn.functional.normalize(torch.randn(4, trained.embed_dim), dim=-1)
    assert torch.allclose(loaded.class_logits(features), trained.class_logits(features))


def test_the_open_clip_floor_has_the_pooling_the_encoder_calls():
    import re
    import tomllib
    from pathlib import Path

    from open_clip.transformer import VisionTransformer

    deps = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [d for d in deps if d.startswith("open_clip_torch")]
    floor = tuple(int(x) for x in re.search(r">=\s*([\d.]+)", spec).group(1).split("."))
    assert floor >= (2, 32), "visual._pool, which the prompted encoder calls, first appears in open_clip 2.32.0"
    assert hasattr(VisionTransformer, "_pool")
