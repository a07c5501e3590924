"""One replica's hold on a gallery shard: the core's GalleryShard, its model work on one thread, its sync.

Used in-process by the ingress (one shard: the whole gallery) and by each GalleryShard deployment. Model
work (FAISS, the relation head) runs on the replica's compute thread, so the event loop keeps answering;
the holder applies the journal up to the sequence a request carries, and in the background every
``serve.gallery.sync_interval_s``, so no request reads a file while the holder is up to date.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from sbir.inference.encoder import Encoder
from sbir.inference.gallery import GalleryItem
from sbir.inference.saved_gallery import ShardSpec
from sbir.inference.shard import GalleryShard
from serve.batching import GreedyBatcher
from serve.model import ServingModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelationJob:
    """One batch of queries (their encoding arrays) and the candidate ids to re-score for each."""

    queries: dict[str, np.ndarray]
    ids: np.ndarray  # Q x K, -1 padded


@dataclass(frozen=True)
class Candidates:
    """A shard's first-stage answer: scores and ids (Q x depth, -1 padded) and the items asked for."""

    scores: np.ndarray
    ids: np.ndarray
    items: list[GalleryItem]


@dataclass(frozen=True)
class Relation:
    """Relation scores of a job (NaN for ids this holder does not hold), and how many queries shared its pass."""

    scores: np.ndarray
    batch: int


class ShardHolder:
    """A loaded shard of one model version, with cross-request batching of its relation scores."""

    def __init__(self, shard: GalleryShard, encoder: Encoder, executor: ThreadPoolExecutor, max_batch: int) -> None:
        self.shard = shard
        self.encoder = encoder
        self.executor = executor
        self.relations: GreedyBatcher[RelationJob, Relation] = GreedyBatcher(self._relate_batch, max_batch)

    @classmethod
    async def open(
        cls,
        model: ServingModel,
        spec: ShardSpec,
        executor: ThreadPoolExecutor,
        max_batch: int,
        *,
        device: str = "auto",
        encoder: Encoder | None = None,
    ) -> ShardHolder:
        """Load the shard (and the model, unless the replica already has it as ``encoder``) on the compute thread."""

        def load() -> ShardHolder:
            nonlocal encoder
            encoder = encoder or Encoder.from_checkpoint(model.checkpoint_dir, device=device)
            shard = GalleryShard(
                model.gallery_dir,
                encoder.model,
                method=encoder.family.name,
                encoding=encoder.family.encoding,
                checkpoint_sha256=model.weights_sha256,
                spec=spec,
            )
            return cls(shard, encoder, executor, max_batch)

        return await asyncio.get_running_loop().run_in_executor(executor, load)

    async def _compute(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def sync(self, upto: int | None) -> int:
        """Apply the journal up to ``upto`` (None: read its head); cheap when already there."""
        if upto is not None and upto <= self.shard.applied:
            return self.shard.applied
        return await self._compute(self.shard.sync, upto)

    async def candidates(self, embeddings: np.ndarray, depth: int, items_for: int = 0) -> Candidates:
        """The shard's ``depth`` best per query, with the items of each query's first ``items_for`` (what a
        one-stage search returns, so the ingress needs no second round trip for them)."""
        return await self._compute(self._candidates, embeddings, depth, items_for)

    def _candidates(self, embeddings: np.ndarray, depth: int, items_for: int) -> Candidates:
        scores, ids = self.shard.candidates(embeddings, depth)
        wanted = sorted({int(i) for i in ids[:, :items_for].ravel() if i >= 0})
        return Candidates(scores, ids, self.shard.describe(wanted) if wanted else [])

    async def relation_scores(self, job: RelationJob) -> Relation:
        """Re-score ``job``'s candidates, batched with the other jobs that wait meanwhile."""
        return await self.relations.submit(job)

    async def _relate_batch(self, jobs: list[RelationJob]) -> list[Relation]:
        return await self._compute(self._relate_together, jobs)

    def _relate_together(self, jobs: list[RelationJob]) -> list[Relation]:
        """Every job's pairs through the relation head in one pass (queries stacked, ids padded)."""
        family = self.encoder.family
        queries = family.encoding.from_arrays(
            {key: np.concatenate([job.queries[key] for job in jobs]) for key in jobs[0].queries}
        )
        width = max(job.ids.shape[1] for job in jobs)
        padded = [np.pad(job.ids, ((0, 0), (0, width - job.ids.shape[1])), constant_values=-1) for job in jobs]
        ids = np.concatenate(padded)
        scores = self.shard.relation_scores(queries, ids)
        out, start = [], 0
        for job in jobs:
            rows, columns = job.ids.shape
            out.append(Relation(scores[start : start + rows, :columns], len(ids)))
            start += rows
        return out

    async def describe(self, ids: list[int]) -> list[GalleryItem]:
        """The items of ``ids`` this holder has (on the compute thread, which alone changes the gallery)."""
        return await self._compute(self.shard.describe, ids)

    def size(self) -> int:
        return len(self.shard)

    @property
    def index_kind(self) -> str:
        return self.shard.gallery.index.kind


async def keep_in_sync(holders, interval_s: float) -> None:
    """Apply journal entries other replicas wrote, every ``interval_s``, to each loaded holder (background task)."""
    while True:
        await asyncio.sleep(interval_s)
        for holder in holders():
            try:
                await holder.sync(None)
            except Exception as exc:  # a half-copied journal on a shared filesystem: try again next time
                logger.warning("journal sync failed, retrying in %.1f s: %s", interval_s, exc)
