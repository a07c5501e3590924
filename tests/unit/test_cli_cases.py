"""The command line as a user meets it: careless inputs get one line and a right exit code, nothing of
theirs is overwritten, and nothing needing no cluster waits for Ray. (The Ray-side cases: tests/ray.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pipelines.evaluate import report_folder
from sbir.checkpoint import save_checkpoint
from sbir.cli import app
from sbir.config import ConfigError, config_for_checkpoint, load_config, with_absolute_paths
from sbir.errors import SbirError
from sbir.methods import family_of
from tests.helpers import one_line_error as _one_line_error

runner = CliRunner()


@pytest.fixture
def checkpoint(tmp_path):
    config = load_config("synthetic_zse", ["run.dir=/somewhere/else", "run.ray_address=10.9.8.7:6379"])
    torch.manual_seed(0)
    model = family_of(config).build_model(config.model, load_pretrained=False)
    return save_checkpoint(tmp_path / "ckpt", model, config, classes={"seen": ["a", "b"]})


# --------------------------------------------------------------------------- 1, 7: a checkpoint's config


def test_overrides_and_config_files_apply_on_top_of_the_checkpoints_config(tmp_path):
    stored = load_config("synthetic_zse", ["eval.rerank_k=17", "data.root=/data/x"])
    config = config_for_checkpoint(stored, None, ["eval.modes=[ret]"])
    assert config.model == stored.model and config.eval.rerank_k == 17 and config.eval.modes == ["ret"]
    assert config.data.root == "/data/x"
    mine = tmp_path / "mine.yaml"
    mine.write_text("eval: {tie_break: pessimistic}\nmodel: {method: zse, zse: {size: tiny}}\n")
    from_file = config_for_checkpoint(stored, mine, [])
    assert from_file.eval.tie_break == "pessimistic" and from_file.model.zse.image_size == 64


def test_a_config_that_changes_the_checkpoints_model_is_refused():
    stored = load_config("synthetic_zse")
    with pytest.raises(ConfigError, match=r"model\.zse\.depth=2 \(the checkpoint's is 4\)"):
        config_for_checkpoint(stored, None, ["model.zse.depth=2"])
    with pytest.raises(ConfigError, match="model cannot change"):
        config_for_checkpoint(stored, "zse_sketchy25", [])  # a base-size preset


def test_runtime_settings_never_come_from_the_checkpoint():
    stored = load_config("synthetic_zse", ["run.dir=/etc/evil", "run.ray_address=6.6.6.6:6379", "tracking.uri=x.db"])
    config = config_for_checkpoint(stored, None, [])
    assert config.run.dir == "runs" and config.run.ray_address is None and config.tracking.uri is None
    assert config_for_checkpoint(stored, None, ["run.dir=mine"]).run.dir == "mine"


def test_eval_with_an_override_reads_the_checkpoints_own_config(checkpoint, tmp_path, no_ray):
    """Before: any override replaced the checkpoint's config by defaults (224 px) and failed deep in Ray.
    The data section now comes from the checkpoint too, so the checkpoint's own dataset is looked for."""
    result = runner.invoke(app, ["eval", "--checkpoint", str(checkpoint), "eval.modes=[ret]", f"run.dir={tmp_path}"])
    _one_line_error(result, 1, "data/synthetic", "does not exist")  # the checkpoint's data.root, not a default


# --------------------------------------------------------------------------- 2: report folders


def test_the_default_report_folder_is_new_and_named_after_the_reference(tmp_path):
    first = report_folder(None, tmp_path, "models:/sbir-zse-synthetic@champion", "test", False)
    first.mkdir(parents=True)
    second = report_folder(None, tmp_path, "models:/sbir-zse-synthetic@champion", "test", False)
    assert first.parent == second.parent == tmp_path / "eval" and first != second
    assert first.name.startswith("models-sbir-zse-synthetic-champion-test-")
    other = report_folder(None, tmp_path, "runs/a/best", "test", False)
    assert other.name.startswith("runs-a-best-test-")


def test_an_existing_report_is_never_overwritten_silently(checkpoint, tmp_path, no_ray):
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.json").write_text("{}")
    result = runner.invoke(app, ["eval", "--checkpoint", str(checkpoint), "--out", str(out)])
    _one_line_error(result, 2, "already holds a report", "--overwrite")
    assert (out / "report.json").read_text() == "{}"


# --------------------------------------------------------------------------- 3: run names


def _small_train_args(root: Path, runs: Path, *extra: str) -> list[str]:
    return ["train", "-c", "synthetic_zse", f"data.root={root}", f"run.dir={runs}", *extra]


