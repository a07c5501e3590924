"""A sweep's report: trials ranked by the validation metric, the metric against each searched value,
learning curves with early stops marked, and the best config as a YAML file ``sbir train -c`` accepts.

Pure data in, files out (Markdown, HTML, PNG, YAML): the sweep driver hands it plain trial summaries.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

COMPLETED = "completed"
STOPPED = "stopped early"
FAILED = "failed"
UNFINISHED = "unfinished"
# The test metrics the report shows (report.json and the evaluation report under eval-test/ hold them all).
TEST_HEADLINE = ("map_all_voc", "map_200_voc_strict", "p_100", "p_200", "acc_1_in_class")


@dataclass
class TrialSummary:
    """One trial as the report and the CLI show it."""

    trial_id: str
    params: dict[str, Any]  # the searched keys only
    curve: list[dict[str, float]]  # one row per reported epoch (epoch, the metric, train_loss, ...)
    metric: str
    mode: str  # max or min
    stop_reason: str  # COMPLETED, STOPPED, FAILED or UNFINISHED
    error: str | None = None
    checkpoint: str | None = None  # the trial's best checkpoint (Ray Train storage path)
    retries: int = 0  # failed attempts that Tune retried (resuming from the trial's last checkpoint)
    mlflow_run_id: str | None = None

    @property
    def epochs(self) -> int:
        return max((int(row.get("epoch", 0)) for row in self.curve), default=0)

    @property
    def score(self) -> float | None:
        """Best value of the metric over the trial's epochs (None when no epoch was validated)."""
        values = [row[self.metric] for row in self.curve if _is_score(row.get(self.metric))]
        if not values:
            return None
        return max(values) if self.mode == "max" else min(values)

    @property
    def best_epoch(self) -> int | None:
        score = self.score
        if score is None:
            return None
        return next(int(row["epoch"]) for row in self.curve if row.get(self.metric) == score)


def _is_score(value: Any) -> bool:
    # An epoch without validation reports val_score -1 (pipelines.train_loop.NOT_VALIDATED).
    return isinstance(value, int | float) and math.isfinite(value) and value >= 0


def rank(trials: list[TrialSummary]) -> list[TrialSummary]:
    """Trials best first by their metric; trials without a score last, in their given order."""
    scored = [t for t in trials if t.score is not None]
    unscored = [t for t in trials if t.score is None]
    reverse = bool(trials) and trials[0].mode == "max"
    return sorted(scored, key=lambda t: t.score, reverse=reverse) + unscored  # type: ignore[arg-type, return-value]


