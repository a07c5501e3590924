"""MLflow tracking and the registry against a real SQLite store in a temp dir (never ./mlflow.db or ./mlruns)."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines.tracking import (
    DEFAULT_DB,
    MAX_PARAM_VAL_LENGTH,
    TRUNCATION_MARKER,
    Registration,
    Tracker,
    flatten_params,
    model_name,
    register_checkpoint,
    resolve_checkpoint,
    resolve_tracking_uri,
)

# SQLAlchemy deprecation noise from inside mlflow's own store code.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

REPO = Path(__file__).resolve().parents[2]
_STRAY = ("mlflow.db", "mlruns", "mlartifacts")


def _stray_paths() -> set[Path]:
    return {d / name for d in {Path.cwd(), REPO} for name in _STRAY if (d / name).exists()}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(tracking URI, runs dir) of one SQLite store for the module: creating the schema takes seconds."""
    before = _stray_paths()
    with pytest.MonkeyPatch.context() as mp:
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            mp.delenv(var, raising=False)
        runs = tmp_path_factory.mktemp("tracking") / "runs"
        uri = resolve_tracking_uri(None, runs)
        MlflowClient(uri, registry_uri=uri).search_experiments()  # create the schema once
        yield uri, runs
    assert _stray_paths() == before, "tracking wrote an MLflow store into the working directory or the repo"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A real (tiny, untrained) ZSE-SBIR checkpoint written with the project's format."""
    import torch

    from sbir.checkpoint import save_checkpoint
    from sbir.config import load_config
    from sbir.methods import family_of

    cfg = load_config("synthetic_zse")
    torch.manual_seed(0)
    model = family_of(cfg).build_model(cfg.model, load_pretrained=False)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "zse", model, cfg, metrics={"map_all_voc": 0.1})


def _start(store, name: str, **params: str) -> Tracker:
    uri, _ = store
    return Tracker.start(uri, "test-tracking", name, params, {"purpose": "test"})


# --------------------------------------------------------------------------- pure helpers


def test_resolve_tracking_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = resolve_tracking_uri(None, "runs")
    assert uri == f"sqlite:///{tmp_path.resolve() / 'runs' / DEFAULT_DB}"
    assert Path(uri.removeprefix("sqlite:///")).is_absolute() and (tmp_path / "runs").is_dir()
    assert not (tmp_path / "runs" / DEFAULT_DB).exists()  # resolving does not create the database

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(None, "runs") == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("http://tracking:5000", "runs") == "http://tracking:5000"

    # Relative SQLite paths (config or a bare *.db path) become absolute, so Ray workers agree with the driver.
    assert resolve_tracking_uri("sqlite:///store/x.db", "runs") == f"sqlite:///{tmp_path.resolve() / 'store/x.db'}"
    assert resolve_tracking_uri("other/y.db", "runs") == f"sqlite:///{tmp_path.resolve() / 'other/y.db'}"
    assert (tmp_path / "store").is_dir()
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(ValueError, match="file store"):
        resolve_tracking_uri("./mlruns", "runs")
    with pytest.raises(ValueError, match="file store"):
        resolve_tracking_uri("file:///tmp/mlruns", "runs")


def test_flatten_params():
    flat = flatten_params(
        {
            "model": {"method": "zse", "zse": {"depth": 12, "dropout": 0.1, "frozen": False}},
            "eval": {"modes": ["ret", "rn"], "extra": {}},
            "data": {"prepared": None, "classes": ["c" * 50] * 200},
        }
    )
    assert flat["model.method"] == "zse"
    assert flat["model.zse.depth"] == "12" and flat["model.zse.dropout"] == "0.1"
    assert flat["model.zse.frozen"] == "False" and flat["data.prepared"] == "None"
    assert json.loads(flat["eval.modes"]) == ["ret", "rn"] and flat["eval.extra"] == "{}"
    long = flat["data.classes"]
    assert len(long) == MAX_PARAM_VAL_LENGTH and long.endswith(TRUNCATION_MARKER)
    assert flatten_params({"a": 1}, prefix="cfg") == {"cfg.a": "1"}


def test_a_whole_config_flattens_to_dotted_keys():
    from sbir.config import build_config

    flat = flatten_params(build_config().to_dict())
    assert flat["model.zse.depth"] == "12"
    assert flat["train.seed"] == "2021"


