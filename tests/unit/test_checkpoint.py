"""The project's checkpoint format round-trips both model families, without pickle."""

from __future__ import annotations

import json

import pytest
import torch

from sbir.checkpoint import (
    CheckpointError,
    check_checkpoint,
    load_checkpoint,
    load_weights,
    read_checkpoint_meta,
    save_checkpoint,
)
from sbir.config import load_config
from sbir.methods import family_of


def _roundtrip(tmp_path, preset: str, images: torch.Tensor, **extra_overrides):
    cfg = load_config(preset, [f"{k}={v}" for k, v in extra_overrides.items()])
    torch.manual_seed(3)
    model = family_of(cfg).build_model(cfg.model, class_names=["cat", "teddy_bear"]).eval()
    path = save_checkpoint(
        tmp_path / "ckpt",
        model,
        cfg,
        classes={"seen": ["cat", "teddy_bear"], "unseen": ["dog"]},
        metrics={"map_all_voc": 0.5},
    )
    assert sorted(p.name for p in path.iterdir()) == ["checkpoint.json", "model.safetensors"]
    reloaded, meta = load_checkpoint(path)
    assert meta.config == cfg and meta.classes["unseen"] == ["dog"] and meta.metrics == {"map_all_voc": 0.5}
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), reloaded.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2), k1
    return model, reloaded, meta


def test_zse_roundtrip(tmp_path, toy_batch):
    sketches, photos, _ = toy_batch
    model, reloaded, meta = _roundtrip(tmp_path, "synthetic_zse", sketches)
    assert meta.method == "zse" and meta.preset == "official"
    with torch.no_grad():
        assert torch.equal(model(sketches[:2], photos[:2]).score, reloaded(sketches[:2], photos[:2]).score)


def test_zse_kernel_head_roundtrip(tmp_path, toy_batch):
    sketches, photos, _ = toy_batch
    model, reloaded, _ = _roundtrip(tmp_path, "synthetic_zse", sketches, **{"model.zse.relation_head": "kernel"})
    with torch.no_grad():
        assert torch.equal(model(sketches[:2], photos[:2]).score, reloaded(sketches[:2], photos[:2]).score)


def test_clip_at_roundtrip(tmp_path):
    images = torch.randn(2, 3, 64, 64)
    model, reloaded, meta = _roundtrip(tmp_path, "synthetic_clip_at", images)
    assert meta.method == "clip_at"
    with torch.no_grad():
        assert torch.equal(model.encode(images, "sketch"), reloaded.encode(images, "sketch"))
        assert torch.equal(model.encode(images, "photo"), reloaded.encode(images, "photo"))


def test_incomplete_or_corrupt_checkpoints_are_rejected(tmp_path, tiny_zse):
    cfg = load_config("synthetic_zse")
    path = save_checkpoint(tmp_path / "c", tiny_zse, cfg)
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors is missing"):
        load_checkpoint(path)
    (path / "checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_checkpoint_meta(path)
    meta = {"format_version": 99, "config": {}}
    (path / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format_version 99"):
        read_checkpoint_meta(path)
    with pytest.raises(CheckpointError, match=r"checkpoint\.json is missing"):
        read_checkpoint_meta(tmp_path / "nowhere")


def test_weights_that_do_not_match_the_config_are_rejected(tmp_path, tiny_zse):
    cfg = load_config("synthetic_zse")
    path = save_checkpoint(tmp_path / "c", tiny_zse, cfg)
    meta = json.loads((path / "checkpoint.json").read_text())
    meta["config"]["model"]["zse"]["relation_head"] = "kernel"
    (path / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not match the stored config"):
        load_checkpoint(path)


def test_weights_load_from_metadata_already_read_without_reading_it_again(tmp_path):
    """`sbir eval` checks a checkpoint before Ray starts and loads it after: its metadata is read once."""
    cfg = load_config("synthetic_zse")
    torch.manual_seed(3)
    saved = family_of(cfg).build_model(cfg.model).eval()
    path = save_checkpoint(tmp_path / "c", saved, cfg, classes={"seen": ["a", "b"]})
    meta = check_checkpoint(path)
    (path / "checkpoint.json").write_text("{not json")  # what a second read would stumble on
    model = load_weights(path, meta)
    assert not model.training
    for (k1, v1), (k2, v2) in zip(saved.state_dict().items(), model.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2), k1
