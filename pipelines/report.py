"""Assemble an evaluation report: PR curves, a top-k retrieval grid, ZSE-SBIR explanations and the metric table."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from pipelines.prepare import read_prepared
from sbir.config import Config
from sbir.inference.evaluate import Evaluation
from sbir.inference.transforms import ImageTransform
from sbir.methods import MethodFamily
from sbir.reports import (
    ReportFiles,
    plot_precision_recall,
    precision_recall_curve,
    retrieval_grid,
    sample_queries,
    top_k_rankings,
    write_report,
)

if TYPE_CHECKING:
    from pipelines.evaluate import EncodedRole

logger = logging.getLogger(__name__)


def _images_by_path(prepared: str, paths: set[str]) -> dict[str, bytes]:
    """Encoded image bytes of a few rows, looked up by path in the prepared shards."""
    from ray.data.expressions import col

    rows = read_prepared(prepared, columns=["path", "image"]).filter(expr=col("path").is_in(sorted(paths))).take_all()
    return {r["path"]: r["image"] for r in rows}


def write_evaluation_report(
    out: Path,
    model: torch.nn.Module,
    family: MethodFamily,
    config: Config,
    evaluation: Evaluation,
    metrics: dict[str, dict[str, float]],
    info: dict[str, Any],
    notes: list[str],
    encoded: EncodedRole,
    prepared: str,
    class_names: dict[int, str],
    transform: ImageTransform,
) -> ReportFiles:
    """Write report.{json,md,html} plus its PNGs into `out` and return the files."""
    sketches, photos = encoded.sketches, encoded.photos
    sketch_labels, photo_labels = sketches["class_id"], photos["class_id"]
    curves = {
        f"{family.name}/{mode}": precision_recall_curve(scores.float().numpy(), sketch_labels, photo_labels)
        for mode, scores in evaluation.scores.items()
    }
    images: dict[str, Path] = {
        "Precision-recall (11-point interpolated)": plot_precision_recall(curves, out / "precision_recall.png")
    }
    count = min(config.eval.report_queries, len(sketch_labels))
    if count:
        mode = family.default_mode if family.default_mode in evaluation.scores else next(iter(evaluation.scores))
        queries = sample_queries(sketch_labels, count, seed=config.eval.tie_seed)
        k = min(config.eval.report_top_k, len(photo_labels))
        rankings = top_k_rankings(evaluation.scores[mode][queries].float().numpy(), k)
        wanted = {str(sketches["path"][q]) for q in queries} | {str(photos["path"][j]) for j in rankings.ravel()}
        data = _images_by_path(prepared, wanted)

        def load(path: str) -> Image.Image:
            return Image.open(io.BytesIO(data[path])).convert("RGB")

        names = [class_names.get(i, str(i)) for i in range(max(class_names, default=-1) + 1)]
        grid = retrieval_grid(
            [load(str(sketches["path"][q])) for q in queries],
            lambda j: load(str(photos["path"][j])),
            rankings,
            sketch_labels[queries],
            photo_labels,
            class_names=names,
        )
        grid_path = out / "top_k.png"
        grid.save(grid_path)
        images[f"Top-{k} retrievals ({mode}); green = same class"] = grid_path
        if family.explains and config.eval.report_explanations:
            explain = _Explain(model, family, transform, load)
            images |= explain.write(out, config.eval.report_explanations, queries, rankings, sketches, photos)
    return write_report(
        out,
        title=f"{family.title} evaluation: {info.get('target') or info.get('role')}",
        metrics=metrics,
        info=info,
        images=images,
        notes=notes,
    )


class _Explain:
    """Attention maps, token correspondences and patch synthesis for the first queries and their top photo."""

    def __init__(self, model, family: MethodFamily, transform: ImageTransform, load) -> None:
        self.model, self.family, self.transform, self.load = model, family, transform, load

    def write(self, out: Path, count: int, queries, rankings, sketches, photos) -> dict[str, Path]:
        from sbir.explain import save_explanation

        device = next(self.model.parameters()).device
        written: dict[str, Path] = {}
        for n, (q, ranked) in enumerate(zip(queries[:count], rankings[:count], strict=True)):
            sketch = self.transform(self.load(str(sketches["path"][q])), "sketch").to(device)
            photo = self.transform(self.load(str(photos["path"][ranked[0]])), "photo").to(device)
            explanation = self.family.explain(self.model, sketch, photo)
            for path in save_explanation(explanation, out / "explanations" / f"query_{n}"):
                written[f"Query {n}: {path.stem.replace('_', ' ')}"] = path
        return written
