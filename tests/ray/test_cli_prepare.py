"""`sbir data prepare` from the command line, on a local Ray cluster."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from sbir.cli import app

runner = CliRunner()


def test_prepare_writes_a_manifest_from_synth(synth_root, tmp_path, ray_cluster):
    out = tmp_path / "prepared"
    result = runner.invoke(
        app, ["data", "prepare", "--source", f"synthetic:{synth_root}", "--split", "zeroshot1", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_rows"] == 6 * (2 + 2)
    assert set(manifest["counts"]) == {"train", "val", "test"}