def test_reusing_a_runs_name_or_resuming_a_missing_run_is_refused(tmp_path, no_ray):
    runs = tmp_path / "runs"
    (runs / "done").mkdir(parents=True)
    (runs / "done" / "run.json").write_text(json.dumps({"mlflow_run_id": "x", "status": "FINISHED"}))
    again = runner.invoke(app, _small_train_args(tmp_path / "data", runs, "run.name=done"))
    _one_line_error(again, 1, "'done' already exists", "status FINISHED", "--resume done")
    missing = runner.invoke(app, [*_small_train_args(tmp_path / "data", runs), "--resume", "typo"])
    _one_line_error(missing, 1, "no run 'typo' to resume", "runs there: done")
    finished = runner.invoke(app, [*_small_train_args(tmp_path / "data", runs), "--resume", "done"])
    _one_line_error(finished, 1, "has finished")
    assert sorted(p.name for p in runs.iterdir()) == ["done"]


# --------------------------------------------------------------------------- 4: stored paths


def test_relative_paths_are_stored_resolved_and_uris_as_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = with_absolute_paths(
        load_config("synthetic_zse", ["data.root=d", "data.prepared=s3://b/p", "run.dir=r", "run.storage=s"])
    )
    assert config.data.root == str(tmp_path / "d") and config.data.prepared == "s3://b/p"
    assert config.run.dir == str(tmp_path / "r") and config.run.storage == str(tmp_path / "s")
    clip = with_absolute_paths(load_config("clip_at_sketchy25"))
    assert clip.model.clip_at.pretrained == "openai"  # an open_clip tag is not a path


# --------------------------------------------------------------------------- 5: validation classes, workers


def test_a_single_validation_class_is_refused_before_ray_starts(synth_root, tmp_path, no_ray):
    args = _small_train_args(synth_root, tmp_path / "runs", "data.val_fraction=0.1")  # 4 seen classes -> 1
    _one_line_error(runner.invoke(app, args), 2, "1 validation class", "at least 2")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").glob("*/run.json"))


def test_zero_training_workers_is_rejected():
    result = runner.invoke(app, ["config", "show", "-c", "synthetic_zse", "train.num_workers=0"])
    _one_line_error(result, 2, "train.num_workers", "greater than or equal to 1")


# --------------------------------------------------------------------------- 6: rasterize


def _drawing(key: str) -> str:
    return json.dumps({"key_id": key, "drawing": [[[0, 50, 100], [0, 80, 20]]]})


def test_rasterize_refuses_names_that_are_not_plain_file_names(tmp_path):
    for key in ("../../escape", "/tmp/abs", "a/b", ".hidden", "x" * 200):
        src = tmp_path / "d.ndjson"
        src.write_text(_drawing(key) + "\n")
        result = runner.invoke(app, ["data", "rasterize", str(src), "--out", str(tmp_path / "out")])
        _one_line_error(result, 1, "not a plain file name")
    assert not list(tmp_path.rglob("*.png")) and not (tmp_path.parent / "escape.png").exists()


def test_rasterize_never_overwrites_silently(tmp_path):
    src = tmp_path / "d.ndjson"
    src.write_text(_drawing("k1") + "\n" + _drawing("k1") + "\n")
    dup = runner.invoke(app, ["data", "rasterize", str(src), "--out", str(tmp_path / "a"), "--on-bad-line", "skip"])
    assert dup.exit_code == 0 and "wrote 1 sketches" in dup.output and "repeats an earlier drawing" in dup.output
    again = runner.invoke(app, ["data", "rasterize", str(src), "--out", str(tmp_path / "a")])
    _one_line_error(again, 1, "k1.png exists", "--overwrite")
    forced = runner.invoke(
        app, ["data", "rasterize", str(src), "--out", str(tmp_path / "a"), "--overwrite", "--on-bad-line", "skip"]
    )
    assert forced.exit_code == 0 and "wrote 1 sketches" in forced.output


# --------------------------------------------------------------------------- 8: lookups create nothing


def test_looking_up_a_missing_model_creates_no_store(tmp_path, monkeypatch, no_ray):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = runner.invoke(app, ["eval", "--checkpoint", "models:/nothing@champion"])
    _one_line_error(result, 1, "models:/nothing@champion", "does not exist")
    other = runner.invoke(app, ["eval", "--checkpoint", "models:/nothing@champion", "tracking.uri=sqlite:///x/m.db"])
    _one_line_error(other, 1, "does not exist")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- 10, 12: bounded waits, early checks


