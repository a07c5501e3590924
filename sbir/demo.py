"""The end-to-end demo of the core library on toy data, with tiny random-init models.

It builds both model families, encodes a toy gallery once, scores sketches in every retrieval mode,
prints every metric variant, writes explanation images, and round-trips both checkpoints. Later
pipelines (data, Ray training, serving) grow this into the full main job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from sbir.checkpoint import load_checkpoint, save_checkpoint
from sbir.config import load_config
from sbir.data.preprocess import clip_image, zse_photo, zse_sketch
from sbir.data.toy_shapes import TOY_CLASSES, make_toy_set
from sbir.metrics import compute_metrics
from sbir.models import build_model
from sbir.retrieval.index import EmbeddingIndex
from sbir.retrieval.zse_search import ZSEGallery, encode_in_batches

logger = logging.getLogger(__name__)

HEADLINE = ("map_all_voc", "map_all_plain", "map_200_voc_strict", "map_200_plain_lenient", "p_100", "p_100_minR")


def run_demo(out: Path, seed: int = 0, echo: Callable[[str], None] = print) -> dict[str, dict[str, float]]:
    """Run the demo and return {model/mode: metrics}."""
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    classes = list(range(len(TOY_CLASSES)))
    gallery_pairs = make_toy_set(classes, per_class=8, seed=seed + 1)
    query_pairs = make_toy_set(classes, per_class=3, seed=seed + 2)
    photo_labels = np.array([p.label for p in gallery_pairs])
    sketch_labels = np.array([p.label for p in query_pairs])
    echo(f"toy data: {len(query_pairs)} sketches -> {len(gallery_pairs)} photos, {len(classes)} classes")

    results: dict[str, dict[str, float]] = {}

    # ZSE-SBIR: cache the gallery once, then score in every mode.
    zse_cfg = load_config("synthetic_zse")
    zse = build_model(zse_cfg.model).eval()
    size = zse_cfg.model.zse.image_size
    photos = torch.stack([zse_photo(p.photo, size) for p in gallery_pairs])
    sketches = torch.stack([zse_sketch(p.sketch, size) for p in query_pairs])
    gallery = ZSEGallery(zse, encode_in_batches(zse, photos, "photo"))
    queries = encode_in_batches(zse, sketches, "sketch")
    for mode in zse_cfg.eval.modes:
        scores = gallery.score_matrix(queries, mode, rerank_k=zse_cfg.eval.rerank_k)
        results[f"zse/{mode}"] = compute_metrics(scores, sketch_labels, photo_labels, tie_seed=zse_cfg.eval.tie_seed)

    index = EmbeddingIndex(gallery.embeddings.shape[1])
    index.add(gallery.embeddings.numpy(), gallery.ids)
    hits = gallery.search(queries.select(slice(0, 1)), k=5, mode="rn_rerank", rerank_k=20, index=index)
    echo(
        f"zse rn_rerank top-5 for sketch 0 ({TOY_CLASSES[sketch_labels[0]]}): "
        + ", ".join(TOY_CLASSES[photo_labels[i]] for i in hits.ids[0])
    )

    from sbir.explain import explain_pair, save_explanation

    top = int(hits.ids[0, 0])
    explanation = explain_pair(zse, sketches[:1], photos[top : top + 1])
    written = save_explanation(explanation, out / "explanations")
    echo(f"explanations: {', '.join(str(p) for p in written)}")

    # CLIP-AT: a bi-encoder, cosine similarity of L2-normalised embeddings.
    clip_cfg = load_config("synthetic_clip_at")
    seen_names = [TOY_CLASSES[c] for c in classes]
    clip = build_model(clip_cfg.model, class_names=seen_names).eval()
    csize, mean, std = clip.image_size, clip.mean, clip.std
    fill = clip_cfg.model.clip_at.pad_fill
    with torch.no_grad():
        c_photos = clip.encode(
            torch.stack([clip_image(p.photo, csize, mean, std, fill) for p in gallery_pairs]), "photo"
        )
        c_sketch = clip.encode(
            torch.stack([clip_image(p.sketch, csize, mean, std, fill) for p in query_pairs]), "sketch"
        )
    results["clip_at/ret"] = compute_metrics(c_sketch @ c_photos.T, sketch_labels, photo_labels)

    # Checkpoints round-trip (safetensors + JSON, no pickle).
    for name, model, cfg in (("zse", zse, zse_cfg), ("clip_at", clip, clip_cfg)):
        path = save_checkpoint(
            out / "checkpoints" / name,
            model,
            cfg,
            classes={"seen": seen_names},
            metrics={k: v for k, v in results[f"{name}/ret"].items() if k in HEADLINE},
        )
        reloaded, meta = load_checkpoint(path)
        same = all(
            torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values(), strict=True)
        )
        echo(f"checkpoint {path}: method={meta.method} preset={meta.preset} reload identical={same}")

    echo("\nuntrained tiny models on toy data (chance level is expected before training):")
    echo(results_table(results))
    return results


def results_table(results: dict[str, dict[str, float]], columns: tuple[str, ...] = HEADLINE) -> str:
    """Fixed-width table: one row per model/mode, one column per named metric."""
    width = max(len(name) for name in results) + 2
    lines = ["".ljust(width) + "".join(c.rjust(22) for c in columns)]
    for name, metrics in results.items():
        lines.append(name.ljust(width) + "".join(f"{metrics[c]:22.4f}" for c in columns))
    return "\n".join(lines)
