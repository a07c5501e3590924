"""Training on Ray Train end to end: DDP on 2 workers, validation, checkpoints, evaluation, MLflow, resume."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import mlflow
import pytest
import torch

from tests.helpers import SHORT_TRAINING, SMALL_VAL_FRACTION, write_small_synthetic


@pytest.fixture(scope="module")
def synth_prepared(tmp_path_factory, ray_cluster):
    """A small synthetic dataset (12 classes, 2 val, 3 unseen), prepared once for the module."""
    from pipelines.prepare import prepare_dataset
    from sbir.data.readers import read_split

    root = tmp_path_factory.mktemp("train-data")
    write_small_synthetic(root / "data")
    split = read_split("synthetic", root / "data", "zeroshot1", val_fraction=SMALL_VAL_FRACTION, val_seed=0)
    prepare_dataset(split, str(root / "prepared"))
    return root


def _config(root: Path, runs: Path, preset: str, *extra: str):
    from sbir.config import load_config

    return load_config(
        preset,
        [
            f"data.root={root / 'data'}",
            f"data.prepared={root / 'prepared'}",
            f"run.dir={runs}",
            *SHORT_TRAINING,
            "eval.report_queries=2",
            "eval.report_explanations=1",
            *extra,
        ],
    )


def test_zse_trains_on_two_workers_evaluates_tracks_and_registers(synth_prepared, tmp_path):
    from pipelines.tracking import resolve_checkpoint
    from pipelines.train import run_training
    from sbir.checkpoint import load_checkpoint

    runs = tmp_path / "runs"
    config = _config(synth_prepared, runs, "synthetic_zse", "run.name=zse-test")
    lines: list[str] = []
    outcome = run_training(config, echo=lines.append)

    epoch_lines = [line for line in lines if " epoch " in line and "loss" in line]
    assert [line.split(" epoch ")[1].split()[0] for line in epoch_lines] == ["1/2", "2/2"], lines
    assert all("val map_all_voc" in line and "elapsed" in line for line in epoch_lines)

    assert [int(h["epoch"]) for h in outcome.history] == [1, 2]
    assert all(h["val_score"] >= 0 for h in outcome.history), "every epoch is validated on the val classes"
    model, meta = load_checkpoint(outcome.best_checkpoint)
    best_epoch = max(outcome.history, key=lambda h: (h["val_score"], h["epoch"]))["epoch"]
    assert meta.extra["epoch"] == best_epoch and len(meta.classes["unseen"]) == 3
    assert set(outcome.test_metrics) == {"ret", "rn_rerank"}  # exhaustive rn only on request
    for metrics in outcome.test_metrics.values():
        assert 0.0 < metrics["map_all_voc"] <= 1.0 and metrics["n_queries"] == 3 * 6
    report = outcome.report
    assert report.name == "report.html" and (report.parent / "precision_recall.png").is_file()
    assert (report.parent / "top_k.png").is_file() and any((report.parent / "explanations").rglob("*.png"))

    client = mlflow.MlflowClient(outcome.tracking_uri)
    run = client.get_run(outcome.mlflow_run_id)
    assert run.data.params["train.epochs"] == "2" and run.data.tags["method"] == "zse"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    assert "test_rn_rerank_map_all_voc" in run.data.metrics
    assert outcome.registered == "models:/sbir-zse-synthetic/1"
    champion = resolve_checkpoint("models:/sbir-zse-synthetic@champion", outcome.tracking_uri)
    reloaded, _ = load_checkpoint(champion)
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values(), strict=True)
    )
    assert not Path("mlflow.db").exists() and not Path("mlruns").exists()


def _train_workers() -> list[int]:
    """PIDs of live Ray Train worker processes (Ray sets their process title to ray::RayTrainWorker...)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"RayTrainWorker" in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return sorted(pids)


def _has_registered_checkpoint(run: Path) -> bool:
    """True once the controller's snapshot names a latest checkpoint (so a restart can resume from it)."""
    import json

    try:
        snapshot = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(snapshot.get("latest_checkpoint_result"))


