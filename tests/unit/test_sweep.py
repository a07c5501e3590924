"""The sweep's pure parts: trial configs, search checks, trial classification, the report, CLI errors."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest
from typer.testing import CliRunner

from sbir.cli import app
from sbir.config import ConfigError, load_config
from sbir.reports.sweep import (
    COMPLETED,
    FAILED,
    STOPPED,
    UNFINISHED,
    TrialSummary,
    rank,
    trials_table,
    write_sweep_report,
)
from tests.helpers import one_line_error
from tune.space import load_space, parse_space


def _trial(trial_id: str, scores: list[float], mode: str = "max", reason: str = COMPLETED, **params):
    curve = [{"epoch": i + 1, "val_score": s, "train_loss": 1.0 / (i + 1)} for i, s in enumerate(scores)]
    return TrialSummary(trial_id, params or {"train.lr": 1e-4}, curve, "val_score", mode, reason)


def test_a_trial_scores_its_best_validated_epoch_and_unvalidated_epochs_do_not_count():
    trial = _trial("a", [-1.0, 0.3, 0.5, 0.4])
    assert (trial.score, trial.best_epoch, trial.epochs) == (0.5, 3, 4)
    assert _trial("b", [-1.0]).score is None
    assert _trial("c", [0.3, 0.2], mode="min").score == 0.2


def test_trials_rank_best_first_and_unscored_last():
    trials = [_trial("low", [0.1]), _trial("none", [-1.0]), _trial("high", [0.2, 0.6]), _trial("mid", [0.4])]
    assert [t.trial_id for t in rank(trials)] == ["high", "mid", "low", "none"]
    losses = [_trial("x", [0.3], mode="min"), _trial("y", [0.1], mode="min")]
    assert [t.trial_id for t in rank(losses)] == ["y", "x"]


def test_the_report_ranks_trials_and_writes_a_best_config_sbir_train_accepts(tmp_path):
    config = load_config("synthetic_zse", ["model.zse.kernel_count=9"])
    trials = [
        _trial("t1", [0.2, 0.25], **{"model.zse.kernel_count": 5, "train.lr": 1e-4}),
        _trial("t2", [0.3], reason=STOPPED, **{"model.zse.kernel_count": 9, "train.lr": 3e-4}),
        _trial("t3", [0.1, 0.5, 0.45], **{"model.zse.kernel_count": 13, "train.lr": 1e-5}),
        _trial("t4", [], reason=FAILED, **{"model.zse.kernel_count": 7, "train.lr": 1e-3}),
    ]
    from sbir.config import dump_config

    files = write_sweep_report(
        trials, tmp_path / "report", title="Sweep x", notes=["a note"], best_config_yaml=dump_config(config)
    )
    markdown = files.markdown.read_text()
    table = [line for line in markdown.splitlines() if line.startswith("| ") and "trial" not in line]
    assert [row.split(" | ")[1] for row in table] == ["t3", "t2", "t1", "t4"]
    assert "| 1 | t3 | 0.5000 | 2 | 3 | completed | 0 | 13 | 1e-05 |" in markdown
    assert "| - | t4 | - | - | 0 | failed | 0 | 7 | 0.001 |" in markdown
    assert all(p.stat().st_size > 1000 for p in files.images)  # real PNGs, not empty files
    assert "<td>t3</td>" in files.html.read_text()
    assert load_config(str(files.best_config)) == config


def test_a_trial_config_sets_the_searched_keys_validates_every_epoch_and_leaves_test_to_the_sweep():
    from tune.trial import trial_config

    base = load_config("synthetic_zse", ["train.val_every=3", "tune.workers_per_trial=2", "train.batch_size=24"])
    config = trial_config(base, {"model.zse.kernel_count": 7, "train.lr": 3e-4})
    assert (config.model.zse.kernel_count, config.train.lr) == (7, 3e-4)
    assert (config.train.val_every, config.train.val_from_epoch, config.train.num_workers) == (1, 1, 2)
    assert not config.train.eval_at_end and not config.tracking.register_model and not config.train.baseline
    with pytest.raises(ConfigError, match="kernel_count"):
        trial_config(base, {"model.zse.kernel_count": -1})


def test_a_trial_trains_on_the_configs_own_workers_unless_the_tune_section_says_otherwise():
    from tune.trial import TrialResources, trial_config

    preset = load_config("synthetic_zse", ["train.num_workers=2", "train.cpus_per_worker=0.25"])
    assert TrialResources.of(preset) == TrialResources(2, 0.25, 0.0)
    assert trial_config(preset, {}).train.num_workers == 2, "a sweep of a preset trains like the preset"
    lighter = load_config(
        "synthetic_zse", ["tune.workers_per_trial=1", "tune.cpus_per_worker=1", "train.batch_size=24"]
    )
    assert TrialResources.of(lighter) == TrialResources(1, 1.0, 0.0)
    assert (trial_config(lighter, {}).train.num_workers, trial_config(lighter, {}).train.cpus_per_worker) == (1, 1.0)
    on_gpus = load_config("synthetic_zse", ["train.use_gpu=true"])
    assert TrialResources.of(on_gpus).gpus_per_worker == 1.0


@pytest.mark.parametrize(
    ("overrides", "space", "needle"),
    [
        (["tune.search_alg=grid"], {"train.lr": {"loguniform": [1e-5, 1e-3]}}, "train.lr are ranges"),
        (["tune.search_alg=optuna"], {"train.lr": {"grid": [1e-5, 1e-3]}}, "cannot expand grid"),
        (["tune.max_t=5", "train.epochs=3"], {"train.lr": {"choice": [1e-5]}}, "longer than train.epochs=3"),
        (["tune.grace_period=4", "train.epochs=3"], {"train.lr": {"choice": [1e-5]}}, "grace_period=4"),
        (["data.val_fraction=0"], {"train.lr": {"choice": [1e-5]}}, "needs validation classes"),
        (["train.model_selection=unseen_test"], {"train.lr": {"choice": [1e-5]}}, "must be seen_val"),
    ],
)
def test_search_settings_that_cannot_work_are_refused(overrides, space, needle):
    from tune.sweep import SweepError, check_search

    with pytest.raises(SweepError, match=needle):
        check_search(parse_space(space), load_config("synthetic_zse", overrides))


def test_the_grid_searcher_expands_choices_and_counts_its_points():
    from tune.search import grid_points, param_space

    dims = parse_space({"model.zse.kernel_count": {"choice": [5, 9, 13]}, "train.lr": {"grid": [1e-5, 1e-4]}})
    assert param_space(dims, "grid")["model.zse.kernel_count"] == {"grid_search": [5, 9, 13]}
    assert (grid_points(dims, "grid"), grid_points(dims, "random")) == (6, 2)


def _result(trial_id: str, epochs: int, error: Exception | None = None, checkpoints: bool = True):
    rows = [
        {"epoch": e, "val_score": 0.1 * e, "train_loss": 1.0, "trial_id": trial_id}
        | ({"checkpoint_path": f"/store/{trial_id}/checkpoint_{e}"} if checkpoints else {})
        for e in range(1, epochs + 1)
    ]
    return SimpleNamespace(
        metrics_dataframe=pd.DataFrame(rows) if rows else None,
        metrics=rows[-1] if rows else {},
        error=error,
        config={"train.lr": 1e-4, "model.zse.kernel_count": 5},
        path=f"/store/tune/run_trial_{trial_id}",
    )


def test_trials_are_classified_completed_stopped_failed_or_unfinished():
    from tune.results import trial_summaries

    config = load_config("synthetic_zse", ["train.epochs=3"])
    dims = load_space("zse_kernels")
    results = [_result("full", 3), _result("cut", 1), _result("broken", 2, RuntimeError("boom\nline"))]
    reasons = {s.trial_id: s.stop_reason for s in trial_summaries(config, dims, results, interrupted=False)}
    assert reasons == {"full": COMPLETED, "cut": STOPPED, "broken": FAILED}
    during = {s.trial_id: s.stop_reason for s in trial_summaries(config, dims, results, interrupted=True)}
    assert during["cut"] == UNFINISHED
    full = trial_summaries(config, dims, [_result("full", 3)], interrupted=False)[0]
    assert full.checkpoint == "/store/full/checkpoint_3" and full.params["train.lr"] == 1e-4
    assert set(full.params) == {d.key for d in dims}
    fifo = load_config("synthetic_zse", ["train.epochs=3", "tune.scheduler=fifo"])
    assert trial_summaries(fifo, dims, [_result("cut", 1)], interrupted=False)[0].stop_reason == UNFINISHED


def test_retried_trials_carry_their_failure_count_into_the_table_and_the_progress_lines():
    from tune.progress import SweepProgress
    from tune.results import trial_summaries

    lines: list[str] = []
    progress = SweepProgress(lines.append, "s", 2, "val_score", "max")
    flaky = SimpleNamespace(
        trial_id="flaky", num_failures=1, config={"train.lr": 1e-4}, get_error=lambda: "worker\ndied"
    )
    progress.on_trial_recover(0, [], flaky)
    assert lines == ["[s] trial flaky failed (attempt 1); retrying it from its last checkpoint: worker died"]
    progress.on_experiment_end([flaky, SimpleNamespace(trial_id="steady", num_failures=0)])
    assert progress.retries == {"flaky": 1}

    config = load_config("synthetic_zse", ["train.epochs=3"])
    results = [_result("flaky", 3), _result("steady", 3)]
    summaries = trial_summaries(config, load_space("zse_kernels"), results, False, progress.retries)
    assert {s.trial_id: s.retries for s in summaries} == {"flaky": 1, "steady": 0}
    header, *rows = trials_table(summaries)
    column = header.index("retries")
    assert {row[1]: row[column] for row in rows} == {"flaky": "1", "steady": "0"}


def test_a_retried_trials_repeated_epochs_count_once_and_the_retry_has_the_last_word():
    from tune.results import trial_summaries

    # Attempt 1 reported epochs 1-2 (2 without a kept checkpoint) and died; the retry replayed epoch 1
    # from its checkpoint, then trained epochs 2 and 3 again.
    rows = [
        {"epoch": 1, "val_score": 0.1, "checkpoint_path": "/store/t/checkpoint_1", "trial_id": "t"},
        {"epoch": 2, "val_score": 0.9, "trial_id": "t"},
        {"epoch": 1, "val_score": 0.1, "checkpoint_path": "/store/t/checkpoint_1", "trial_id": "t"},
        {"epoch": 2, "val_score": 0.2, "checkpoint_path": "/store/t/checkpoint_2", "trial_id": "t"},
        {"epoch": 3, "val_score": 0.15, "trial_id": "t"},
    ]
    result = SimpleNamespace(
        metrics_dataframe=pd.DataFrame(rows), metrics=rows[-1], error=None, config={}, path="/store/tune/t"
    )
    config = load_config("synthetic_zse", ["train.epochs=3"])
    (summary,) = trial_summaries(config, load_space("zse_kernels"), [result], interrupted=False)
    assert [(row["epoch"], row["val_score"]) for row in summary.curve] == [(1, 0.1), (2, 0.2), (3, 0.15)]
    assert summary.score == 0.2 and summary.checkpoint == "/store/t/checkpoint_2"
    assert summary.stop_reason == COMPLETED


@pytest.mark.parametrize(
    ("args", "code", "needles"),
    [
        (["--space", "nope"], 2, ["neither a built-in", "clip_at_prompts"]),
        ([], 1, ["no search space", "--space"]),
        (["--space", "zse_kernels", "train.nope=1"], 2, ["train.nope", "unknown key"]),
        (["--space", "zse_kernels", "--resume", "x"], 2, ["--resume", "--space"]),
        (["--resume", "never-ran"], 1, ["no sweep 'never-ran' to resume"]),
        (["--resume", "../up"], 2, ["not a name", "'../up'"]),
    ],
)
def test_bad_sweep_commands_are_one_line_errors_before_ray_starts(tmp_path, no_ray, args, code, needles):
    result = CliRunner().invoke(app, ["tune", "-c", "synthetic_zse", *args, f"run.dir={tmp_path}"])
    one_line_error(result, code, *needles)


def test_a_bad_space_file_is_one_line_naming_the_key(tmp_path, no_ray):
    space = tmp_path / "space.yaml"
    space.write_text("model.zse.kernel_count: {randint: [5, 0]}\n")
    result = CliRunner().invoke(app, ["tune", "-c", "synthetic_zse", "--space", str(space), f"run.dir={tmp_path}"])
    one_line_error(result, 2, "model.zse.kernel_count", "low < high")


def test_a_restarted_trial_replays_the_epochs_its_ray_train_run_already_finished(tmp_path):
    """A resumed trial's Train run reports only the epochs left; Tune must still see the earlier ones."""
    import torch

    from sbir.checkpoint import META_FILE
    from tune.results import _checkpoint_path
    from tune.trial import RAY_TRAIN_SNAPSHOT, earlier_epochs

    assert earlier_epochs(str(tmp_path / "never-ran")) == []
    run = tmp_path / "trial-abc"
    history = [{"epoch": 1.0, "val_score": 0.4}, {"epoch": 2.0, "val_score": 0.6}, {"epoch": 3.0, "val_score": 0.5}]
    for stamp, epoch in (("2026-01-01_10-00-02", 2), ("2026-01-01_10-00-03", 3)):  # the best and the latest
        folder = run / f"checkpoint_{stamp}"
        folder.mkdir(parents=True)
        (folder / META_FILE).write_text(json.dumps({"extra": {"epoch": epoch}}))
        torch.save({"history": history[:epoch]}, folder / "train_state.pt")
    (run / "checkpoint_2026-01-01_10-00-04").mkdir()  # a worker died writing epoch 4: Ray never committed it
    assert earlier_epochs(str(run)) == [], "no snapshot: Ray Train committed nothing, the run starts over"
    kept = [{"checkpoint_dir_name": f"checkpoint_2026-01-01_10-00-0{i}", "metrics": {}} for i in (2, 3)]
    snapshot = {"checkpoint_results": kept, "latest_checkpoint_result": kept[1]}
    (run / RAY_TRAIN_SNAPSHOT).write_text(json.dumps(snapshot))
    rows = earlier_epochs(str(run))
    assert [r["epoch"] for r in rows] == [1.0, 2.0, 3.0]
    assert "checkpoint_path" not in rows[0]
    assert rows[1]["checkpoint_path"] == str(run / "checkpoint_2026-01-01_10-00-02")
    assert _checkpoint_path(rows, on_s3=False) == rows[1]["checkpoint_path"], "the best validated epoch's"
    assert _checkpoint_path([{"checkpoint_path": "bucket/k", "val_score": 0.1}], on_s3=True) == "s3://bucket/k"
