"""Bad and hostile input that once lost data, escaped a folder, hung or ended in a traceback: each case runs the
command a user would type and asserts the one-line answer, and that nothing of the user's was touched."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch
from typer.testing import CliRunner

from sbir.checkpoint import save_checkpoint
from sbir.cli import app
from sbir.config import ConfigError, load_config
from sbir.methods import family_of
from tests.helpers import one_line_error

runner = CliRunner()


@pytest.fixture
def checkpoint(tmp_path):
    config = load_config("synthetic_clip_at")
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "ckpt", family_of(config).build_model(config.model, False), config)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- names are names, never paths


@pytest.mark.parametrize("name", ["../escaped", "/tmp/abs", "a/b", "..", ".hidden", ""])
def test_names_that_become_folders_must_be_plain_names(name, tmp_path, no_ray):
    with pytest.raises(ConfigError, match="is not a name"):
        load_config("synthetic_zse", [f"run.name={name}"])
    target = {"name": name, "root": "x", "layout": "generic", "split": "s"}
    with pytest.raises(ConfigError, match="is not a name"):
        load_config("synthetic_zse", [f"eval.targets=[{json.dumps(target)}]"])
    result = runner.invoke(
        app, ["train", "-c", "synthetic_zse", f"run.dir={tmp_path}", f"run.name={name}", "--dry-run"]
    )
    one_line_error(result, 2, "is not a name")
    assert list(tmp_path.iterdir()) == []


def test_resume_names_are_checked_and_a_dry_run_checks_the_run_exists(tmp_path, no_ray):
    base = ["train", "-c", "synthetic_zse", f"run.dir={tmp_path}", "--dry-run"]
    one_line_error(runner.invoke(app, [*base, "--resume", "nosuchrun"]), 1, "no run 'nosuchrun' to resume")
    one_line_error(runner.invoke(app, [*base, "--resume", "../up"]), 2, "not a name")
    (tmp_path / "trained").mkdir()
    (tmp_path / "trained" / "run.json").write_text(json.dumps({"status": "RUNNING", "kind": "run"}))
    sweep = runner.invoke(app, ["tune", "-c", "synthetic_zse", f"run.dir={tmp_path}", "--resume", "trained"])
    one_line_error(sweep, 1, "'trained'", "is a run, not a sweep")
    nosuch = runner.invoke(app, ["tune", "-c", "synthetic_zse", f"run.dir={tmp_path}", "--resume", "nosuch"])
    line = one_line_error(nosuch, 1, "no sweep 'nosuch' to resume", "holds no sweeps")
    assert "trained" not in line  # training runs are not offered as sweeps


# --------------------------------------------------------------------------- nothing is overwritten silently


def test_convert_official_refuses_an_existing_checkpoint_without_overwrite(checkpoint, tmp_path):
    before = {p.name: p.read_bytes() for p in checkpoint.iterdir()}
    args = ["model", "convert-official", str(tmp_path / "x.pth"), "--out", str(checkpoint)]
    one_line_error(runner.invoke(app, args), 2, "already exists", "--overwrite")
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir()} == before


def test_write_config_refuses_an_existing_file_a_folder_and_an_unwritable_place(tmp_path):
    existing = tmp_path / "serve.yaml"
    existing.write_text("mine\n")
    base = ["serve", "--model", "m", "--write-config"]
    one_line_error(runner.invoke(app, [*base, str(existing)]), 2, "already exists", "--overwrite")
    assert existing.read_text() == "mine\n"
    one_line_error(runner.invoke(app, [*base, str(tmp_path)]), 2, "is a folder")
    one_line_error(runner.invoke(app, [*base, "/proc/nope/x.yaml"]), 2, "cannot create its folder")
    replaced = runner.invoke(app, [*base, str(existing), "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert "applications" in existing.read_text()


def test_working_dir_without_write_config_is_refused(no_ray):
    result = runner.invoke(app, ["serve", "--model", "m", "--working-dir", "s3://b/sbir.zip"])
    one_line_error(result, 2, "--working-dir", "--write-config")


def test_eval_out_that_is_a_file_is_refused_before_any_work(checkpoint, tmp_path, no_ray):
    out = tmp_path / "report.txt"
    out.write_text("mine")
    result = runner.invoke(app, ["eval", "--checkpoint", str(checkpoint), "--out", str(out), f"run.dir={tmp_path}"])
    one_line_error(result, 2, "is a file")
    assert out.read_text() == "mine"


# --------------------------------------------------------------------------- links never lead out of a folder


def test_rasterize_never_writes_through_a_link(tmp_path):
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"mine")
    out = tmp_path / "out"
    out.mkdir()
    (out / "7.png").symlink_to(outside)
    drawing = {"key_id": "7", "drawing": [[[0, 10, 20], [0, 10, 0]]]}
    ndjson = tmp_path / "d.ndjson"
    ndjson.write_text(json.dumps(drawing) + "\n")
    result = runner.invoke(app, ["data", "rasterize", str(ndjson), "--out", str(out), "--overwrite"])
    one_line_error(result, 1, "is a link")
    assert outside.read_bytes() == b"mine"


def test_index_build_refuses_a_link_out_of_the_images_folder_in_a_dry_run(checkpoint, tmp_path, no_ray):
    images = tmp_path / "images"
    images.mkdir()
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"x")
    (images / "a.png").symlink_to(secret)
    args = ["index", "build", "--checkpoint", str(checkpoint), "--images", str(images), "--out", str(tmp_path / "g")]
    one_line_error(runner.invoke(app, [*args, "--dry-run"]), 2, "lead outside the folder", "a.png")


def test_index_build_dry_run_checks_the_checkpoint_and_roles(checkpoint, tmp_path, no_ray):
    images = tmp_path / "images"
    images.mkdir()
    base = ["index", "build", "--images", str(images), "--out", str(tmp_path / "g"), "--dry-run"]
    missing = runner.invoke(app, [*base, "--checkpoint", str(tmp_path / "nonexistent")])
    one_line_error(missing, 1, "nonexistent")
    bogus = runner.invoke(app, [*base, "--checkpoint", str(checkpoint), "--roles", "bogus"])
    one_line_error(bogus, 2, "--roles 'bogus'")
    ok = runner.invoke(app, [*base, "--checkpoint", str(checkpoint)])
    assert ok.exit_code == 0 and ok.output.startswith("ok:"), ok.output


def test_serve_checks_a_local_model_before_ray_starts(tmp_path, no_ray):
    result = runner.invoke(app, ["serve", "--model", str(tmp_path / "nonexistent")])
    one_line_error(result, 1, "nonexistent")


# --------------------------------------------------------------------------- no hangs, no unbounded work


def test_an_unreachable_tracking_server_fails_in_seconds(tmp_path, no_ray):
    uri = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    result = runner.invoke(app, ["eval", "--checkpoint", "models:/m@champion", f"tracking.uri={uri}"])
    one_line_error(result, 1, "cannot reach the MLflow server", uri)
    assert time.monotonic() - started < 60  # MLflow's own retries ran for minutes


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train", "-c", "synthetic_zse", "train.epochs=1000000", "--dry-run"], "train.epochs"),
        (["data", "rasterize", "x.ndjson", "--out", "o", "--size", "100000"], "--size"),
        (["data", "rasterize", "x.ndjson", "--out", "o", "--limit", "-1"], "--limit"),
        (["data", "synth", "--out", "o", "--image-size", "100000"], "--image-size"),
        (["data", "verify", "--layout", "sketchy", "--root", "r", "--val-fraction", "2"], "--val-fraction"),
        (
            ["data", "prepare", "--layout", "sketchy", "--root", "r", "--out", "o", "--val-fraction", "2"],
            "--val-fraction",
        ),
    ],
)
def test_sizes_have_limits(args, needle, tmp_path, monkeypatch, no_ray):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_infra_spec_that_is_a_folder_is_named_as_one(tmp_path):
    one_line_error(runner.invoke(app, ["infra", "commands", "--spec", str(tmp_path)]), 2, "is a folder")


# --------------------------------------------------------------------------- sbir query


class _Html(BaseHTTPRequestHandler):
    def do_POST(self):
        body = b"<html><body>a proxy page</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def html_server():
    server = HTTPServer(("127.0.0.1", 0), _Html)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_query_bad_files_urls_and_answers_are_one_line(tmp_path, html_server):
    empty = tmp_path / "empty.json"
    empty.write_text("")
    one_line_error(runner.invoke(app, ["query", str(empty)]), 2, "is empty")
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"drawing": "\xe9"}')
    one_line_error(runner.invoke(app, ["query", str(latin)]), 2, "not UTF-8")
    sketch = tmp_path / "s.png"
    sketch.write_bytes(b"png")
    one_line_error(runner.invoke(app, ["query", str(sketch), "--url", "http://[::1"]), 1, "not a valid URL")
    one_line_error(runner.invoke(app, ["query", str(sketch), "--url", "ftp://h"]), 1, "not an endpoint URL")
    answer = runner.invoke(app, ["query", str(sketch), "--url", html_server])
    one_line_error(answer, 1, "text/html", "not JSON")
