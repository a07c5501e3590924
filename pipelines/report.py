"""Assemble an evaluation report: PR curves, a top-k retrieval grid, per-query rows with explanations, metrics.

The PR plot names the setting, role and run, and draws the untrained model (when its report is given) and
chance; the grid writes rank, score and class under every result and marks hits by shape as well as
colour; each sample query gets a row with its results beside its (scaled-up) explanation images.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipelines.embed import EncodedRole
from pipelines.prepare import read_prepared
from sbir.config import Config
from sbir.inference.evaluate import Evaluation
from sbir.inference.search import RERANK_OFFSET
from sbir.inference.transforms import ImageTransform
from sbir.methods import MethodFamily
from sbir.reports import (
    ReportFiles,
    ReportRow,
    chance_precision,
    plot_precision_recall,
    precision_recall_curve,
    retrieval_grid,
    sample_queries,
    top_k_rankings,
    write_report,
)

logger = logging.getLogger(__name__)

CURVES_FILE = "curves.json"  # the PR curves of a report, so a later report can draw them as a baseline
EXPLANATION_SIDE = 224  # explanation images are scaled up to about this many pixels a side


@dataclass(frozen=True)
class RunInfo:
    """What the report's run table names: the setting and data, the checkpoint and its run, the sizes, a
    summary of the config behind the numbers, and the timings."""

    setting: str
    dataset: str
    split: str
    role: str
    target: str | None  # the cross-dataset target's name; None on the training dataset
    prepared: str
    checkpoint: str
    run: str | None  # the training run's name, where the checkpoint records it
    epoch: int | None
    mlflow_run: str | None
    queries: int
    gallery: int
    classes: int
    config: dict[str, Any]
    timings: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """The run table's rows, in field order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class ReportInputs:
    """Everything one evaluation report shows."""

    model: torch.nn.Module
    family: MethodFamily
    config: Config
    evaluation: Evaluation
    metrics: dict[str, dict[str, float]]
    info: RunInfo
    notes: list[str]
    encoded: EncodedRole
    prepared: str
    class_names: dict[int, str]
    transform: ImageTransform
    baseline: Path | None = None  # the untrained model's report folder


def _images_by_path(prepared: str, paths: set[str]) -> dict[str, bytes]:
    """Encoded image bytes of a few rows, looked up by path in the prepared shards."""
    from ray.data.expressions import col

    rows = read_prepared(prepared, columns=["path", "image"]).filter(expr=col("path").is_in(sorted(paths))).take_all()
    return {r["path"]: r["image"] for r in rows}


