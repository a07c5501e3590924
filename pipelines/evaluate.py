"""`sbir eval`: embed queries and gallery with Ray Data batch inference, score every mode, write a report.

:func:`run_evaluation` is the command's workload, as :func:`pipelines.train.run_training` is `sbir train`'s:
it resolves and checks the checkpoint, merges the configs, picks the report folder and the data (every
check before Ray starts), then evaluates. The encoding runs in an actor pool (``EmbedBatch``: one
``sbir.inference.Encoder`` per actor, loaded once); the driver builds the method's gallery from the encoded
photos and scores it with ``sbir.inference.evaluate``: the same code path that validation and serving use.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from pipelines.embed import EncodedRole, embed_role
from pipelines.prepare import DataSource, ensure_prepared, prepare_training_data, read_manifest
from pipelines.ray_runtime import ensure_ray
from pipelines.report import ReportInputs, RunInfo, write_evaluation_report
from sbir.checkpoint import CheckpointMeta, check_checkpoint, load_weights, read_checkpoint_meta
from sbir.config import Config, EvalTarget, config_for_checkpoint, load_config, with_absolute_paths
from sbir.data.classes import class_overlap
from sbir.data.manifest import PreparedManifest
from sbir.errors import SbirError, UsageError
from sbir.inference.encoder import resolve_device
from sbir.inference.evaluate import Evaluation, evaluate_gallery
from sbir.inference.gallery import Gallery, items_from_rows
from sbir.inference.transforms import ImageTransform
from sbir.methods import MethodFamily, family_of

logger = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """Metrics per run column (``<mode>`` and, cross-dataset, ``<mode>/disjoint``), the report files, and the
    method they measure (the model/mode rows a table names)."""

    metrics: dict[str, dict[str, float]]
    report: Path
    report_json: Path
    method: str


@dataclass(frozen=True)
class EvaluationRequest:
    """One `sbir eval`: the checkpoint, the role and data it is scored on, where the report goes, and the
    user's config (a file or preset, and overrides) that applies on top of the checkpoint's own."""

    checkpoint: str  # a checkpoint dir, an MLflow run id, runs:/… or models:/name@alias
    role: str = "test"  # the prepared role: test (unseen), val or train
    prepared: str | None = None  # None: data.prepared, or prepared from data.root
    out: Path | None = None  # None: a new folder under <run.dir>/eval/
    overwrite: bool = False  # replace a report already in `out`
    config_source: str | None = None  # a YAML file or preset name
    overrides: tuple[str, ...] = ()  # dotted overrides, e.g. eval.modes=[ret]


def run_evaluation(request: EvaluationRequest) -> EvalResult:
    """Evaluate a checkpoint and write its report: whatever needs no cluster (reference, checkpoint files,
    config, report folder, data) is checked before Ray starts, and the checkpoint's metadata is read once."""
    from pipelines.tracking import resolve_checkpoint

    overrides = list(request.overrides)
    user = load_config(request.config_source, overrides)  # the user's input, validated on its own
    directory = resolve_checkpoint(request.checkpoint, user.tracking.uri, runs_dir=user.run.dir)
    meta = check_checkpoint(directory)  # a corrupt checkpoint fails here, before Ray starts
    config = with_absolute_paths(config_for_checkpoint(meta.config, request.config_source, overrides))
    out = report_folder(request.out, Path(config.run.dir), request.checkpoint, request.role, request.overwrite)
    prepared = _prepared_data(request.prepared, config)
    ensure_ray(config.run.ray_address, timeout_s=config.run.ray_connect_timeout_s)
    return evaluate_checkpoint(directory, prepared, out_dir=out, config=config, role=request.role, meta=meta)