def test_a_killed_worker_resumes_from_the_last_checkpoint_without_repeating_epochs(synth_prepared, tmp_path):
    from pipelines.train import run_training

    runs = tmp_path / "runs"
    config = _config(
        synth_prepared,
        runs,
        "synthetic_clip_at",
        "run.name=zse-kill",
        "train.epochs=4",
        "train.eval_at_end=false",
        "tracking.register_model=false",
    )
    killed: list[int] = []

    def kill_after_first_checkpoint() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if _has_registered_checkpoint(runs / "zse-kill") and (workers := _train_workers()):
                os.kill(workers[-1], signal.SIGKILL)
                killed.append(workers[-1])
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    outcome = run_training(config)
    killer.join(timeout=5)

    assert killed, "no training worker was killed"
    epochs = [int(h["epoch"]) for h in outcome.history]
    assert epochs == [1, 2, 3, 4], "each epoch is trained exactly once"
    attempts = [int(h["attempt"]) for h in outcome.history]
    assert attempts[0] == 0 and attempts[-1] >= 1, "later epochs ran in a restarted worker group"
    assert attempts == sorted(attempts)


def test_sbir_eval_cli_reports_every_mode_for_a_checkpoint(synth_prepared, tmp_path, caplog):
    import json
    import logging

    from typer.testing import CliRunner

    from pipelines.prepare import read_manifest
    from sbir.checkpoint import save_checkpoint
    from sbir.cli import app
    from sbir.methods import family_of

    config = _config(synth_prepared, tmp_path / "runs", "synthetic_zse")
    seen = read_manifest(str(synth_prepared / "prepared")).classes.train
    torch.manual_seed(0)
    checkpoint = save_checkpoint(
        tmp_path / "ckpt", family_of(config).build_model(config.model), config, classes={"seen": seen}
    )
    out = tmp_path / "report"
    caplog.set_level(logging.INFO, logger="sbir.inference.evaluate")
    args = ["eval", "--checkpoint", str(checkpoint), "--prepared", str(synth_prepared / "prepared"), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "eval.modes=[ret, rn, rn_rerank]"])  # rn: an explicit request
    assert result.exit_code == 0, result.output
    assert "zse/rn_rerank" in result.stdout and (out / "report.html").is_file()
    assert set(json.loads((out / "metrics.json").read_text())) == {"ret", "rn", "rn_rerank"}
    estimates = [r.getMessage() for r in caplog.records if "scoring rn exhaustively" in r.getMessage()]
    assert len(estimates) == 1 and "pairs, estimated" in estimates[0], estimates

    missing = CliRunner().invoke(app, ["eval", "--checkpoint", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "nope" in missing.output

    # An override changes what it names and nothing else: the checkpoint's 64 px model config stays.
    runs = tmp_path / "elsewhere"
    args = ["eval", "--checkpoint", str(checkpoint), "--role", "test", "eval.modes=[ret]", f"run.dir={runs}"]
    overridden = CliRunner().invoke(app, [*args, "--prepared", str(synth_prepared / "prepared")])
    assert overridden.exit_code == 0, overridden.output
    (report,) = (runs / "eval").iterdir()  # a new folder under the user's run dir, not the checkpoint's
    assert set(json.loads((report / "metrics.json").read_text())) == {"ret"}


@pytest.fixture(scope="module")
def late_failure(synth_prepared, tmp_path_factory):
    """A CLIP-AT run whose training finishes and whose evaluation then fails (an eval target is missing)."""
    from pipelines.train import run_training

    runs = tmp_path_factory.mktemp("late") / "runs"
    missing = runs.parent / "no-such-target"
    config = _config(
        synth_prepared,
        runs,
        "synthetic_clip_at",
        "run.name=fails-late",
        "tracking.register_model=false",
        f"eval.targets=[{{name: other, root: {missing}, layout: synthetic, split: zeroshot1}}]",
    )
    try:
        run_training(config)
    except Exception as exc:  # the test below checks what it is
        return runs, exc
    return runs, None


def _mlflow_run(runs: Path, name: str):
    from pipelines.tracking import resolve_tracking_uri

    run_id = json.loads((runs / name / "run.json").read_text())["mlflow_run_id"]
    client = mlflow.MlflowClient(resolve_tracking_uri(None, runs))
    return client, client.get_run(run_id)


def test_a_failure_after_training_marks_the_mlflow_run_failed_and_names_the_problem(late_failure):
    from sbir.data.records import DatasetError

    runs, error = late_failure
    assert isinstance(error, DatasetError) and "no-such-target" in str(error), error
    _, run = _mlflow_run(runs, "fails-late")
    assert run.info.status == "FAILED"
    assert (runs / "fails-late" / "best" / "checkpoint.json").is_file(), "training itself finished"


def test_two_worker_runs_with_the_same_seed_train_identical_models(synth_prepared, late_failure, tmp_path):
    """The same config and seed trains the same model: the late-failure run's training against a new one."""
    from pipelines.train import run_training
    from sbir.checkpoint import load_checkpoint

    runs, _ = late_failure
    config = _config(
        synth_prepared,
        tmp_path / "runs",
        "synthetic_clip_at",
        "run.name=repeat",
        "train.eval_at_end=false",  # (evaluation comes after training; the first run's failed there)
        "tracking.register_model=false",
    )
    outcome = run_training(config)
    client, first = _mlflow_run(runs, "fails-late")
    losses = [m.value for m in sorted(client.get_metric_history(first.info.run_id, "train_loss"), key=lambda m: m.step)]
    assert losses == [h["train_loss"] for h in outcome.history]  # exactly: the same batches in the same order
    weights, _ = load_checkpoint(runs / "fails-late" / "best")
    weights_again, _ = load_checkpoint(outcome.best_checkpoint)
    first_state, again_state = weights.state_dict(), weights_again.state_dict()
    assert first_state.keys() == again_state.keys()
    assert all(torch.equal(first_state[k], again_state[k]) for k in first_state)


def test_asking_for_gpus_the_cluster_lacks_fails_at_once(synth_prepared, tmp_path):
    from pipelines.ray_runtime import ClusterError
    from pipelines.train import run_training

    config_gpus = "train.num_workers=64"  # more GPUs than any test machine has (and batches that split over them)
    config = _config(
        synth_prepared,
        tmp_path / "runs",
        "synthetic_zse",
        "run.name=gpu",
        "train.use_gpu=true",
        config_gpus,
        "train.batch_size=384",
    )
    started = time.monotonic()
    with pytest.raises(ClusterError, match=r"needs .*GPUs \(the cluster has"):
        run_training(config)
    assert time.monotonic() - started < 60
    assert not (tmp_path / "runs" / "gpu").exists(), "nothing was started or tracked"


def test_ctrl_c_stops_training_and_marks_the_run_killed(synth_prepared, tmp_path):
    """A separate `sbir train` process (its own local Ray), interrupted after its first epoch."""
    import subprocess
    import sys

    runs = tmp_path / "runs"
    args = [
        "train",
        "-c",
        "synthetic_clip_at",
        f"data.root={synth_prepared / 'data'}",
        f"data.prepared={synth_prepared / 'prepared'}",
        f"run.dir={runs}",
        "run.name=interrupted",
        *SHORT_TRAINING,
        "train.epochs=30",
    ]
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sbir.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if " epoch 1/30 " in line:
            break
    interrupted = time.monotonic()
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    assert time.monotonic() - interrupted < 90, "Ctrl-C took too long to stop training"
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted" in rest and "Traceback" not in rest
    assert json.loads((runs / "interrupted" / "run.json").read_text())["status"] == "KILLED"
    from pipelines.tracking import resolve_tracking_uri

    run_id = json.loads((runs / "interrupted" / "run.json").read_text())["mlflow_run_id"]
    assert mlflow.MlflowClient(resolve_tracking_uri(None, runs)).get_run(run_id).info.status == "KILLED"
