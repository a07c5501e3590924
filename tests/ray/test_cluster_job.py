"""`sbir train` as a Ray job: start a Ray head with `ray start`, submit with `ray job submit`, check the run.

The test talks to its own head only through `ray` CLI subprocesses. It never calls `ray.init`, so it
cannot touch the in-process cluster of the `ray_cluster` fixture that other tests in the same pytest
process may have started. It does not use `ray stop` either: `ray stop` terminates every Ray process
on the machine (it matches process names), including other clusters. Instead the head runs under
`ray start --block`, whose SIGTERM handler shuts down exactly the processes it started. Any process
left behind is found by a marker environment variable that only this head's processes inherit.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.helpers import SHORT_TRAINING, SMALL_VAL_FRACTION, write_small_synthetic

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv the tests run in; the head and the job use the same one
RAY = BIN / "ray"
MARKER = "SBIR_TEST_RAY_HEAD"  # inherited by every process of the head started here, and only by those
# Large or generated folders that must not be uploaded with the working dir (.gitignore covers most of them).
EXCLUDES = ["/.venv/", "/.git/", "/data/", "/runs/", "/demo_out/", "/.pytest_cache/", "/.ruff_cache/"]
ANSI = re.compile(r"\x1b\[[0-9;]*m")
HEAD_START_TIMEOUT = 180
JOB_TIMEOUT = 600


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


@dataclass
class Head:
    address: str  # the dashboard (job submission) address
    env: dict[str, str]
    gcs: str  # the GCS address drivers connect to (`ray.init(address=...)`)
    temp_dir: Path
    log: Path


def _ray(head: Head, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(RAY), *args], env=head.env, capture_output=True, text=True, timeout=timeout, check=False)


def _marked_pids(token: str) -> list[int]:
    """PIDs of live processes whose environment carries this head's marker."""
    needle = f"{MARKER}={token}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _stop_head(proc: subprocess.Popen, token: str) -> None:
    """SIGTERM the blocking `ray start` (it stops its own processes), then kill any marked straggler."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    deadline = time.monotonic() + 20  # workers exit on their own once their raylet is gone
    while (pids := _marked_pids(token)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _wait_for_jobs_api(address: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + HEAD_START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"`ray start` exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{address}/api/jobs/", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Ray head did not serve {address} in {HEAD_START_TIMEOUT} s:\n{log.read_text()}")
        time.sleep(1)


NODE_RESOURCES = ("gallery_home_a", "gallery_home_b")  # one custom resource per node: pins a shard to a node


def _second_node(head: Head, tmp_path: Path, temp_dir: Path) -> subprocess.Popen:
    """A second Ray node on loopback joined to the head (its own ports), offering NODE_RESOURCES[1].

    It gets its own temp dir: nodes sharing one would share `runtime_resources/`, and this node's runtime-env
    agent would delete a job's unpacked working dir while the head's driver still runs in it."""
    agent, grpc, metrics, runtime_env, node_manager, object_manager = _free_ports(6)
    command = [
        str(RAY), "start", "--block", "--address", head.gcs,
        "--node-ip-address", "127.0.0.1",
        "--temp-dir", str(temp_dir),
        "--num-cpus", "2",
        "--resources", json.dumps({NODE_RESOURCES[1]: 1}),
        "--dashboard-agent-listen-port", str(agent),
        "--dashboard-agent-grpc-port", str(grpc),
        "--metrics-export-port", str(metrics),
        "--runtime-env-agent-port", str(runtime_env),
        "--node-manager-port", str(node_manager),
        "--object-manager-port", str(object_manager),
        "--min-worker-port", "21000", "--max-worker-port", "21999",  # the head's workers use the default range
        "--object-store-memory", str(1 << 29),
        "--disable-usage-stats",
    ]  # fmt: skip
    log = (tmp_path / "ray-node.log").open("w")
    proc = subprocess.Popen(command, env=head.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + HEAD_START_TIMEOUT
    while len(_alive_nodes(head)) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "ray-node.log").read_text()[-3000:]
        time.sleep(1)
    return proc


def _alive_nodes(head: Head) -> list[str]:
    """Ids of the cluster's live nodes (Ray's state API over the head's dashboard; no `ray.init`)."""
    from ray.util.state import list_nodes

    return [n.node_id for n in list_nodes(address=head.address, filters=[("state", "=", "ALIVE")])]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory) -> Iterator[Head]:
    """A Ray cluster on loopback, two nodes (a head and a second node, each offering one of NODE_RESOURCES),
    with its own short temp dir (unix socket paths are limited to ~107 bytes), shared by the tests of this
    module (each uses its own run names and Serve application)."""
    tmp_path = tmp_path_factory.mktemp("ray-head")
    if not RAY.exists():
        pytest.skip(f"no ray CLI next to {sys.executable}")
    token = uuid.uuid4().hex
    temp_dir = Path(tempfile.mkdtemp(prefix="sbir-rj-", dir="/tmp"))
    node_temp_dir = Path(tempfile.mkdtemp(prefix="sbir-rn-", dir="/tmp"))
    gcs_port, dashboard_port, client_port, agent_port = _free_ports(4)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env |= {
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "RAY_AUTH_MODE": "disabled",  # must be the same for `ray start` and every client
        "RAY_USAGE_STATS_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # no 30 s drain on SIGTERM (nothing to drain here)
        MARKER: token,
    }
    log = tmp_path / "ray-head.log"
    command = [
        str(RAY), "start", "--head", "--block",
        "--node-ip-address", "127.0.0.1",
        "--port", str(gcs_port),
        "--dashboard-host", "127.0.0.1",
        "--dashboard-port", str(dashboard_port),
        "--ray-client-server-port", str(client_port),  # default 10001 may belong to another head
        "--dashboard-agent-listen-port", str(agent_port),  # default 52365 likewise
        "--temp-dir", str(temp_dir),
        "--num-cpus", "4",
        "--resources", json.dumps({NODE_RESOURCES[0]: 1}),
        "--object-store-memory", str(1 << 30),
        "--disable-usage-stats",
    ]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard_port}"
    head = Head(address, env | {"RAY_ADDRESS": address}, f"127.0.0.1:{gcs_port}", temp_dir, log)
    node = None
    try:
        _wait_for_jobs_api(head.address, proc, log)
        node = _second_node(head, tmp_path, node_temp_dir)
        yield head
    finally:
        if node is not None:
            _stop_head(node, token)
        _stop_head(proc, token)
        shutil.rmtree(temp_dir, ignore_errors=True)
        shutil.rmtree(node_temp_dir, ignore_errors=True)
    assert not _marked_pids(token), "processes of the test's Ray head are still running"


