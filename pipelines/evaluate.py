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
import ray

from pipelines.prepare import DataSource, ensure_prepared, read_manifest, read_prepared
from pipelines.rows import ROW_COLUMNS
from sbir.checkpoint import load_checkpoint, read_checkpoint_meta
from sbir.config import Config, EvalConfig, EvalTarget
from sbir.data.classes import class_overlap
from sbir.errors import DeviceError, SbirError
from sbir.inference.encoder import Encoder, resolve_device
from sbir.inference.evaluate import Evaluation, evaluate_gallery
from sbir.inference.gallery import Gallery, items_from_rows
from sbir.inference.transforms import ImageTransform
from sbir.methods import MethodFamily, family_of
from sbir.models.encoding import Encoding

logger = logging.getLogger(__name__)

ENCODING_PREFIX = "enc_"  # columns of encoded rows that hold the encoding's arrays
META_COLUMNS = ("path", "class_id", "modality", "pair_id")


@dataclass
class EvalResult:
    """Metrics per run column (``<mode>`` and, cross-dataset, ``<mode>/disjoint``) and the report files."""

    metrics: dict[str, dict[str, float]]
    report: Path
    report_json: Path


@dataclass
class EncodedRole:
    """One role's queries and gallery photos, encoded, with their row metadata (sorted by path)."""

    sketches: dict[str, np.ndarray]
    photos: dict[str, np.ndarray]

    def encoding(self, family: MethodFamily, modality: str) -> Encoding:
        rows = self.sketches if modality == "sketch" else self.photos
        arrays = {k.removeprefix(ENCODING_PREFIX): v for k, v in rows.items() if k.startswith(ENCODING_PREFIX)}
        return family.encoding.from_arrays(arrays)


class EmbedBatch:
    """Ray Data UDF (actor): load the checkpoint once, then encode batches of encoded image bytes."""

    def __init__(self, checkpoint: str, transform: ImageTransform, device: str, batch_size: int) -> None:
        import torch

        if device == "cpu":
            torch.set_num_threads(1)  # actors share the node's cores
        model, meta = load_checkpoint(checkpoint, device=resolve_device(device))
        self.encoder = Encoder(model, family_of(meta.config), transform, batch_size=batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {key: [] for key in META_COLUMNS}
        encoded: dict[str, list[np.ndarray]] = {}
        for modality in ("sketch", "photo"):
            rows = [i for i, m in enumerate(batch["modality"]) if m == modality]
            if not rows:
                continue
            encoding = self.encoder.encode_bytes([batch["image"][i] for i in rows], modality)
            for name, value in encoding.to_arrays().items():
                encoded.setdefault(ENCODING_PREFIX + name, []).append(value)
            for key in out:
                out[key] += [batch[key][i] for i in rows]
        result = {key: np.asarray(values) for key, values in out.items()}
        return result | {name: np.concatenate(parts) for name, parts in encoded.items()}


def _gather(ds: ray.data.Dataset) -> EncodedRole:
    """Concatenate the encoded rows per modality, sorted by path (a deterministic gallery order)."""
    parts: dict[str, list[dict[str, np.ndarray]]] = {"sketch": [], "photo": []}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for modality in ("sketch", "photo"):
            keep = batch["modality"] == modality
            if keep.any():
                parts[modality].append({k: v[keep] for k, v in batch.items()})
    gathered = {}
    for modality, chunks in parts.items():
        if not chunks:
            raise SbirError(f"the evaluation split has no {modality}es" if modality == "sketch" else "no photos")
        joined = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        order = np.argsort(joined["path"], kind="stable")
        gathered[modality] = {k: v[order] for k, v in joined.items()}
    return EncodedRole(gathered["sketch"], gathered["photo"])


def check_eval_resources(eval_cfg: EvalConfig) -> None:
    """Fail at once, naming what is missing, when the encoder actors ask for GPUs the cluster lacks."""
    if eval_cfg.gpus_per_worker > 0:
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus < eval_cfg.gpus_per_worker:
            raise DeviceError(
                f"eval.gpus_per_worker={eval_cfg.gpus_per_worker} but the Ray cluster has {gpus:g} GPU(s); "
                "set eval.gpus_per_worker=0 to encode on CPUs"
            )


def embed_role(
    checkpoint: Path, prepared: str, role: str, transform: ImageTransform, eval_cfg: EvalConfig
) -> EncodedRole:
    """Batch inference over the prepared shards of one role: an actor pool of encoders (from ``eval.*``)."""
    from ray.data import ActorPoolStrategy
    from ray.data.expressions import col

    check_eval_resources(eval_cfg)
    device = "cuda" if eval_cfg.gpus_per_worker > 0 else "cpu"
    ds = read_prepared(prepared, columns=ROW_COLUMNS).filter(expr=col("role") == role)
    ds = ds.map_batches(
        EmbedBatch,
        fn_constructor_args=(str(checkpoint), transform, device, eval_cfg.batch_size),
        batch_size=eval_cfg.batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=eval_cfg.num_workers),
        num_cpus=eval_cfg.cpus_per_worker,
        num_gpus=eval_cfg.gpus_per_worker,
    )
    return _gather(ds)


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
        "rerank_k": config.eval.rerank_k if "rn_rerank" in family.modes else None,
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