def _curves(inputs: ReportInputs, out: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """This evaluation's PR curve per mode, also saved as curves.json for later reports."""
    sketches, photos = inputs.encoded.sketches, inputs.encoded.photos
    curves = {
        f"{inputs.family.name}/{mode}": precision_recall_curve(scores.numpy(), sketches["class_id"], photos["class_id"])
        for mode, scores in inputs.evaluation.scores.items()
    }
    saved = {name: {"recall": r.tolist(), "precision": p.tolist()} for name, (r, p) in curves.items()}
    (out / CURVES_FILE).write_text(json.dumps(saved))
    return curves


def _baseline_curves(baseline: Path | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if baseline is None or not (baseline / CURVES_FILE).is_file():
        return {}
    saved = json.loads((baseline / CURVES_FILE).read_text())
    return {f"untrained {name}": (np.asarray(c["recall"]), np.asarray(c["precision"])) for name, c in saved.items()}


def _pr_plot(inputs: ReportInputs, out: Path) -> Path:
    info = inputs.info
    title = f"{info.setting} · {info.target or info.role} role · {info.run or 'checkpoint'}"
    chance = chance_precision(inputs.encoded.sketches["class_id"], inputs.encoded.photos["class_id"])
    return plot_precision_recall(
        _curves(inputs, out), out / "precision_recall.png", title, _baseline_curves(inputs.baseline), chance
    )


def write_evaluation_report(out: Path, inputs: ReportInputs) -> ReportFiles:
    """Write report.{json,md,html} plus its PNGs into `out` and return the files."""
    images: dict[str, Path] = {"Precision-recall (11-point interpolated), with chance": _pr_plot(inputs, out)}
    rows: list[ReportRow] = []
    sketches, photos = inputs.encoded.sketches, inputs.encoded.photos
    count = min(inputs.config.eval.report_queries, len(sketches["class_id"]))
    if count:
        scores = inputs.evaluation.scores
        mode = inputs.family.default_mode if inputs.family.default_mode in scores else next(iter(scores))
        queries = sample_queries(sketches["class_id"], count, seed=inputs.config.eval.tie_seed)
        k = min(inputs.config.eval.report_top_k, len(photos["class_id"]))
        matrix = scores[mode][queries].numpy()
        rankings = top_k_rankings(matrix, k)
        shown = np.take_along_axis(matrix, rankings, axis=1)
        # re-ranked photos score RERANK_OFFSET + r in the matrix; show r itself
        if mode == inputs.family.rerank_mode:
            shown = np.where(shown >= RERANK_OFFSET, shown - RERANK_OFFSET, shown)
        wanted = {str(sketches["path"][q]) for q in queries} | {str(photos["path"][j]) for j in rankings.ravel()}
        data = _images_by_path(inputs.prepared, wanted)

        def load(path: str) -> Image.Image:
            return Image.open(io.BytesIO(data[path])).convert("RGB")

        names = [inputs.class_names.get(i, str(i)) for i in range(max(inputs.class_names, default=-1) + 1)]

        def grid(rows_of_queries: np.ndarray) -> Image.Image:
            return retrieval_grid(
                [load(str(sketches["path"][q])) for q in queries[rows_of_queries]],
                lambda j: load(str(photos["path"][j])),
                rankings[rows_of_queries],
                sketches["class_id"][queries[rows_of_queries]],
                photos["class_id"],
                class_names=names,
                scores=shown[rows_of_queries],
            )

        grid_path = out / "top_k.png"
        grid(np.arange(len(queries))).save(grid_path)
        images[f"Top-{k} retrievals ({mode}): rank, score and class under each photo; tick = same class"] = grid_path
        explain = inputs.family.explains and inputs.config.eval.report_explanations
        for n, (q, ranked) in enumerate(zip(queries, rankings, strict=True)):
            if not explain or n >= inputs.config.eval.report_explanations:
                break
            row_path = out / "explanations" / f"query_{n}" / "top_k.png"
            row_path.parent.mkdir(parents=True, exist_ok=True)
            grid(np.array([n])).save(row_path)
            pictures: dict[str, Path] = {f"top-{k} ({mode})": row_path}
            pictures |= _explanations(inputs, load, str(sketches["path"][q]), str(photos["path"][ranked[0]]), out, n)
            rows.append(ReportRow(f"Query {n}: {names[int(sketches['class_id'][q])]} and its top photo", pictures))
    return write_report(
        out,
        title=f"{inputs.family.title} evaluation: {inputs.info.setting}, {inputs.info.target or inputs.info.role} role",
        metrics=inputs.metrics,
        info=inputs.info.to_dict(),
        images=images,
        notes=inputs.notes,
        rows=rows,
    )


def _explanations(inputs: ReportInputs, load, sketch_path: str, photo_path: str, out: Path, n: int) -> dict[str, Path]:
    """Attention maps, token correspondences and patch synthesis of a query and its top photo, scaled up."""
    from sbir.explain import save_explanation

    device = next(inputs.model.parameters()).device
    sketch = inputs.transform(load(sketch_path), "sketch").to(device)
    photo = inputs.transform(load(photo_path), "photo").to(device)
    explanation = inputs.family.explain(inputs.model, sketch, photo)
    scale = max(1, EXPLANATION_SIDE // inputs.transform.size)
    paths = save_explanation(explanation, out / "explanations" / f"query_{n}", scale=scale)
    return {path.stem.replace("_", " "): path for path in paths}
