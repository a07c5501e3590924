"""`sbir data synth | verify | prepare` from the command line."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from sbir.cli import app

runner = CliRunner()


def test_synth_reports_what_it_wrote(synth_root):
    assert (synth_root / "Sketchy" / "zeroshot1" / "cname_cid.txt").is_file()
    assert list((synth_root / "Sketchy").rglob("*.png")), "no sketches written"


def test_synth_rejects_bad_sizes_with_exit_2(tmp_path):
    result = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "x"), "--classes", "0"])
    assert result.exit_code == 2
    assert "num_classes" in result.output or "classes" in result.output


def test_verify_passes_on_synth_output(synth_root):
    result = runner.invoke(
        app, ["data", "verify", "--layout", "sketchy", "--root", str(synth_root), "--split", "zeroshot1"]
    )
    assert result.exit_code == 0, result.output


def test_verify_json_and_exit_1_on_a_missing_file(synth_root, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(synth_root, copy)
    victim = next((copy / "Sketchy").rglob("*.jpg"))
    victim.unlink()
    result = runner.invoke(
        app, ["data", "verify", "--layout", "sketchy", "--root", str(copy), "--split", "zeroshot1", "--json"]
    )
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert victim.name in result.output


def test_prepare_and_verify_take_the_same_flags_and_exit_alike_on_a_missing_root(tmp_path):
    where = ["--layout", "sketchy", "--root", str(tmp_path / "nowhere"), "--split", "zeroshot1"]
    prepared = runner.invoke(app, ["data", "prepare", *where, "--out", str(tmp_path / "out")])
    verified = runner.invoke(app, ["data", "verify", *where])
    assert prepared.exit_code == verified.exit_code == 1, (prepared.output, verified.output)
    assert "nowhere" in prepared.output and "nowhere" in verified.output
    assert not (tmp_path / "out").exists()


def test_prepare_rejects_an_unknown_layout(tmp_path):
    args = ["data", "prepare", "--layout", "pinterest", "--root", str(tmp_path), "--split", "s", "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "unknown layout 'pinterest'" in result.output


def test_prepare_rejects_an_unknown_bad_file_policy(tmp_path):
    args = ["data", "prepare", "--layout", "sketchy", "--root", str(tmp_path), "--split", "zeroshot1"]
    args += ["--out", str(tmp_path)]
    result = runner.invoke(app, [*args, "--on-bad-file", "ignore"])
    assert result.exit_code == 2
    assert "--on-bad-file" in result.output


def test_rasterize_writes_one_png_per_drawing_and_reports_bad_lines(synth_root, tmp_path):
    from PIL import Image

    source = next((synth_root / "Sketchy" / "strokes").glob("*.ndjson"))
    drawings = source.read_text().splitlines()
    bad = tmp_path / "mixed.ndjson"
    bad.write_text("\n".join([drawings[0], '{"drawing": []}', drawings[1]]) + "\n")

    failed = runner.invoke(app, ["data", "rasterize", str(bad), "--out", str(tmp_path / "a")])
    assert failed.exit_code == 1 and "mixed.ndjson:2" in failed.output

    result = runner.invoke(
        app, ["data", "rasterize", str(bad), "--out", str(tmp_path / "b"), "--size", "48", "--on-bad-line", "skip"]
    )
    assert result.exit_code == 0, result.output
    pngs = sorted((tmp_path / "b").glob("*.png"))
    assert len(pngs) == 2 and "skipped 1" in result.output
    assert Image.open(pngs[0]).size == (48, 48)
