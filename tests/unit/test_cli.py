"""The `sbir` command line."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from sbir.checkpoint import load_checkpoint
from sbir.cli import app
from sbir.config import ZSEConfig, load_config
from sbir.models.zse import ZSESBIR

runner = CliRunner()


def test_config_show_applies_overrides():
    result = runner.invoke(app, ["config", "show", "-c", "synthetic_zse", "train.epochs=7"])
    assert result.exit_code == 0, result.output
    assert "epochs: 7" in result.output and "method: zse" in result.output


def test_config_errors_exit_2_and_name_the_key():
    result = runner.invoke(app, ["config", "show", "model.zse.relation_head=forest"])
    assert result.exit_code == 2
    assert "model.zse.relation_head" in result.output and "'mlp' or 'kernel'" in result.output


def test_presets_listed():
    result = runner.invoke(app, ["config", "presets"])
    assert result.exit_code == 0 and "synthetic_zse" in result.output.split()


def test_model_info_counts_parameters():
    result = runner.invoke(app, ["model", "info", "-c", "synthetic_zse"])
    assert result.exit_code == 0, result.output
    zse = load_config("synthetic_zse").model.zse
    expected = sum(p.numel() for p in ZSESBIR(zse).parameters())
    assert f"parameters: {expected:,}" in result.output


def test_convert_official_writes_a_project_checkpoint(tmp_path):
    model = ZSESBIR(ZSEConfig(size="tiny"))
    release = tmp_path / "best_checkpoint.pth"
    torch.save({"model": model.state_dict()}, release)
    out = tmp_path / "converted"
    result = runner.invoke(app, ["model", "convert-official", str(release), "--out", str(out), "model.zse.size=tiny"])
    assert result.exit_code == 0, result.output
    reloaded, meta = load_checkpoint(out)
    assert meta.extra["source"] == str(release)
    assert torch.equal(reloaded.conv2d.weight, model.conv2d.weight)


def test_convert_official_keeps_the_release_files_epoch_and_metrics(tmp_path):
    from tests.unit.test_zse_model import _save_like_the_release

    model = ZSESBIR(ZSEConfig(size="tiny"))
    release = tmp_path / "best_checkpoint.pth"
    _save_like_the_release(release, model.state_dict())
    out = tmp_path / "converted"
    result = runner.invoke(app, ["model", "convert-official", str(release), "--out", str(out), "model.zse.size=tiny"])
    assert result.exit_code == 0, result.output
    _, meta = load_checkpoint(out)
    assert (meta.extra["release_epoch"], meta.extra["release_map_all"]) == (7, 0.625)
    assert "release epoch=7" in result.output
