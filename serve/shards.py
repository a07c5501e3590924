"""The GalleryShard deployments: shard i of N of the gallery, each its own deployment with its own replicas.

With ``serve.gallery.shards`` = N > 1 the ingress holds no gallery; it fans each batch of searches out
to the N shards and merges their answers (``sbir.inference.search.merge_candidates`` and
``merge_relation``). A shard holds the items whose id modulo N is i, with their encodings (for ZSE-SBIR,
the cached photo tokens: the re-rank of a candidate happens where its tokens live) and its own FAISS
index; it batches the re-rank pairs of concurrent requests through the relation head together.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from ray import serve

from sbir.inference.gallery import GalleryItem
from sbir.inference.saved_gallery import ShardSpec
from serve.holder import Candidates, Relation, RelationJob, ShardHolder, keep_in_sync
from serve.model import ServingModel
from serve.versions_cache import Loaded

logger = logging.getLogger(__name__)


def shard_name(index: int) -> str:
    return f"GalleryShard{index}"


@serve.deployment(name="GalleryShard")
class GalleryShardDeployment:
    """One shard of the served gallery: first-stage candidates and second-stage scores for its items."""

    def __init__(
        self, index: int, count: int, device: str, threads: int, max_batch: int, sync_interval_s: float
    ) -> None:
        import faiss
        import torch

        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
        self.spec = ShardSpec(index, count)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"shard{index}")
        self.holders: Loaded[ShardHolder] = Loaded(
            lambda model: ShardHolder.open(model, self.spec, self.executor, max_batch, device=device)
        )
        self._sync_task = asyncio.get_event_loop().create_task(keep_in_sync(self.holders.loaded, sync_interval_s))

    async def _holder(self, model: ServingModel, min_seq: int | None) -> ShardHolder:
        holder = await self.holders.get(model)
        await holder.sync(min_seq)
        return holder

    async def load(self, model: ServingModel) -> int:
        return (await self._holder(model, None)).size()

    async def sync(self, model: ServingModel, seq: int) -> int:
        return await (await self.holders.get(model)).sync(seq)

    async def candidates(
        self, model: ServingModel, embeddings: np.ndarray, depth: int, min_seq: int, items_for: int
    ) -> Candidates:
        return await (await self._holder(model, min_seq)).candidates(embeddings, depth, items_for)

    async def relation_scores(self, model: ServingModel, job: RelationJob, min_seq: int) -> Relation:
        return await (await self._holder(model, min_seq)).relation_scores(job)

    async def describe(self, model: ServingModel, ids: list[int], min_seq: int) -> list[GalleryItem]:
        return await (await self._holder(model, min_seq)).describe(ids)

    async def info(self, model: ServingModel, min_seq: int) -> tuple[int, str]:
        holder = await self._holder(model, min_seq)
        return holder.size(), holder.index_kind