def test_model_name():
    assert model_name("zse", "sketchy25") == "sbir-zse-sketchy25"
    assert model_name("clip_at", "TU-Berlin Ext") == "sbir-clip-at-tu-berlin-ext"
    with pytest.raises(ValueError):
        model_name("zse", "")


# --------------------------------------------------------------------------- runs


def test_start_attach_and_log_metrics(store, caplog):
    uri, _ = store
    params = {f"p.{i:03d}": str(i) for i in range(250)}  # more than one log_batch of params
    tracker = _start(store, "metrics", **params)
    worker = Tracker.attach(uri, tracker.run_id)  # e.g. rank 0 in a Ray worker
    for step in range(3):
        worker.log_metrics({"train/loss": 1.0 / (step + 1), "P@100": 0.5}, step=step)
    with caplog.at_level(logging.WARNING, logger="pipelines.tracking"):
        worker.log_metrics({"train/loss": float("nan"), "lr": float("inf")}, step=3)
    assert "not logged" in caplog.text
    tracker.set_tags({"stage": "done"})
    tracker.finish()

    client = MlflowClient(uri)
    history = client.get_metric_history(tracker.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5), (2, 1.0 / 3)]
    assert [m.step for m in client.get_metric_history(tracker.run_id, "P_100")] == [0, 1, 2]
    run = client.get_run(tracker.run_id)
    assert "lr" not in run.data.metrics
    assert run.data.params == params
    assert run.data.tags["purpose"] == "test" and run.data.tags["stage"] == "done"
    assert run.info.status == "FINISHED" and run.info.run_name == "metrics"


def test_attach_unknown_run_fails_clearly(store):
    with pytest.raises(ValueError, match="0" * 32):
        Tracker.attach(store[0], "0" * 32)


def test_context_manager_marks_failure_and_tracker_pickles(store):
    with pytest.raises(RuntimeError), _start(store, "boom") as tracker:
        clone = pickle.loads(pickle.dumps(tracker))
        assert clone == tracker
        clone.log_metrics({"x": 1.0})
        raise RuntimeError("boom")
    run = MlflowClient(store[0]).get_run(tracker.run_id)
    assert run.info.status == "FAILED" and run.data.metrics == {"x": 1.0}
    with pytest.raises(ValueError, match="terminal"):
        tracker.finish("RUNNING")


def test_artifacts_land_under_runs_dir(store, tmp_path):
    _, runs = store
    (tmp_path / "report.md").write_text("# report")
    (tmp_path / "plots" / "sub").mkdir(parents=True)
    (tmp_path / "plots" / "sub" / "a.txt").write_text("a")
    tracker = _start(store, "artifacts")
    tracker.log_artifact(tmp_path / "report.md")
    tracker.log_artifact(tmp_path / "plots")
    tracker.log_artifact(tmp_path / "report.md", "reports/final")
    with pytest.raises(FileNotFoundError):
        tracker.log_artifact(tmp_path / "missing")
    tracker.finish()

    root = runs / "mlartifacts"
    assert tracker.artifact_uri.startswith(root.resolve().as_uri())
    files = {p.relative_to(root).parts[1:] for p in root.rglob("*") if p.is_file() and tracker.run_id in p.parts}
    assert files == {
        ("artifacts", "report.md"),
        ("artifacts", "plots", "sub", "a.txt"),
        ("artifacts", "reports", "final", "report.md"),
    }


# --------------------------------------------------------------------------- registry


@pytest.fixture(scope="module")
def registered(store, checkpoint) -> tuple[str, list[Registration], list[Tracker]]:
    """Three versions of one model: 0.5 (champion), 0.4 (worse, alias stays), 0.6 (better, alias moves)."""
    name = model_name("zse", "synthetic-test")
    results, trackers = [], []
    for i, value in enumerate((0.5, 0.4, 0.6)):
        tracker = _start(store, f"reg-{i}")
        results.append(
            register_checkpoint(
                tracker, checkpoint, name, metric_name="map_all_voc", metric_value=value, tags={"trial": str(i)}
            )
        )
        tracker.finish()
        trackers.append(tracker)
    return name, results, trackers