def test_an_unreachable_ray_address_fails_in_bounded_time():
    from pipelines.ray_runtime import ClusterError, check_reachable

    started = time.monotonic()
    with pytest.raises(ClusterError, match=r"127\.0\.0\.1:9 within 1 s"):
        check_reachable("127.0.0.1:9", 1.0)
    assert time.monotonic() - started < 10
    with pytest.raises(ClusterError, match="host:port"):
        check_reachable("nonsense", 1.0)


def test_a_local_cluster_that_cannot_start_is_one_error_naming_the_other_cluster(monkeypatch):
    """Ray's own start-up timeout (a traceback) becomes a ClusterError that says what to do."""
    import socket

    import ray

    import pipelines.ray_runtime as runtime

    def start_times_out(**kwargs):
        raise Exception("The current node timed out during startup. This could happen because ...")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", start_times_out)
    with socket.socket() as other_agent:  # another node's dashboard agent on this machine
        other_agent.bind(("127.0.0.1", 0))
        other_agent.listen()
        monkeypatch.setattr(runtime, "RAY_AGENT_PORT", other_agent.getsockname()[1])
        with pytest.raises(runtime.ClusterError, match=r"another Ray cluster is running on this machine.*ray start"):
            runtime.ensure_ray()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        monkeypatch.setattr(runtime, "RAY_AGENT_PORT", probe.getsockname()[1])  # nothing listens there
    with pytest.raises(runtime.ClusterError, match="may be overloaded"):
        runtime.ensure_ray()


def test_train_against_an_unreachable_cluster_names_it_and_stops(synth_root, tmp_path):
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    args = _small_train_args(
        synth_root, tmp_path / "runs", "run.ray_address=127.0.0.1:9", "run.ray_connect_timeout_s=2"
    )
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "sbir.cli", *args, "data.val_fraction=0.5"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 1, proc.stderr
    assert "127.0.0.1:9" in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - started < 60


def test_bad_storage_urls_fail_before_any_image_is_read(synth_root, checkpoint, monkeypatch, no_ray):
    where = ["--layout", "synthetic", "--root", str(synth_root), "--split", "zeroshot1"]
    no_bucket = runner.invoke(app, ["data", "prepare", *where, "--out", "s3:///prefix"])
    _one_line_error(no_bucket, 1, "has no bucket")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    for var, value in (("AWS_ACCESS_KEY_ID", "x"), ("AWS_SECRET_ACCESS_KEY", "y"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(var, value)
    unreachable = runner.invoke(app, ["data", "prepare", *where, "--out", "s3://bucket/prefix"])
    _one_line_error(unreachable, 1, "cannot reach S3 at http://127.0.0.1:9")
    reading = runner.invoke(app, ["eval", "--checkpoint", str(checkpoint), "--prepared", "s3://bucket/prepared"])
    _one_line_error(reading, 1, "cannot read s3://bucket/prepared")


def test_tracking_uris_that_mlflow_refuses_are_one_line_before_ray(synth_root, tmp_path, monkeypatch, no_ray):
    for uri, needle in (("./mlruns", "file store"), ("sqlite://x", "SQLite URIs look like")):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        result = runner.invoke(app, _small_train_args(synth_root, tmp_path / "runs", "data.val_fraction=0.5"))
        _one_line_error(result, 1, needle)


def test_a_run_dir_that_cannot_be_written_is_one_line(synth_root, tmp_path, no_ray):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = runner.invoke(app, _small_train_args(synth_root, blocker / "runs", "data.val_fraction=0.5"))
    _one_line_error(result, 1, "a-file")


# --------------------------------------------------------------------------- consistency


def test_eval_calls_the_evaluated_role_role_and_help_shows_no_bool_placeholders():
    assert "--role" in runner.invoke(app, ["eval", "--help"]).output
    for command in (["data", "verify"], ["data", "prepare"], ["data", "rasterize"], ["eval"], ["train"]):
        shown = runner.invoke(app, [*command, "--help"]).output
        assert "<bool>" not in shown, command


def test_verify_reports_on_stdout_and_errs_on_stderr(synth_root, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(synth_root, copy)
    next((copy / "Sketchy").rglob("*.jpg")).unlink()
    result = runner.invoke(app, ["data", "verify", "--layout", "sketchy", "--root", str(copy), "--split", "zeroshot1"])
    assert result.exit_code == 1 and "missing" in result.stdout
    last = result.stderr.replace("\r", "\n").strip().splitlines()[-1]  # after the progress bars
    assert last.startswith("error:") and "does not match split" in last and "Traceback" not in result.stderr


def test_every_project_error_is_an_sbir_error():
    from sbir.data.records import DatasetError
    from sbir.data.strokes import StrokeFormatError
    from sbir.inference.index import IndexFileError

    assert all(issubclass(cls, SbirError) for cls in (ConfigError, DatasetError, StrokeFormatError, IndexFileError))