@dataclass
class SweepReportFiles:
    markdown: Path
    html: Path
    json: Path
    best_config: Path | None
    images: list[Path] = field(default_factory=list)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def trials_table(trials: list[TrialSummary]) -> list[list[str]]:
    """Header plus one row per trial (ranked), as strings."""
    keys = sorted({k for t in trials for k in t.params})
    metric = trials[0].metric if trials else "score"
    header = ["rank", "trial", metric, "best epoch", "epochs", "stop", "retries", *keys]
    rows = [header]
    for i, trial in enumerate(rank(trials), start=1):
        score = trial.score
        rows.append(
            [
                str(i) if score is not None else "-",
                trial.trial_id,
                f"{score:.4f}" if score is not None else "-",
                str(trial.best_epoch or "-"),
                str(trial.epochs),
                trial.stop_reason,
                str(trial.retries),
                *(_fmt(trial.params.get(k, "")) for k in keys),
            ]
        )
    return rows


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def plot_curves(trials: list[TrialSummary], path: Path) -> Path:
    """The metric per epoch of every trial; an early-stopped trial's last point is an ×, a failed one's a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    for trial in trials:
        points = [(row["epoch"], row[trial.metric]) for row in trial.curve if _is_score(row.get(trial.metric))]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=trial.trial_id)
        if trial.stop_reason in (STOPPED, FAILED):
            marker = "x" if trial.stop_reason == STOPPED else "s"
            ax.plot(xs[-1], ys[-1], marker=marker, markersize=10, color=line.get_color(), linestyle="none")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(trials[0].metric if trials else "metric")
    ax.set_title("Learning curves (x = stopped early by the scheduler)")
    if len(trials) <= 12:
        ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_params(trials: list[TrialSummary], path: Path) -> Path:
    """The metric against each searched hyperparameter (log axis for values spanning over a decade)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for t in trials for k in t.params})
    scored = [t for t in trials if t.score is not None]
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(3.2 * max(1, len(keys)), 3.2), dpi=100, squeeze=False)
    for ax, key in zip(axes[0], keys, strict=False):
        values = [t.params.get(key) for t in scored]
        scores = [t.score for t in scored]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values) and values:
            ax.scatter(values, scores)
            positive = [v for v in values if v > 0]
            if positive and len(positive) == len(values) and max(positive) / min(positive) > 10:
                ax.set_xscale("log")
        else:
            labels = sorted({str(v) for v in values})
            ax.scatter([labels.index(str(v)) for v in values], scores)
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
        ax.set_title(key, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(trials[0].metric if trials else "metric")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_sweep_report(
    trials: list[TrialSummary],
    out_dir: Path,
    *,
    title: str,
    notes: list[str],
    best_config_yaml: str | None,
    test_metrics: dict[str, dict[str, float]] | None = None,
) -> SweepReportFiles:
    """report.md, report.html, report.json, curves.png, params.png and (with a best trial) best.yaml."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = trials_table(trials)
    images = [plot_curves(trials, out_dir / "curves.png"), plot_params(trials, out_dir / "params.png")]
    best_config = None
    if best_config_yaml is not None:
        best_config = out_dir / "best.yaml"
        best_config.write_text(best_config_yaml)
    test_lines = [
        f"| {mode} | " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k in TEST_HEADLINE) + " |"
        for mode, metrics in (test_metrics or {}).items()
    ]
    md = [f"# {title}", "", *[f"- {note}" for note in notes], "", "## Trials", "", markdown_table(rows), ""]
    if test_lines:
        md += ["## Best trial on the unseen test classes", "", "| mode | metrics |", "|---|---|", *test_lines, ""]
    md += ["## Learning curves", "", "![curves](curves.png)", "", "## Metric per hyperparameter", ""]
    md += ["![params](params.png)", ""]
    if best_config is not None:
        md += ["## Best config", "", "`best.yaml` trains as it is: `sbir train -c best.yaml`.", ""]
    markdown = out_dir / "report.md"
    markdown.write_text("\n".join(md))
    page = out_dir / "report.html"
    page.write_text(_html_page(title, notes, rows, test_lines, best_config is not None))
    payload = {"title": title, "notes": notes, "trials": [asdict(t) for t in rank(trials)], "test": test_metrics}
    report_json = out_dir / "report.json"
    report_json.write_text(json.dumps(payload, indent=2, default=str))
    return SweepReportFiles(markdown, page, report_json, best_config, images)


def _html_page(title: str, notes: list[str], rows: list[list[str]], test_lines: list[str], best: bool) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}</style></head><body>",
        f"<h1>{esc(title)}</h1><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>",
        f"<h2>Trials</h2><table><tr>{head}</tr>{body}</table>",
    ]
    if test_lines:
        parts.append("<h2>Best trial on the unseen test classes</h2><ul>")
        parts += [f"<li>{esc(line.strip('| '))}</li>" for line in test_lines]
        parts.append("</ul>")
    parts.append("<h2>Learning curves</h2><img src='curves.png' alt='learning curves'>")
    parts.append("<h2>Metric per hyperparameter</h2><img src='params.png' alt='metric per hyperparameter'>")
    if best:
        parts.append(
            "<h2>Best config</h2><p><a href='best.yaml'>best.yaml</a>: <code>sbir train -c best.yaml</code></p>"
        )
    parts.append("</body></html>")
    return "".join(parts)
