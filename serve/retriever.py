"""One model version at the ingress: the sketch encoder, the gallery view, and the batched search pipeline.

A search is a :class:`SearchJob`; jobs that arrive while the model is busy run together
(:class:`serve.batching.GreedyBatcher`): their sketches are encoded in one pass, the first stage asks the
gallery once per distinct depth, and the re-rank pairs of every job in the batch go through the relation
head together. Each job's steps and depths are the core's :class:`sbir.inference.search.SearchPlan`, so
a batched answer equals the unbatched one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from sbir.inference.encoder import Encoder
from sbir.inference.gallery import GalleryItem
from sbir.inference.saved_gallery import Journal, find_image
from sbir.inference.search import SearchPlan
from sbir.inference.shard import GalleryShard
from sbir.methods import MethodFamily
from serve.batching import GreedyBatcher
from serve.gallery import GalleryView, LocalGallery, ShardedGallery
from serve.holder import RelationJob
from serve.model import ServingModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchJob:
    image: np.ndarray  # H x W x 3 uint8 sketch
    plan: SearchPlan


@dataclass
class SearchAnswer:
    """One job's ranked items and scores, the batch's stage timings and batch sizes."""

    hits: list[tuple[GalleryItem, float]]
    timings: dict[str, float] = field(default_factory=dict)
    batch: int = 1  # searches encoded together
    rerank_batch: int = 0  # queries whose re-rank pairs went through the relation head together (0: none)


class BatchSearch:
    """The state of one batch of searches between its stages: which depths to ask the index for, the
    candidates, the re-rank pairs, the final rankings and the stage timings (pure bookkeeping)."""

    def __init__(self, jobs: list[SearchJob]) -> None:
        self.jobs = jobs
        self.images = [job.image for job in jobs]
        width = max(job.plan.depth for job in jobs)
        self.scores = np.full((len(jobs), width), -np.inf, np.float32)
        self.ids = np.full((len(jobs), width), -1, np.int64)
        self.relation: list[np.ndarray | None] = [None] * len(jobs)
        self.rerank_batch = 0
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()
        self._finished: list | None = None

    def mark(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage], self._last = now - self._last, now

    def depths(self) -> dict[int, list[int]]:
        """Rows by plan depth: one index search per depth, so each job gets its candidates as if alone."""
        groups: dict[int, list[int]] = {}
        for row, job in enumerate(self.jobs):
            groups.setdefault(job.plan.depth, []).append(row)
        return groups

    def add_candidates(self, rows: list[int], depth: int, scores: np.ndarray, ids: np.ndarray) -> None:
        self.scores[rows, :depth], self.ids[rows, :depth] = scores, ids

    def rerank_candidates(self) -> tuple[list[int], np.ndarray]:
        """The rows that re-rank, and their candidates to re-score (-1 padded to the widest)."""
        rows = [row for row, job in enumerate(self.jobs) if job.plan.rerank]
        heads = [self.jobs[row].plan.rerank_ids(self.ids[row : row + 1])[0] for row in rows]
        candidates = np.full((len(rows), max((len(h) for h in heads), default=0)), -1, np.int64)
        for n, head in enumerate(heads):
            candidates[n, : len(head)] = head
        return rows, candidates

    def add_relation(self, rows: list[int], scores: np.ndarray, batch: int) -> None:
        for n, row in enumerate(rows):
            width = len(self.jobs[row].plan.rerank_ids(self.ids[row : row + 1])[0])
            self.relation[row] = scores[n : n + 1, :width]
        self.rerank_batch = batch

    def _results(self) -> list:
        if self._finished is None:
            self._finished = [
                job.plan.finish(
                    self.ids[row : row + 1, : job.plan.depth],
                    self.scores[row : row + 1, : job.plan.depth],
                    self.relation[row],
                )
                for row, job in enumerate(self.jobs)
            ]
        return self._finished

    def result_ids(self) -> list[int]:
        return sorted({int(i) for result in self._results() for i in result.ids[0] if i >= 0})

    def answers(self, items: list[GalleryItem]) -> list[SearchAnswer]:
        by_id = {item.id: item for item in items}
        out = []
        for job, result in zip(self.jobs, self._results(), strict=True):
            hits = [
                (by_id[int(i)], float(s))
                for i, s in zip(result.ids[0], result.scores[0], strict=True)
                if int(i) in by_id
            ]
            timings = self.timings | {"rerank": self.timings.get("rerank", 0.0) if job.plan.rerank else 0.0}
            out.append(SearchAnswer(hits, timings, len(self.jobs), self.rerank_batch if job.plan.rerank else 0))
        return out


class Retriever:
    """Search, add, remove and describe for one loaded version."""

    def __init__(
        self,
        model: ServingModel,
        encoder: Encoder,
        gallery: GalleryView,
        executor: ThreadPoolExecutor,
        max_batch: int,
        wait_s: float,
    ) -> None:
        self.model = model
        self.encoder = encoder
        self.family: MethodFamily = encoder.family
        self.gallery = gallery
        self.executor = executor
        self.journal = Journal(model.gallery_dir)
        self.seq = 0  # the newest journal entry this ingress knows of
        self.searches: GreedyBatcher[SearchJob, SearchAnswer] = GreedyBatcher(self._search_batch, max_batch, wait_s)

    async def _compute(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # ----------------------------------------------------------------- search
    def plan(self, k: int, mode: str, rerank_k: int) -> SearchPlan:
        return SearchPlan.for_mode(k, mode, self.family.rerank_mode, rerank_k, size=2**62)  # the index caps depth

    async def search(self, job: SearchJob) -> SearchAnswer:
        return await self.searches.submit(job)

    def _encode(self, images: list[np.ndarray], modality: str):
        encoding = self.encoder.encode_images([Image.fromarray(image) for image in images], modality)
        return encoding, encoding.retrieval_embeddings().float().cpu().numpy()

    async def _search_batch(self, jobs: list[SearchJob]) -> list[SearchAnswer]:
        gallery = self.gallery
        if isinstance(gallery, LocalGallery):  # every stage on the compute thread, in one hop
            return await self._compute(self._search_here, jobs, gallery.holder.shard)
        if isinstance(gallery, ShardedGallery):
            return await self._search_over_shards(jobs, gallery)
        raise TypeError(f"no search over a {type(gallery).__name__}")

    def _search_here(self, jobs: list[SearchJob], shard: GalleryShard) -> list[SearchAnswer]:
        """The batch against the gallery this replica holds (runs on the compute thread)."""
        batch = BatchSearch(jobs)
        shard.sync(self.seq)
        encoding, embeddings = self._encode(batch.images, "sketch")
        batch.mark("encode")
        for depth, rows in batch.depths().items():
            batch.add_candidates(rows, depth, *shard.candidates(embeddings[rows], depth))
        batch.mark("search")
        rows, candidates = batch.rerank_candidates()
        if rows:
            batch.add_relation(rows, shard.relation_scores(encoding.select(torch.tensor(rows)), candidates), len(rows))
        batch.mark("rerank")
        return batch.answers(shard.describe(batch.result_ids()))

    async def _search_over_shards(self, jobs: list[SearchJob], gallery: ShardedGallery) -> list[SearchAnswer]:
        """The batch fanned out to the shard deployments (the encoder stays here)."""
        batch, seq = BatchSearch(jobs), self.seq
        encoding, embeddings = await self._compute(self._encode, batch.images, "sketch")
        batch.mark("encode")
        items: list[GalleryItem] = []
        for depth, rows in batch.depths().items():
            one_stage = not any(jobs[row].plan.rerank for row in rows)  # their top k are the answer: items now
            found = await gallery.candidates(embeddings[rows], depth, seq, depth if one_stage else 0)
            batch.add_candidates(rows, depth, found.scores, found.ids)
            items += found.items
        batch.mark("search")
        rows, candidates = batch.rerank_candidates()
        if rows:
            queries = {key: value[rows] for key, value in encoding.to_arrays().items()}
            answer = await gallery.relation_scores(RelationJob(queries, candidates), seq)
            batch.add_relation(rows, answer.scores, answer.batch)
        batch.mark("rerank")
        known = {item.id for item in items}
        missing = [i for i in batch.result_ids() if i not in known]
        return batch.answers(items + (await gallery.describe(missing, seq) if missing else []))

    # ----------------------------------------------------------------- the gallery
    async def encode_photos(self, images: list[np.ndarray]) -> dict[str, np.ndarray]:
        encoding, _ = await self._compute(self._encode, images, "photo")
        return encoding.to_arrays()

    async def add(
        self, photos: list[tuple[str, str | None, bytes]], arrays: dict[str, np.ndarray]
    ) -> list[GalleryItem]:
        """Journal new photos, then bring the gallery up to that entry before answering."""
        items = await asyncio.to_thread(self.journal.add, photos, arrays)
        await self._synced(await asyncio.to_thread(lambda: self.journal.head().seq))
        return items

    async def remove(self, gallery_id: int) -> bool:
        """Journal the removal of an item; False when the gallery has no such item."""
        if not await self.gallery.describe([gallery_id], self.seq):
            return False
        await self._synced(await asyncio.to_thread(self.journal.remove, [gallery_id]))
        return True

    async def _synced(self, seq: int) -> None:
        self.seq = max(self.seq, seq)
        await self.gallery.sync(self.seq)

    async def follow_journal(self) -> None:
        """Learn the journal's head (other replicas' updates): the background poll calls this."""
        self.seq = max(self.seq, await asyncio.to_thread(lambda: self.journal.head().seq))

    async def explain(self, sketch: np.ndarray, gallery_id: int, arrays: bool) -> dict | None:
        """Attention maps, token correspondences and patch synthesis of the sketch and a stored photo, as PNG
        bytes (and the arrays, if asked); None when the item has no stored photo."""
        return await self._compute(self._explain, sketch, gallery_id, arrays)

    def _explain(self, sketch: np.ndarray, gallery_id: int, arrays: bool) -> dict | None:
        from sbir.explain import render_explanation_pngs

        path = find_image(self.model.gallery_dir, gallery_id)
        if path is None:
            return None
        transform, device = self.encoder.transform, self.encoder.device
        sketch_t = transform(Image.fromarray(sketch), "sketch").to(device)
        with Image.open(path) as photo:
            photo_t = transform(photo.convert("RGB"), "photo").to(device)
        explanation = self.family.explain(self.encoder.model, sketch_t, photo_t)
        return render_explanation_pngs(explanation, arrays=arrays)

    async def describe(self, ids: list[int]) -> list[GalleryItem]:
        return await self.gallery.describe(ids, self.seq)

    async def info(self) -> tuple[int, str]:
        return await self.gallery.info(self.seq)
