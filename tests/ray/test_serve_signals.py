"""Stopping `sbir serve` as a terminal does: one Ctrl-C (SIGINT to the process group) while the endpoint is still
starting stops it then, and one SIGTERM to the process group while it serves (a terminal closed, a supervisor)
stops everything, the local Ray daemons with it, within seconds and without a second signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import write_small_synthetic

STOP_WITHIN_S = 100  # the endpoint's and Ray's own stop timeouts are 60 s and 15 s


@pytest.fixture(scope="module")
def model_and_gallery(tmp_path_factory) -> tuple[Path, Path]:
    from sbir.checkpoint import save_checkpoint
    from sbir.config import load_config
    from sbir.methods import family_of
    from tests.ray.serving import build_local_gallery

    tmp = tmp_path_factory.mktemp("signals")
    root = write_small_synthetic(tmp / "data")
    config = load_config("synthetic_clip_at", [f"data.root={root}"])
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp / "ckpt", family_of(config).build_model(config.model, False), config)
    photos = sorted(p for p in root.rglob("*.jpg") if "photo" in p.parts)[:8]
    return checkpoint, build_local_gallery(checkpoint, photos, tmp / "gallery")


def _serve(model_and_gallery, tmp_path: Path) -> subprocess.Popen:
    """`sbir serve` in a new session (its own process group, like a terminal's job), owning a local Ray."""
    from tests.ray.serving import free_port

    checkpoint, gallery = model_and_gallery
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "sbir.cli", "serve", "--model", str(checkpoint), "--gallery", str(gallery),
               f"serve.port={free_port()}", f"run.dir={tmp_path / 'runs'}"]  # fmt: skip
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def _read_until(proc: subprocess.Popen, prefix: str, lines: list[str], timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not any(line.startswith(prefix) for line in lines):
        assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
        lines.append(proc.stdout.readline())


def _stopped_within(proc: subprocess.Popen, lines: list[str]) -> str:
    """The rest of the output once the process and every process of its group are gone (killed if not)."""
    try:
        rest, _ = proc.communicate(timeout=STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("`sbir serve` did not stop after one signal:\n" + "".join(lines))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return rest
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("processes of `sbir serve`'s group outlived it")


def test_one_ctrl_c_while_the_endpoint_starts_stops_it(model_and_gallery, tmp_path):
    proc = _serve(model_and_gallery, tmp_path)
    lines: list[str] = []
    _read_until(proc, "starting the endpoint", lines)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
    rest = _stopped_within(proc, lines)
    output = "".join(lines) + rest
    assert proc.returncode == 0, output
    assert "stopping the endpoint (it was still starting)" in output and "serving " not in output
    assert "Traceback" not in output and "Exception ignored" not in output


def test_one_sigterm_to_the_process_group_while_serving_stops_everything(model_and_gallery, tmp_path):
    proc = _serve(model_and_gallery, tmp_path)
    lines: list[str] = []
    _read_until(proc, "serving ", lines)
    os.killpg(proc.pid, signal.SIGTERM)  # the local Ray daemons get it too, as from a closed terminal
    rest = _stopped_within(proc, lines)
    output = "".join(lines) + rest
    assert "stopping the endpoint" in output, output
    assert "Traceback" not in output and "Exception ignored" not in output
    deadline = time.monotonic() + 10  # a killed process can take a moment to leave /proc
    while _haproxy_of(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _haproxy_of(proc.pid) == [], "Ray's HAProxy outlived the cluster (it holds the endpoint's ports)"


def _haproxy_of(marker_pid: int) -> list[int]:
    """Live HAProxy processes of the local cluster a given `sbir` process started (by the marker it set)."""
    needle = f"SBIR_LOCAL_CLUSTER={marker_pid}-".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if b"haproxy" in (proc / "cmdline").read_bytes() and needle in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found
