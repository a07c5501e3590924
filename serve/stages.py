"""The search of one request over the model deployments: encode, search the index, re-rank, merge.

The steps and their depths are the core's :class:`sbir.inference.search.SearchPlan`, the same plan a saved
gallery's ``search`` runs, so the endpoint ranks exactly as ``sbir eval`` scores. This module only moves
the request between the deployments and times each stage.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from ray.serve.handle import DeploymentHandle

from sbir.inference.gallery import GalleryItem
from sbir.inference.search import SearchPlan
from sbir.methods import MethodFamily
from serve.deployments import EncodeRequest, EncodeResult
from serve.metrics import EndpointMetrics
from serve.model import ServingModel


class SearchStages:
    """Encoder, index and (for a method with a re-rank mode) re-ranker deployments, used in that order."""

    def __init__(
        self,
        encoder: DeploymentHandle,
        index: DeploymentHandle,
        reranker: DeploymentHandle | None,
        metrics: EndpointMetrics,
    ) -> None:
        self.encoder, self.index, self.reranker = encoder, index, reranker
        self.metrics = metrics

    async def load(self, model: ServingModel) -> int:
        """Load a version in every model deployment (one replica each; others load on first use); the gallery size."""
        calls = [self.encoder.load.remote(model), self.index.load.remote(model)]
        if self.reranker is not None:
            calls.append(self.reranker.load.remote(model))
        results = [await call for call in calls]
        return int(results[1])

    async def encode(self, model: ServingModel, image: np.ndarray, modality: str) -> EncodeResult:
        return await self.encoder.encode.remote(EncodeRequest(model, modality, image))

    async def search(
        self,
        model: ServingModel,
        family: MethodFamily,
        sketch: np.ndarray,
        *,
        k: int,
        mode: str,
        rerank_k: int,
        decode_s: float,
    ) -> dict[str, Any]:
        """The answer of one search: results, per-stage timings (``total`` includes decoding), encoder batch."""
        started = time.perf_counter()
        encoded = await self.encode(model, sketch, "sketch")
        self.metrics.batch_size.observe(encoded.batch_size)
        plan = SearchPlan.for_mode(k, mode, family.rerank_mode, rerank_k, size=2**62)  # the index caps the depth
        hits = await self.index.search.remote(model, encoded.embedding, plan.depth)
        ids, scores = hits.ids.reshape(1, -1), hits.scores.reshape(1, -1)
        timings = {"decode": decode_s, "encode": encoded.seconds, "search": hits.seconds, "rerank": 0.0}
        relation = None
        if plan.rerank and ids.size:
            head = plan.rerank_ids(ids)[0]
            relation, timings["rerank"] = await self.reranker.rerank.remote(model, encoded.arrays, head)
            relation = relation.reshape(1, -1)
        result = plan.finish(ids, scores, relation)
        found = [
            (hits.items[int(i)], float(s))
            for i, s in zip(result.ids[0], result.scores[0], strict=True)
            if int(i) in hits.items
        ]
        timings["total"] = decode_s + time.perf_counter() - started
        for stage, seconds in timings.items():
            self.metrics.latency.labels(stage).observe(seconds)
        return {
            "model_id": model.model_id,
            "mode": mode,
            "k": k,
            "results": [_result(rank, item, score) for rank, (item, score) in enumerate(found, 1)],
            "timings": timings,
            "encoder_batch": encoded.batch_size,
        }


def _result(rank: int, item: GalleryItem, score: float) -> dict[str, Any]:
    return {
        "rank": rank,
        "id": item.id,
        "score": score,
        "class": item.class_name,
        "path": item.path,
        "image_url": f"/v1/gallery/{item.id}/image",
    }
