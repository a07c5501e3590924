"""`sbir eval`: embed queries and gallery with Ray Data batch inference, score every mode, write a report."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipelines.prepare import prepare_dataset, read_manifest, read_prepared
from pipelines.rows import ROW_COLUMNS
from sbir.checkpoint import load_checkpoint
from sbir.config import Config, EvalTarget
from sbir.data.preprocess import ImageTransform
from sbir.evaluation import Evaluation, evaluate_encoded
from sbir.models.zse.model import ZSEEncoding

logger = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """Metrics per run column (``<mode>`` and, cross-dataset, ``<mode>/disjoint``) and the report files."""

    metrics: dict[str, dict[str, float]]
    report: Path
    report_json: Path


class EmbedBatch:
    """Ray Data UDF (actor): load the checkpoint once, then encode batches of decoded images."""

    def __init__(self, checkpoint: str, transform: ImageTransform) -> None:
        torch.set_num_threads(1)
        self.model, meta = load_checkpoint(checkpoint)
        self.model.eval()
        self.method = meta.method
        self.transform = transform

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {"path": [], "class_id": [], "modality": [], "pair_id": []}
        encoded: dict[str, list] = {}
        for modality in ("sketch", "photo"):
            rows = [i for i, m in enumerate(batch["modality"]) if m == modality]
            if not rows:
                continue
            pixels = torch.stack([self.transform.decode(batch["image"][i], modality) for i in rows])
            with torch.no_grad():
                enc = self.model.encode(pixels, modality)
            fields = {"ret": enc.ret, "tokens": enc.tokens, "mask": enc.mask} if self.method == "zse" else {"ret": enc}
            for name, value in fields.items():
                if value is not None:
                    encoded.setdefault(name, []).append(value.numpy())
            for key in out:
                out[key] += [batch[key][i] for i in rows]
        result = {key: np.asarray(values) for key, values in out.items()}
        return result | {name: np.concatenate(parts) for name, parts in encoded.items()}


def _gather(ds) -> dict[str, dict[str, np.ndarray]]:
    """Concatenate the embedded rows per modality, sorted by path (a deterministic gallery order)."""
    parts: dict[str, list[dict[str, np.ndarray]]] = {"sketch": [], "photo": []}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for modality in ("sketch", "photo"):
            keep = batch["modality"] == modality
            if keep.any():
                parts[modality].append({k: v[keep] for k, v in batch.items()})
    gathered = {}
    for modality, chunks in parts.items():
        if not chunks:
            raise ValueError(f"the evaluation split has no {modality}es" if modality == "sketch" else "no photos")
        joined = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        order = np.argsort(joined["path"], kind="stable")
        gathered[modality] = {k: v[order] for k, v in joined.items()}
    return gathered


def _encoding(method: str, rows: dict[str, np.ndarray]):
    if method == "zse":
        mask = torch.from_numpy(rows["mask"]) if "mask" in rows else None
        return ZSEEncoding(torch.from_numpy(rows["ret"]), torch.from_numpy(rows["tokens"]), mask)
    return torch.from_numpy(rows["ret"])


def normalise_class(name: str) -> str:
    """protocols.md §1: lower-case, '_' and '-' as spaces (exact matching, synonyms are missed)."""
    return re.sub(r"[_\-]+", " ", name.lower()).strip()


def embed_split(
    checkpoint: Path, prepared: str, role: str, transform: ImageTransform, batch_size: int, workers: int = 1
):
    """Batch inference over the prepared shards of one role; returns per-modality arrays."""
    from ray.data import ActorPoolStrategy
    from ray.data.expressions import col

    ds = read_prepared(prepared, columns=ROW_COLUMNS).filter(expr=col("role") == role)
    ds = ds.map_batches(
        EmbedBatch,
        fn_constructor_args=(str(checkpoint), transform),
        batch_size=batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=workers),
        num_cpus=0.5,
    )
    return _gather(ds)


def prepare_target(target: EvalTarget, run_dir: Path) -> str:
    """Prepared shards of a cross-dataset target (all of its classes in the test role)."""
    out = target.prepared or str(run_dir / "targets" / target.name)
    try:
        read_manifest(out)
        return out
    except FileNotFoundError:
        from sbir.data.readers import read_split

        split = read_split(target.layout, target.root, target.split, val_fraction=0.0)
        prepare_dataset(split, out, source=f"{target.layout}:{target.root}")
        return out


def evaluate_checkpoint(
    checkpoint: str | Path,
    prepared: str | None,
    *,
    out_dir: str | Path,
    config: Config | None = None,
    role: str = "test",
    target: EvalTarget | None = None,
) -> EvalResult:
    """Evaluate a project checkpoint on one role of a prepared dataset (or a cross-dataset target)."""
    from pipelines.train import image_transform

    checkpoint = Path(checkpoint)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, meta = load_checkpoint(checkpoint)
    model.eval()
    config = config or meta.config
    method = meta.method
    if target is not None:
        prepared = prepare_target(target, out.parent)
        role = "test"
    if prepared is None:
        raise ValueError("evaluate_checkpoint needs a prepared dataset or a target")
    transform = image_transform(config, model)
    rows = embed_split(checkpoint, prepared, role, transform, config.eval.batch_size)
    sketches, photos = rows["sketch"], rows["photo"]
    pair_index = _pair_index(sketches["pair_id"], photos["pair_id"])
    evaluation = evaluate_encoded(
        model,
        method,
        _encoding(method, sketches),
        sketches["class_id"],
        _encoding(method, photos),
        photos["class_id"],
        config.eval,
        config.eval.modes,
        pair_index=pair_index,
    )
    metrics = dict(evaluation.metrics)
    manifest = read_manifest(prepared)
    class_names = _class_names(manifest)
    notes = []
    if config.train.model_selection == "unseen_test":
        notes.append("selected on test classes: the checkpoint was chosen on the unseen classes it is tested on")
    if target is not None:
        seen = {normalise_class(c) for c in meta.classes.get("seen", [])}
        overlap = sorted(c for c in manifest["classes"]["test"] if normalise_class(c) in seen)
        metrics |= _disjoint(evaluation, sketches["class_id"], photos["class_id"], class_names, set(overlap), config)
        notes.append(f"{len(overlap)} target classes overlap the training classes: {', '.join(overlap) or 'none'}")
    info = {
        "checkpoint": str(checkpoint),
        "method": method,
        "prepared": prepared,
        "role": role,
        "target": target.name if target else None,
        "queries": len(sketches["class_id"]),
        "gallery": len(photos["class_id"]),
        "classes": len(np.unique(sketches["class_id"])),
        "epoch": meta.extra.get("epoch"),
    }
    from pipelines.report import write_evaluation_report

    report = write_evaluation_report(
        out, model, method, config, evaluation, metrics, info, notes, sketches, photos, prepared, class_names
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return EvalResult(metrics, report.html, report.json)


def _class_names(manifest: dict) -> dict[int, str]:
    names = [*manifest["classes"]["train"], *manifest["classes"].get("val", []), *manifest["classes"]["test"]]
    return dict(enumerate(names))


def _pair_index(sketch_pairs: np.ndarray, photo_pairs: np.ndarray) -> np.ndarray | None:
    column = {str(p): i for i, p in enumerate(photo_pairs) if p}
    index = [column.get(str(p), -1) for p in sketch_pairs]
    return None if not index or min(index) < 0 else np.asarray(index, dtype=np.int64)


def _disjoint(evaluation: Evaluation, sketch_labels, photo_labels, class_names, overlap: set[str], config: Config):
    """Metrics recomputed on the target classes that do not overlap the training classes."""
    from sbir.metrics import compute_metrics

    keep_s = np.array([class_names[int(c)] not in overlap for c in sketch_labels])
    keep_p = np.array([class_names[int(c)] not in overlap for c in photo_labels])
    if not overlap:
        return {f"{mode}/disjoint": dict(m) for mode, m in evaluation.metrics.items()}
    if not keep_s.any() or not keep_p.any():
        return {}
    out = {}
    for mode, scores in evaluation.scores.items():
        sub = scores.float().numpy()[np.ix_(keep_s, keep_p)]
        out[f"{mode}/disjoint"] = compute_metrics(
            sub,
            sketch_labels[keep_s],
            photo_labels[keep_p],
            tie_break=config.eval.tie_break,
            tie_seed=config.eval.tie_seed,
        )
    return out
