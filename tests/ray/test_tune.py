"""`sbir tune` end to end: a tiny ASHA sweep, interrupted after its first finished trial and resumed,
tracked on a real `mlflow server`; then the best config trains with `sbir train -c best.yaml`.

`sbir tune` runs in its own process, as a user runs it: it starts its own local Ray cluster with the
dashboard on (Tune driving Train needs it), independent of the session's in-process cluster, on which
the follow-up `sbir train` runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sbir.cli import app
from tests.helpers import SMALL_VAL_FRACTION, write_small_synthetic
from tests.ray.serving import free_port

BIN = Path(sys.executable).parent
SWEEP_TIMEOUT = 900
EPOCHS = 3
SEARCHED = ("model.zse.kernel_count", "model.zse.kernel_sigma", "train.lr")  # what the built-in zse_kernels varies


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """`mlflow server` on loopback with a SQLite store and its own artifact folder (several processes log)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (root / "server.log").read_text()[-3000:]
        time.sleep(0.5)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    log.close()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    return env | {"HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}


def _sweep_until_first_trial_ends(args: list[str]) -> tuple[str, str]:
    """Start the sweep, Ctrl-C it once a trial has ended; return that trial's id and the output."""
    proc = subprocess.Popen(
        [str(BIN / "sbir"), "tune", *args], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    first = None
    deadline = time.monotonic() + SWEEP_TIMEOUT
    try:
        for line in proc.stdout:
            lines.append(line)
            if first is None and " ended after epoch " in line:
                first = line.split(" trial ")[1].split()[1]
                proc.send_signal(signal.SIGINT)
            assert time.monotonic() < deadline, "".join(lines)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(lines)
    assert first is not None, output
    assert proc.returncode == 130, output
    return first, output


def test_an_asha_sweep_resumes_after_ctrl_c_ranks_on_validation_and_registers_its_best(
    tmp_path, mlflow_server, ray_cluster
):
    from mlflow import MlflowClient

    data = write_small_synthetic(tmp_path / "data")
    runs, name = tmp_path / "runs", "sweep-test"
    args = [
        "-c", "synthetic_zse", "--space", "zse_kernels",
        f"data.root={data}", f"data.prepared={tmp_path / 'prepared'}", f"data.val_fraction={SMALL_VAL_FRACTION}",
        f"run.dir={runs}", f"run.name={name}", f"tracking.uri={mlflow_server}",
        f"train.epochs={EPOCHS}", "train.steps_per_epoch=1", "train.batch_size=12", "train.items_per_class=3",
        "tune.num_samples=4", "tune.max_concurrent_trials=2", "tune.workers_per_trial=1",
        "tune.scheduler=asha", "tune.grace_period=1",
        "tune.reduction_factor=2", "tune.seed=3",
    ]  # fmt: skip
    first, interrupted = _sweep_until_first_trial_ends(args)
    assert f"resume with: sbir tune --resume {name}" in interrupted
    assert json.loads((runs / name / "run.json").read_text())["status"] == "INTERRUPTED"

    resumed = subprocess.run(
        [str(BIN / "sbir"), "tune", "--resume", name, f"run.dir={runs}", f"tracking.uri={mlflow_server}"],
        env=_env(), capture_output=True, text=True, timeout=SWEEP_TIMEOUT, check=False,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-5000:] + resumed.stderr[-5000:]
    assert f" {first} ended" not in resumed.stdout, "the trial that had finished ran again"

    client = MlflowClient(mlflow_server)
    parent = client.get_run(json.loads((runs / name / "run.json").read_text())["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["sbir.sweep"] == name
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert len(children) == 4, [c.info.run_name for c in children]
    searched = {c.data.tags["sbir.trial_id"]: tuple(c.data.params[k] for k in SEARCHED) for c in children}
    assert len(set(searched.values())) == 4, "every trial got its own config from the space"
    for child in children:
        assert 5 <= int(child.data.params["model.zse.kernel_count"]) < 22
        assert child.data.params["train.eval_at_end"] == "False", "a trial never evaluates on the test classes"
        assert child.info.status == "FINISHED"

    child_of = {c.data.tags["sbir.trial_id"]: c for c in children}
    histories = {c.data.tags["sbir.trial_id"]: client.get_metric_history(c.info.run_id, "val_score") for c in children}
    steps = [m.step for m in histories[first]]
    assert steps == sorted(set(steps)) and max(steps) <= EPOCHS, f"{first} trained an epoch twice: {steps}"

    # What Tune saw (the report's curves) is what the scheduler and the ranking went by. A stopped
    # trial's workers may finish the epoch under way before the stop reaches them (MLflow logs it).
    report = json.loads((runs / name / "report" / "report.json").read_text())
    seen = {t["trial_id"]: t["curve"] for t in report["trials"]}
    stopped = {c.data.tags["sbir.trial_id"] for c in children if c.data.tags["stop_reason"] == "stopped early"}
    assert stopped, "ASHA stopped no trial"
    assert all(max(row["epoch"] for row in seen[t]) < EPOCHS for t in stopped), "stopped before max_t"
    scores = {t: max(row["val_score"] for row in curve) for t, curve in seen.items()}
    for trial, curve in seen.items():
        logged = {m.step: m.value for m in histories[trial]}
        assert all(logged[int(row["epoch"])] == pytest.approx(row["val_score"]) for row in curve), trial
    best_id = parent.data.tags["best_trial"]
    assert scores[best_id] == max(scores.values()), "the best trial is the one with the best val_score"
    assert child_of[best_id].data.params["train.val_mode"] == "rn_rerank"
    assert f"best trial {best_id}: val_score" in resumed.stdout
    assert parent.data.metrics["best_val_score"] == pytest.approx(scores[best_id])
    assert "test_ret_map_all_voc" in parent.data.metrics, "the best trial was evaluated on the unseen classes"
    tested = {c.data.tags["sbir.trial_id"] for c in children if any(m.startswith("test_") for m in c.data.metrics)}
    assert tested == {best_id}, "only the best trial, chosen on validation, ever saw the test classes"

    version = client.get_model_version("sbir-zse-synthetic", "1")
    assert version.tags["sweep"] == name and version.tags["trial"] == best_id
    assert client.get_model_version_by_alias("sbir-zse-synthetic", "champion").version == "1"

    assert report["trials"][0]["trial_id"] == best_id
    assert (runs / name / "report" / "curves.png").stat().st_size > 1000

    # The best config trains with `sbir train -c` (one epoch and no test evaluation, to keep the test short;
    # in this process, on the session's cluster: no Tune is involved).
    best_yaml = runs / name / "report" / "best.yaml"
    train = CliRunner().invoke(app, ["train", "-c", str(best_yaml), "train.epochs=1", "train.eval_at_end=false"])
    assert train.exit_code == 0, train.output[-4000:]
    best_params = dict(zip(SEARCHED, searched[best_id], strict=True))
    retrained = yaml.safe_load(best_yaml.read_text())
    assert str(retrained["model"]["zse"]["kernel_count"]) == best_params["model.zse.kernel_count"]
    assert "registered: models:/sbir-zse-synthetic/2" in train.output


def _descendants(root: int) -> list[int]:
    """Every live process below `root` (the sbir process's own local Ray cluster lives there)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found += children.get(pid, [])
        todo += children.get(pid, [])
    return found


def _train_workers(root: int) -> list[int]:
    workers = []
    for pid in _descendants(root):
        try:
            if b"RayTrainWorker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                workers.append(pid)
        except OSError:
            continue
    return workers


def test_a_trial_whose_worker_dies_is_retried_from_its_checkpoint_and_the_sweep_goes_on(tmp_path, mlflow_server):
    from mlflow import MlflowClient

    data = write_small_synthetic(tmp_path / "data")
    runs, name = tmp_path / "runs", "retry-test"
    args = [
        "-c", "synthetic_zse", "--space", "zse_kernels",
        f"data.root={data}", f"data.prepared={tmp_path / 'prepared'}", f"data.val_fraction={SMALL_VAL_FRACTION}",
        f"run.dir={runs}", f"run.name={name}", f"tracking.uri={mlflow_server}", "tracking.experiment=retry",
        "tracking.register_model=false",
        f"train.epochs={EPOCHS}", "train.steps_per_epoch=2", "train.batch_size=12", "train.items_per_class=3",
        "train.max_failures=0",  # a lost worker fails the trial (not only its Ray Train run) ...
        "tune.trial_retries=1",  # ... and Tune runs it again
        "tune.num_samples=2", "tune.max_concurrent_trials=2", "tune.workers_per_trial=1", "tune.scheduler=fifo",
        "tune.seed=5",
    ]  # fmt: skip
    proc = subprocess.Popen(
        [str(BIN / "sbir"), "tune", *args], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    killed = None
    deadline = time.monotonic() + SWEEP_TIMEOUT
    try:
        # Kill a Ray Train worker, as a lost node would, once a trial has kept its first checkpoint.
        while killed is None and proc.poll() is None and time.monotonic() < deadline:
            if any((runs / name / "trials").glob("trial-*/checkpoint_*")):
                workers = _train_workers(proc.pid)
                if workers:
                    killed = workers[0]
                    os.kill(killed, signal.SIGKILL)
            time.sleep(0.1)
        output, _ = proc.communicate(timeout=SWEEP_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None, f"no Ray Train worker was found to kill\n{output[-5000:]}"
    assert proc.returncode == 0, output[-5000:]
    retried = [line for line in output.splitlines() if "retrying it from its last checkpoint" in line]
    assert len(retried) == 1, output[-5000:]
    trial = retried[0].split(" trial ")[1].split()[0]

    report = {t["trial_id"]: t for t in json.loads((runs / name / "report" / "report.json").read_text())["trials"]}
    errors = {k: t.get("error") for k, t in report.items() if t["stop_reason"] != "completed"}
    assert not errors, f"the sweep went on to finish both trials: {errors}\n{output[-5000:]}"
    assert {k: t["retries"] for k, t in report.items()} == {k: int(k == trial) for k in report}

    client = MlflowClient(mlflow_server)
    parent = client.get_run(json.loads((runs / name / "run.json").read_text())["mlflow_run_id"])
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    flaky = next(c for c in children if c.data.tags["sbir.trial_id"] == trial)
    assert flaky.data.tags["retries"] == "1" and flaky.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(flaky.info.run_id, "val_score")]
    assert sorted(set(steps)) == list(range(1, EPOCHS + 1)), f"the retry resumed, every epoch once: {steps}"
    epochs = [int(row["epoch"]) for row in report[trial]["curve"]]
    assert epochs == list(range(1, EPOCHS + 1)), "the report holds every epoch of the retried trial once"
