"""`sbir eval`: embed queries and gallery with Ray Data batch inference, score every mode, write a report.

The encoding runs in an actor pool (``EmbedBatch``: one ``sbir.inference.Encoder`` per actor, loaded once);
the driver builds the method's gallery from the encoded photos and scores it with
``sbir.inference.evaluate``: the same code path that validation and serving use.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.embed import EncodedRole, embed_role
from pipelines.prepare import DataSource, ensure_prepared, read_manifest
from sbir.checkpoint import load_checkpoint, read_checkpoint_meta
from sbir.config import Config, EvalTarget
from sbir.data.classes import class_overlap
from sbir.errors import SbirError
from sbir.inference.encoder import resolve_device
from sbir.inference.evaluate import Evaluation, evaluate_gallery
from sbir.inference.gallery import Gallery, items_from_rows
from sbir.methods import family_of

logger = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """Metrics per run column (``<mode>`` and, cross-dataset, ``<mode>/disjoint``) and the report files."""

    metrics: dict[str, dict[str, float]]
    report: Path
    report_json: Path


def prepare_target(target: EvalTarget, run_dir: Path) -> str:
    """Prepared shards of a cross-dataset target (all of its classes in the test role)."""
    out = target.prepared or str(run_dir / "targets" / target.name)
    ensure_prepared(out, DataSource(target.layout, target.root, target.split), reuse_existing=True)
    return out


def evaluate_checkpoint(
    checkpoint: str | Path,
    prepared: str | None,
    *,
    out_dir: str | Path,
    config: Config | None = None,
    role: str = "test",
    target: EvalTarget | None = None,
    baseline: Path | None = None,
    mlflow_run: str | None = None,
) -> EvalResult:
    """Evaluate a project checkpoint on one role of a prepared dataset (or a cross-dataset target).

    `baseline` is the report folder of the same model untrained, whose curves the PR plot draws beside
    this one's; `mlflow_run` names the run the report belongs to.
    """
    started = time.perf_counter()
    checkpoint, out = Path(checkpoint), Path(out_dir)
    meta = read_checkpoint_meta(checkpoint)
    config = config or meta.config
    model, _ = load_checkpoint(checkpoint, device=resolve_device(config.eval.device))
    family = family_of(meta.config)
    if target is not None:
        prepared, role = prepare_target(target, out.parent), "test"
    if prepared is None:
        raise SbirError("evaluate_checkpoint needs a prepared dataset or a target")
    transform = family.image_transform(config, model)
    encoded = embed_role(checkpoint, prepared, role, transform, config.eval)
    encode_s = time.perf_counter() - started
    manifest = read_manifest(prepared)
    class_names = manifest.classes.by_id
    items = items_from_rows(encoded.photos, class_names)
    gallery = family.gallery(model, encoded.encoding(family, "photo"), items, config.index)
    evaluation = evaluate_gallery(
        gallery,
        encoded.encoding(family, "sketch"),
        encoded.sketches["class_id"],
        family.retrieval_modes(config.eval.modes),
        config.eval,
        query_pairs=[str(p) if p else None for p in encoded.sketches["pair_id"]],
    )
    metrics = dict(evaluation.metrics)
    notes = []
    if config.train.model_selection == "unseen_test":
        notes.append("selected on test classes: the checkpoint was chosen on the unseen classes it is tested on")
    if target is not None:
        overlap = sorted(class_overlap(meta.seen_classes, manifest.classes.test))
        metrics |= _disjoint(evaluation, encoded, gallery, class_names, set(overlap), config)
        notes.append(f"{len(overlap)} target classes overlap the training classes: {', '.join(overlap) or 'none'}")
    timings = {"encode_s": encode_s, **{f"score_{m}_s": t for m, t in evaluation.seconds.items()}}
    timings["total_s"] = time.perf_counter() - started
    timings = {name: round(seconds, 3) for name, seconds in timings.items()}
    info = _run_info(
        checkpoint,
        meta,
        config,
        family,
        manifest,
        prepared,
        role,
        target,
        encoded,
        gallery,
        mlflow_run,
        list(evaluation.scores),
    )
    from pipelines.report import ReportInputs, write_evaluation_report

    out.mkdir(parents=True, exist_ok=True)  # only now: a failed evaluation leaves no empty report folder
    inputs = ReportInputs(
        model,
        family,
        config,
        evaluation,
        metrics,
        info | {"timings": timings},
        notes,
        encoded,
        prepared,
        class_names,
        transform,
        baseline,
    )
    report = write_evaluation_report(out, inputs)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return EvalResult(metrics, report.html, report.json)


def _run_info(checkpoint, meta, config, family, manifest, prepared, role, target, encoded, gallery, mlflow_run, modes):
    """What the report's run table names: the setting and data, the checkpoint, its run, a config summary."""
    section = config.model.section
    summary = {
        "method": family.title,
        "preset": family.preset(config.model),
        "size": getattr(section, "size", None) or getattr(section, "backbone", None),
        "stem": section.stem,
        "modes": modes,
        "rerank_k": config.eval.rerank_k if family.rerank_mode is not None else None,
        "tie_break": f"{config.eval.tie_break} (seed {config.eval.tie_seed})",
        "score_precision": config.eval.eval_precision,
        "selection": config.train.model_selection,
    }
    return {
        "setting": config.setting,
        "dataset": manifest.source,
        "split": manifest.split,
        "role": role,
        "target": target.name if target else None,
        "prepared": prepared,
        "checkpoint": str(checkpoint),
        "run": meta.extra.get("run_name"),
        "epoch": meta.extra.get("epoch"),
        "mlflow_run": mlflow_run,
        "queries": len(encoded.sketches["class_id"]),
        "gallery": len(gallery),
        "classes": len(np.unique(encoded.sketches["class_id"])),
        "config": {k: v for k, v in summary.items() if v is not None},
    }


def _disjoint(
    evaluation: Evaluation,
    encoded: EncodedRole,
    gallery: Gallery,
    class_names: dict[int, str],
    overlap: set[str],
    config: Config,
) -> dict[str, dict[str, float]]:
    """Metrics recomputed on the target classes that do not overlap the training classes."""
    from sbir.metrics import compute_metrics

    sketch_labels, photo_labels = encoded.sketches["class_id"], gallery.class_ids
    keep_s = np.array([class_names[int(c)] not in overlap for c in sketch_labels])
    keep_p = np.array([class_names[int(c)] not in overlap for c in photo_labels])
    if not overlap:
        return {f"{mode}/disjoint": dict(m) for mode, m in evaluation.metrics.items()}
    if not keep_s.any() or not keep_p.any():
        return {}
    out = {}
    for mode, scores in evaluation.scores.items():
        sub = scores.numpy()[np.ix_(keep_s, keep_p)]
        out[f"{mode}/disjoint"] = compute_metrics(
            sub,
            sketch_labels[keep_s],
            photo_labels[keep_p],
            tie_break=config.eval.tie_break,
            tie_seed=config.eval.tie_seed,
        )
    return out