def test_sbir_train_runs_as_a_ray_job_on_a_ray_start_head(ray_head, tmp_path):
    from mlflow import MlflowClient

    from sbir.checkpoint import read_checkpoint_meta

    write_small_synthetic(tmp_path / "data")  # `sbir train` prepares it inside the job
    runs = tmp_path / "runs"
    run_name = f"job-{uuid.uuid4().hex[:8]}"
    train = [
        "sbir", "train", "-c", "synthetic_zse",
        f"data.root={tmp_path / 'data'}",
        f"data.prepared={tmp_path / 'prepared'}",
        f"data.val_fraction={SMALL_VAL_FRACTION}",
        f"run.dir={runs}",
        f"run.name={run_name}",
        *SHORT_TRAINING,
        "train.eval_at_end=false",  # evaluation inside train is covered by test_train; it adds ~30 s here
    ]  # fmt: skip
    job_id = f"sbir-test-{uuid.uuid4().hex[:8]}"
    runtime_env = {"excludes": EXCLUDES, "env_vars": {"HF_HUB_OFFLINE": "1"}}
    started = time.monotonic()
    try:
        submit = _ray(
            ray_head,
            "job", "submit",
            "--address", ray_head.address,
            "--submission-id", job_id,
            "--working-dir", str(REPO),
            "--runtime-env-json", json.dumps(runtime_env),
            "--", *train,  # ray quotes each argument (shlex.join)
            timeout=JOB_TIMEOUT,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        _ray(ray_head, "job", "stop", "--address", ray_head.address, job_id)
        logs = _ray(ray_head, "job", "logs", "--address", ray_head.address, job_id).stdout
        pytest.fail(f"job {job_id} did not finish in {JOB_TIMEOUT} s; logs:\n{logs[-6000:]}")
    elapsed = time.monotonic() - started
    status = _ray(ray_head, "job", "status", "--address", ray_head.address, job_id)
    logs = _ray(ray_head, "job", "logs", "--address", ray_head.address, job_id).stdout
    (tmp_path / "job.log").write_text(logs)
    detail = f"submit rc={submit.returncode}\n{submit.stdout[-3000:]}\n{submit.stderr[-3000:]}\nlogs:\n{logs[-6000:]}"
    assert submit.returncode == 0, detail
    status_text = ANSI.sub("", status.stdout + status.stderr)
    assert f"job '{job_id}' succeeded" in status_text.lower(), f"{status_text}\n{detail}"

    run_dir = runs / run_name
    assert f"best checkpoint: {run_dir / 'best'}" in logs, detail
    assert "registered: models:/sbir-zse-synthetic/1" in logs, detail
    meta = read_checkpoint_meta(run_dir / "best")
    assert (run_dir / "best" / "model.safetensors").is_file()
    assert meta.extra["epoch"] in (1, 2) and len(meta.classes["unseen"]) == 3
    assert (tmp_path / "prepared" / "manifest.json").is_file(), "the job prepared data.root into data.prepared"
    assert (runs / "mlflow.db").is_file(), "the embedded MLflow store lives in run.dir"
    tracked = json.loads((run_dir / "run.json").read_text())
    assert tracked["tracking_uri"] == f"sqlite:///{runs / 'mlflow.db'}"
    run = MlflowClient(tracked["tracking_uri"]).get_run(tracked["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == run_name
    assert run.data.params["train.epochs"] == "2" and {"train_loss", "val_map_all_voc"} <= set(run.data.metrics)
    print(f"job {job_id} finished in {elapsed:.0f} s")


def _shard_nodes(head: Head) -> dict[str, str]:
    """The node of each live GalleryShard replica, by actor class name."""
    from ray.util.state import list_actors

    actors = list_actors(address=head.address, filters=[("state", "=", "ALIVE")], limit=1000)
    return {a.class_name: a.node_id for a in actors if "GalleryShard" in a.class_name}


def test_the_generated_serve_config_deploys_with_serve_deploy_on_a_ray_start_head(ray_head, tmp_path):
    """The Serve config `sbir serve --write-config` writes is what `serve deploy` (and a RayService) runs;
    `sbir serve` serves the same model on the same cluster. The deployed config shards a CLIP-AT gallery over
    two GalleryShard deployments pinned to the two nodes, and answers as the gallery does on one node."""
    import torch

    from sbir.checkpoint import save_checkpoint
    from sbir.client import Client
    from sbir.config import load_config
    from sbir.methods import family_of
    from tests.ray.serving import build_local_gallery, free_port, offline_ids

    root = write_small_synthetic(tmp_path / "data")
    config = load_config("synthetic_clip_at", [f"data.root={root}"])
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "ckpt", family_of(config).build_model(config.model, False), config)
    photos = sorted(p for p in root.rglob("*.jpg") if "photo" in p.parts)[:12]
    gallery = build_local_gallery(checkpoint, photos, tmp_path / "gallery")
    port = free_port()
    yaml_path = tmp_path / "serve.yaml"
    placement = f"serve.gallery.shard_resources=[{{{NODE_RESOURCES[0]}: 0.01}}, {{{NODE_RESOURCES[1]}: 0.01}}]"
    write = subprocess.run(
        [str(BIN / "sbir"), "serve", "--write-config", str(yaml_path), "--model", str(checkpoint),
         "--gallery", str(gallery), f"serve.port={port}", f"run.dir={tmp_path / 'runs'}",
         "serve.gallery.shards=2", "serve.gallery.shard.num_cpus=0.25", "serve.ingress.num_cpus=0.25", placement],
        env=ray_head.env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert write.returncode == 0, write.stderr
    deployments = [d["name"] for d in yaml.safe_load(yaml_path.read_text())["applications"][0]["deployments"]]
    assert deployments == ["Ingress", "GalleryShard0", "GalleryShard1"]
    serve_cli = str(BIN / "serve")
    deploy = subprocess.run(
        [serve_cli, "deploy", str(yaml_path), "--address", ray_head.address],
        env=ray_head.env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        with Client(url) as client:
            while not client.ready():
                assert time.monotonic() < deadline, _ray(ray_head, "status").stdout
                time.sleep(2)
            info = client.info()
            assert info["method"] == "clip_at" and info["gallery_size"] == len(photos) and info["modes"] == ["ret"]
            assert info["gallery_shards"] == 2
            for photo in photos[:3]:
                answer = client.search(photo.read_bytes(), k=len(photos))
                assert answer.mode == "ret" and answer.ids == offline_ids(checkpoint, gallery, photo)
        assert len(set(_shard_nodes(ray_head).values())) == 2, _shard_nodes(ray_head)
    finally:
        subprocess.run(
            [serve_cli, "shutdown", "-y", "--address", ray_head.address],
            env=ray_head.env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    # `sbir serve` against the same cluster: prints the URL once ready, serves, and stops on Ctrl-C.
    env = ray_head.env | {"RAY_ADDRESS": ray_head.gcs}
    command = [str(BIN / "sbir"), "serve", "--model", str(checkpoint), "--gallery", str(gallery),
               f"serve.port={port}", f"run.dir={tmp_path / 'runs'}"]  # fmt: skip
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 300
        while not any(line.startswith("serving ") for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            lines.append(proc.stdout.readline())
        assert f"at http://127.0.0.1:{port}" in lines[-1]
        with Client(f"http://127.0.0.1:{port}") as client:
            assert len(client.search(photos[1].read_bytes(), k=3).hits) == 3
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, "".join(lines) + rest
    assert "stopping the endpoint" in rest
