"""Shared fixtures: tiny models and toy images (no downloads, no Ray)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


@pytest.fixture
def tiny_zse_cfg():
    from sbir.config import ZSEConfig

    return ZSEConfig(size="tiny")


@pytest.fixture
def tiny_zse(tiny_zse_cfg):
    from sbir.models.zse import ZSESBIR

    torch.manual_seed(0)
    return ZSESBIR(tiny_zse_cfg).eval()


@pytest.fixture
def toy_batch():
    """Normalised toy sketches/photos (64 px) for 4 classes x 3 instances, with labels."""
    from sbir.methods.zse import ZSEFamily
    from tests.toy_shapes import make_toy_set

    pairs = make_toy_set(list(range(4)), 3, seed=1, size=64)
    transform = ZSEFamily.transform_for(64)
    sketches = torch.stack([transform(p.sketch, "sketch") for p in pairs])
    photos = torch.stack([transform(p.photo, "photo") for p in pairs])
    labels = torch.tensor([p.label for p in pairs])
    return sketches, photos, labels


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A local S3-compatible server (moto) on 127.0.0.1, configured through the standard AWS variables.

    Session-scoped and started before Ray so every Ray worker inherits the endpoint and keys.
    """
    import subprocess
    import sys
    import time
    import urllib.request

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.2)
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """One local Ray cluster for the whole test session (`local_cpus()` logical CPUs, no dashboard)."""
    import ray

    from pipelines.ray_runtime import ensure_ray

    ensure_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture
def toy_split(tmp_path):
    """8 toy classes on disk: 5 train, 1 val, 2 test; one sketch + one photo per instance."""
    from sbir.data.records import DatasetSplit, ImageRecord
    from tests.toy_shapes import TOY_CLASSES, make_toy_set

    root = tmp_path / "toy"
    records = []
    for i, pair in enumerate(make_toy_set(list(range(8)), 3, seed=4)):
        name = TOY_CLASSES[pair.label]
        (root / name).mkdir(parents=True, exist_ok=True)
        pair.sketch.save(root / name / f"{i}-1.png")
        pair.photo.save(root / name / f"{i}.jpg")
        role = "test" if pair.label >= 6 else "val" if pair.label == 5 else "train"
        records.append(ImageRecord(f"{name}/{i}-1.png", name, "sketch", role, str(i)))
        records.append(ImageRecord(f"{name}/{i}.jpg", name, "photo", role, str(i)))
    return DatasetSplit(str(root), "generic", "toy", TOY_CLASSES[:5], TOY_CLASSES[5:6], TOY_CLASSES[6:], records)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A 6-class synthetic dataset written by `sbir data synth` (32 px, 2 sketches + 2 photos per class)."""
    from typer.testing import CliRunner

    from sbir.cli import app
    from tests.helpers import SMALL_SYNTH_ARGS

    out = tmp_path_factory.mktemp("synth")
    args = ["data", "synth", "--out", str(out), "--seed", "3", "--unseen-fraction", "0.34", *SMALL_SYNTH_ARGS]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


RAY_TESTS = Path(__file__).parent / "ray"
RAY_FIXTURES = {"ray_cluster", "ray_head", "s3_server"}


def pytest_collection_modifyitems(config, items):
    """Tests under tests/ray start Ray or servers: they are `slow`. A fast test may not ask for Ray."""
    for item in items:
        in_ray_folder = RAY_TESTS in Path(item.fspath).parents
        if in_ray_folder:
            item.add_marker(pytest.mark.slow)
        elif RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            raise pytest.UsageError(f"{item.nodeid} starts Ray or a server: move it under tests/ray/")


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if the command gets as far as connecting to Ray (its checks must come first)."""
    import pipelines.evaluate
    import pipelines.ray_runtime
    import pipelines.train

    def refuse(*args, **kwargs):
        raise AssertionError("the command connected to Ray before checking its input")

    for module in (pipelines.ray_runtime, pipelines.train, pipelines.evaluate):
        monkeypatch.setattr(module, "ensure_ray", refuse)