def test_register_checkpoint_champion_rule(store, registered):
    name, (first, second, third), trackers = registered
    assert first == Registration(name, "1", True, None)
    assert second == Registration(name, "2", False, "1")
    assert third == Registration(name, "3", True, "1")

    client = MlflowClient(store[0], registry_uri=store[0])
    assert str(client.get_model_version_by_alias(name, "champion").version) == "3"
    v2 = client.get_model_version(name, "2")
    assert v2.source == f"runs:/{trackers[1].run_id}/checkpoint" and v2.run_id == trackers[1].run_id
    assert v2.tags["map_all_voc"] == "0.4" and v2.tags["selection_metric"] == "map_all_voc"
    assert v2.tags["method"] == "zse" and v2.tags["preset"] == "official"
    assert v2.tags["setting"] == "synthetic" and v2.tags["trial"] == "1"
    artifacts = {f.path for f in client.list_artifacts(trackers[1].run_id, "checkpoint")}
    assert artifacts == {"checkpoint/checkpoint.json", "checkpoint/model.safetensors"}


def test_register_lower_is_better_and_untagged_champion(store, checkpoint):
    name = model_name("zse", "lower-test")
    tracker = _start(store, "lower")
    reg = [
        register_checkpoint(tracker, checkpoint, name, metric_name="loss", metric_value=v, higher_is_better=False)
        for v in (1.0, 2.0, 0.5)
    ]
    assert [r.champion for r in reg] == [True, False, True]
    # A champion that has no tag for the new metric is never displaced silently.
    other = register_checkpoint(tracker, checkpoint, name, metric_name="map_all_voc", metric_value=0.99)
    assert other == Registration(name, "4", False, "3")
    with pytest.raises(ValueError, match="not finite"):
        register_checkpoint(tracker, checkpoint, name, metric_name="loss", metric_value=float("nan"))
    with pytest.raises(FileNotFoundError, match=r"checkpoint\.json"):
        register_checkpoint(tracker, checkpoint.parent, name, metric_name="loss", metric_value=0.1)
    tracker.finish()


# --------------------------------------------------------------------------- resolving references


def test_resolve_checkpoint_references(store, registered, checkpoint, tmp_path):
    from sbir.checkpoint import load_checkpoint

    uri, runs = store
    name, _, trackers = registered
    assert resolve_checkpoint(str(checkpoint)) == checkpoint

    refs = [
        f"models:/{name}@champion",
        f"models:/{name}/1",
        trackers[1].run_id,
        f"runs:/{trackers[0].run_id}/checkpoint",
    ]
    for ref in refs:
        path = resolve_checkpoint(ref, uri)
        assert (path / "checkpoint.json").is_file(), ref
        assert runs.resolve() in path.resolve().parents, ref  # a local store is read in place, nothing copied
    assert trackers[2].run_id in resolve_checkpoint(f"models:/{name}@champion", uri).parts
    assert trackers[0].run_id in resolve_checkpoint(f"models:/{name}/1", uri).parts

    copied = resolve_checkpoint(f"models:/{name}@champion", uri, dst=tmp_path / "dl")
    assert copied.parent == tmp_path / "dl" and (copied / "checkpoint.json").is_file()
    _, meta = load_checkpoint(copied)
    assert meta.method == "zse"


def test_resolve_checkpoint_bad_references(store, registered, tmp_path, monkeypatch):
    uri, _ = store
    name, _, trackers = registered
    with pytest.raises(ValueError, match=r"not-a-checkpoint.*models:/"):
        resolve_checkpoint("not-a-checkpoint", uri)
    with pytest.raises(FileNotFoundError, match=r"models:/sbir-nope@champion.*registry"):
        resolve_checkpoint("models:/sbir-nope@champion", uri)
    with pytest.raises(FileNotFoundError, match="@staging"):
        resolve_checkpoint(f"models:/{name}@staging", uri)
    with pytest.raises(FileNotFoundError, match=f"models:/{name}/99"):
        resolve_checkpoint(f"models:/{name}/99", uri)
    with pytest.raises(ValueError, match="models:/<name>"):
        resolve_checkpoint(f"models:/{name}/latest", uri)
    with pytest.raises(FileNotFoundError, match="f" * 32):
        resolve_checkpoint("f" * 32, uri)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_checkpoint(f"runs:/{trackers[0].run_id}/nothing-here", uri)
    with pytest.raises(ValueError, match="runs:/<run_id>/<artifact path>"):
        resolve_checkpoint(f"runs:/{trackers[0].run_id}", uri)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"checkpoint\.json is missing"):
        resolve_checkpoint(str(empty))

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="MLFLOW_TRACKING_URI"):
        resolve_checkpoint(trackers[0].run_id)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert (resolve_checkpoint(trackers[0].run_id) / "checkpoint.json").is_file()
