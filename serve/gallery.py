"""The gallery as the ingress sees it: held in-process (one shard) or fanned out over GalleryShard deployments.

Both answer the same calls for a batch of queries, so the ingress's search pipeline does not know which it
talks to. ``seq`` is the newest journal entry the ingress knows of; every call carries it, and a holder that
is behind applies the journal up to it first (read-your-writes without a file read per request).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import numpy as np
from ray.serve.handle import DeploymentHandle

from sbir.inference.gallery import GalleryItem
from sbir.inference.search import merge_candidates, merge_relation
from serve.holder import Candidates, Relation, RelationJob, ShardHolder
from serve.model import ServingModel


class GalleryView(Protocol):
    """What the ingress asks of the gallery besides the search itself (which knows where the gallery lives)."""

    async def describe(self, ids: list[int], seq: int) -> list[GalleryItem]: ...

    async def info(self, seq: int) -> tuple[int, str]: ...

    async def sync(self, seq: int) -> None: ...


class LocalGallery:
    """The whole gallery in the ingress replica (``serve.gallery.shards`` = 1): the search runs on its compute
    thread against ``holder.shard`` directly, in one hop (``serve.retriever``)."""

    def __init__(self, holder: ShardHolder) -> None:
        self.holder = holder

    async def describe(self, ids: list[int], seq: int) -> list[GalleryItem]:
        await self.holder.sync(seq)
        return await self.holder.describe(ids)

    async def info(self, seq: int) -> tuple[int, str]:
        await self.holder.sync(seq)
        return self.holder.size(), self.holder.index_kind

    async def sync(self, seq: int) -> None:
        await self.holder.sync(seq)


class ShardedGallery:
    """N GalleryShard deployments: every call fans out and the answers merge (ids modulo N name the shard)."""

    def __init__(self, model: ServingModel, shards: list[DeploymentHandle]) -> None:
        self.model = model
        self.shards = shards

    async def candidates(self, embeddings: np.ndarray, depth: int, seq: int, items_for: int = 0) -> Candidates:
        """The merged first stage, with the items of each query's first ``items_for`` merged candidates."""
        calls = (s.candidates.remote(self.model, embeddings, depth, seq, items_for) for s in self.shards)
        parts: list[Candidates] = list(await asyncio.gather(*calls))
        scores, ids = merge_candidates([(p.scores, p.ids) for p in parts], depth)
        return Candidates(scores, ids, [item for p in parts for item in p.items])

    async def relation_scores(self, job: RelationJob, seq: int) -> Relation:
        count = len(self.shards)
        calls = []
        for index, shard in enumerate(self.shards):  # each shard sees only the candidates it holds
            ids = np.where((job.ids >= 0) & (job.ids % count == index), job.ids, -1)
            calls.append(shard.relation_scores.remote(self.model, RelationJob(job.queries, ids), seq))
        parts = await asyncio.gather(*calls)
        return Relation(merge_relation([p.scores for p in parts]), max(p.batch for p in parts))

    async def describe(self, ids: list[int], seq: int) -> list[GalleryItem]:
        count = len(self.shards)
        asked = [(i, [g for g in ids if g % count == i]) for i in range(count)]
        parts = await asyncio.gather(
            *(self.shards[i].describe.remote(self.model, mine, seq) for i, mine in asked if mine)
        )
        found = {item.id: item for part in parts for item in part}
        return [found[g] for g in ids if g in found]

    async def info(self, seq: int) -> tuple[int, str]:
        parts = await asyncio.gather(*(s.info.remote(self.model, seq) for s in self.shards))
        return sum(size for size, _ in parts), parts[0][1]

    async def sync(self, seq: int) -> None:
        await asyncio.gather(*(s.sync.remote(self.model, seq) for s in self.shards))

    async def load(self) -> int:
        return sum(await asyncio.gather(*(s.load.remote(self.model) for s in self.shards)))
