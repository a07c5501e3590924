"""The CLI's one error path: a project error is one line on stderr with its exit code, never a traceback,
and it is reported before Ray starts. Bugs keep their traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from sbir.checkpoint import save_checkpoint
from sbir.cli import app
from sbir.config import load_config
from sbir.errors import SbirError
from sbir.methods import family_of
from tests.helpers import one_line_error as _one_line_error

runner = CliRunner()


@pytest.fixture
def checkpoint(tmp_path):
    config = load_config("synthetic_zse")
    torch.manual_seed(0)
    model = family_of(config).build_model(config.model, load_pretrained=False)
    return save_checkpoint(tmp_path / "ckpt", model, config, classes={"seen": ["a", "b"]})


def test_a_corrupt_checkpoint_json_is_one_line(checkpoint, no_ray):
    (checkpoint / "checkpoint.json").write_text('{"format_version": 1, "config": ')
    _one_line_error(runner.invoke(app, ["eval", "--checkpoint", str(checkpoint)]), 1, "checkpoint.json", "JSON")


def test_a_truncated_weights_file_is_one_line(checkpoint, no_ray):
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    _one_line_error(runner.invoke(app, ["eval", "--checkpoint", str(checkpoint)]), 1, "model.safetensors")


def test_a_missing_dataset_root_is_one_line_before_ray_starts(tmp_path, no_ray):
    args = ["train", "-c", "synthetic_zse", f"data.root={tmp_path / 'nowhere'}", f"run.dir={tmp_path / 'runs'}"]
    _one_line_error(runner.invoke(app, args), 1, "nowhere", "does not exist")


def test_a_config_file_with_a_yaml_error_names_the_file(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("model:\n  method: zse\n   zse: {size: tiny\n")
    _one_line_error(runner.invoke(app, ["config", "show", "-c", str(bad)]), 2, "mine.yaml", "not valid YAML")


def test_converting_a_pickle_payload_or_a_missing_file_is_one_line(tmp_path):
    import os

    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    evil = tmp_path / "best_checkpoint.pth"
    torch.save({"model": {}, "x": Payload()}, evil)
    args = ["model", "convert-official", str(evil), "--out", str(tmp_path / "out"), "model.zse.size=tiny"]
    _one_line_error(runner.invoke(app, args), 1, "weights-only load refused")
    missing = ["model", "convert-official", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "out")]
    _one_line_error(runner.invoke(app, missing), 1, "not found", "nope.pth")
    assert not (tmp_path / "out").exists()


def test_convert_official_rejects_a_method_without_a_release(tmp_path):
    out = str(tmp_path / "o")
    args = ["model", "convert-official", str(tmp_path / "x.pth"), "--out", out, "-c", "synthetic_clip_at"]
    _one_line_error(runner.invoke(app, args), 1, "CLIP-AT has no released checkpoint")


def test_a_bug_keeps_its_traceback_and_debug_shows_project_errors_in_full(monkeypatch, checkpoint):
    import sbir.cli as cli

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "dump_config", broken)
    result = runner.invoke(app, ["config", "show"])
    assert isinstance(result.exception, RuntimeError)  # not turned into a polite one-liner

    (checkpoint / "checkpoint.json").write_text("{")
    debug = runner.invoke(app, ["--debug", "eval", "--checkpoint", str(checkpoint)])
    assert isinstance(debug.exception, SbirError) and "checkpoint.json" in str(debug.exception)


def test_the_installed_entry_point_prints_one_line_on_stderr(tmp_path):
    """The real process: stderr holds one line, stdout nothing, the exit code is the error's."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: -3}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "sbir.cli", "config", "show", "-c", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "train.epochs" in proc.stderr and "Traceback" not in proc.stderr
