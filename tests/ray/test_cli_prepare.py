"""`sbir data prepare` from the command line, on a local Ray cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from pipelines.prepare import PENDING
from sbir.cli import app

runner = CliRunner()


def test_prepare_writes_a_manifest_from_synth(synth_root, tmp_path, ray_cluster):
    out = tmp_path / "prepared"
    result = runner.invoke(
        app,
        [
            "data",
            "prepare",
            "--layout",
            "synthetic",
            "--root",
            str(synth_root),
            "--split",
            "zeroshot1",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_rows"] == 6 * (2 + 2)
    assert set(manifest["counts"]) == {"train", "val", "test"}


def _sbir(*args: str) -> subprocess.CompletedProcess:
    """`sbir …` in its own process (it starts its own local Ray cluster)."""
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "sbir.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_a_normal_run_shows_the_projects_lines_and_keeps_rays_internals_out(synth_root, tmp_path):
    out = tmp_path / "prepared"
    (out / "data-0123456789ab-deadbeef").mkdir(parents=True)  # shards left by an interrupted preparation,
    (out / PENDING).write_text(json.dumps(["data-0123456789ab-deadbeef"]))  # which recorded them before writing
    (out / "data-mine").mkdir()  # and a folder of the user's
    where = ["--layout", "synthetic", "--root", str(synth_root), "--split", "zeroshot1", "--out", str(out)]
    first = _sbir("data", "prepare", *where)
    assert first.returncode == 0, first.stderr
    assert "prepared 24 images" in first.stdout
    for internal in ("core_worker", "streaming_executor", "Started a local Ray instance", "worker processes"):
        assert internal not in first.stderr, (internal, first.stderr)
    assert not (out / "data-0123456789ab-deadbeef").exists(), "orphan shards are cleaned up"
    assert (out / "data-mine").is_dir() and not (out / PENDING).exists(), "only what the project wrote goes"
    again = _sbir("-v", "data", "prepare", *where)
    assert again.returncode == 0 and "already prepared from the same inputs; nothing to do" in again.stderr
    assert "ray" not in again.stderr.lower(), "an up-to-date output starts no Ray cluster"
    fresh = [*where[:-1], str(tmp_path / "fresh")]
    verbose = _sbir("-v", "data", "prepare", *fresh)
    assert verbose.returncode == 0 and "ray" in verbose.stderr.lower(), "-v shows Ray's own lines"
    assert len(verbose.stderr) > len(first.stderr)