def report_folder(out: Path | None, run_dir: Path, reference: str, role: str, overwrite: bool) -> Path:
    """Where an evaluation writes: `out` (never over an existing report unless `overwrite`), else a new
    folder ``<run.dir>/eval/<reference>-<role>-<time>`` that no other evaluation uses."""
    if out is not None:
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} is a file; name a folder for the report")
        if (out / "report.json").exists() and not overwrite:
            raise UsageError(f"{out} already holds a report; pass --overwrite to replace it, or another --out")
        return out
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", reference).strip("-.")[-80:] or "checkpoint"
    base = run_dir / "eval" / f"{slug}-{role}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _prepared_data(prepared: str | None, config: Config) -> str:
    """The prepared dataset to evaluate on: the one named (its manifest read, so a missing or unreachable
    dataset fails before Ray starts), else the config's, prepared from data.root if need be."""
    if prepared is not None:
        read_manifest(prepared)
        return prepared
    prepared, _ = prepare_training_data(config, check_selection=False)
    return prepared


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
    meta: CheckpointMeta | None = None,
) -> EvalResult:
    """Evaluate a project checkpoint on one role of a prepared dataset (or a cross-dataset target).

    `baseline` is the report folder of the same model untrained, whose curves the PR plot draws beside
    this one's; `mlflow_run` names the run the report belongs to; `meta` is the checkpoint's metadata
    where the caller has read it already (it is not read again).
    """
    started = time.perf_counter()
    checkpoint, out = Path(checkpoint), Path(out_dir)
    meta = meta if meta is not None else read_checkpoint_meta(checkpoint)  # the one read of the metadata
    config = config or meta.config
    model = load_weights(checkpoint, meta, device=resolve_device(config.eval.device))
    family = family_of(meta.config)
    if target is not None:
        prepared, role = prepare_target(target, out.parent), "test"
    if prepared is None:
        raise SbirError("evaluate_checkpoint needs a prepared dataset or a target")
    scored = _score(checkpoint, model, family, prepared, role, config, started)
    metrics, notes = _metrics_and_notes(scored, meta, config, target)
    info = _run_info(
        checkpoint=checkpoint,
        meta=meta,
        config=config,
        family=family,
        scored=scored,
        prepared=prepared,
        role=role,
        target=target,
        mlflow_run=mlflow_run,
        timings=_timings(scored, started),
    )
    out.mkdir(parents=True, exist_ok=True)  # only now: a failed evaluation leaves no empty report folder
    inputs = ReportInputs(
        model=model,
        family=family,
        config=config,
        evaluation=scored.evaluation,
        metrics=metrics,
        info=info,
        notes=notes,
        encoded=scored.encoded,
        prepared=prepared,
        class_names=scored.class_names,
        transform=scored.transform,
        baseline=baseline,
    )
    report = write_evaluation_report(out, inputs)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return EvalResult(metrics=metrics, report=report.html, report_json=report.json, method=meta.method)


@dataclass
class _Scored:
    """One role encoded and scored: what the metrics, the notes and the report are made from."""

    transform: ImageTransform
    encoded: EncodedRole
    encode_s: float  # seconds from the start of the evaluation to the end of the encoding
    manifest: PreparedManifest
    class_names: dict[int, str]
    gallery: Gallery
    evaluation: Evaluation


def _score(
    checkpoint: Path, model: nn.Module, family: MethodFamily, prepared: str, role: str, config: Config, started: float
) -> _Scored:
    """Encode the role with Ray Data, build the method's gallery from its photos and score every mode."""
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
    return _Scored(transform, encoded, encode_s, manifest, class_names, gallery, evaluation)


def _metrics_and_notes(
    scored: _Scored, meta: CheckpointMeta, config: Config, target: EvalTarget | None
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """The metrics per run column (on a cross-dataset target also on its classes training never saw) and
    the report's notes on what the numbers mean."""
    metrics = dict(scored.evaluation.metrics)
    notes = []
    if config.train.model_selection == "unseen_test":
        notes.append("selected on test classes: the checkpoint was chosen on the unseen classes it is tested on")
    if target is not None:
        overlap = sorted(class_overlap(meta.seen_classes, scored.manifest.classes.test))
        metrics |= _disjoint(scored, set(overlap), config)
        notes.append(f"{len(overlap)} target classes overlap the training classes: {', '.join(overlap) or 'none'}")
    return metrics, notes


def _timings(scored: _Scored, started: float) -> dict[str, float]:
    """Seconds spent encoding, scoring each mode and in all so far (to the millisecond), for the run table."""
    timings = {"encode_s": scored.encode_s, **{f"score_{m}_s": t for m, t in scored.evaluation.seconds.items()}}
    timings["total_s"] = time.perf_counter() - started
    return {name: round(seconds, 3) for name, seconds in timings.items()}


def _run_info(
    *,
    checkpoint: Path,
    meta: CheckpointMeta,
    config: Config,
    family: MethodFamily,
    scored: _Scored,
    prepared: str,
    role: str,
    target: EvalTarget | None,
    mlflow_run: str | None,
    timings: dict[str, float],
) -> RunInfo:
    """What the report's run table names: the setting and data, the checkpoint, its run, a config summary."""
    labels = scored.encoded.sketches["class_id"]
    return RunInfo(
        setting=config.setting,
        dataset=scored.manifest.source,
        split=scored.manifest.split,
        role=role,
        target=target.name if target else None,
        prepared=prepared,
        checkpoint=str(checkpoint),
        run=meta.extra.get("run_name"),
        epoch=meta.extra.get("epoch"),
        mlflow_run=mlflow_run,
        queries=len(labels),
        gallery=len(scored.gallery),
        classes=len(np.unique(labels)),
        config=_config_summary(config, family, list(scored.evaluation.scores)),
        timings=timings,
    )


def _config_summary(config: Config, family: MethodFamily, modes: list[str]) -> dict[str, Any]:
    """The settings behind these numbers (the unset ones left out): method, model, modes, ties, selection."""
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
    return {k: v for k, v in summary.items() if v is not None}


def _disjoint(scored: _Scored, overlap: set[str], config: Config) -> dict[str, dict[str, float]]:
    """Metrics recomputed on the target classes that do not overlap the training classes."""
    from sbir.metrics import compute_metrics

    evaluation, class_names = scored.evaluation, scored.class_names
    sketch_labels, photo_labels = scored.encoded.sketches["class_id"], scored.gallery.class_ids
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
