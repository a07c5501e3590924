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
from PIL import Image

from sbir.inference.encoder import Encoder
from sbir.inference.gallery import GalleryItem
from sbir.inference.saved_gallery import Journal, find_image
from sbir.inference.search import SearchPlan
from sbir.methods import MethodFamily
from serve.batching import GreedyBatcher
from serve.gallery import GalleryView
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
        seq, started = self.seq, time.perf_counter()
        encoding, embeddings = await self._compute(self._encode, [job.image for job in jobs], "sketch")
        encoded = time.perf_counter()
        by_depth: dict[int, list[int]] = {}
        for row, job in enumerate(jobs):
            by_depth.setdefault(job.plan.depth, []).append(row)
        width = max(by_depth)
        scores, ids = np.full((len(jobs), width), -np.inf, np.float32), np.full((len(jobs), width), -1, np.int64)
        for depth, rows in by_depth.items():  # one index search per depth: each job's candidates as if alone
            s, i = await self.gallery.candidates(embeddings[rows], depth, seq)
            scores[rows, :depth], ids[rows, :depth] = s, i
        searched = time.perf_counter()
        relation, rerank_batch = await self._rerank(jobs, encoding, ids, seq)
        reranked = time.perf_counter()
        finished = [
            job.plan.finish(
                ids[row : row + 1, : job.plan.depth], scores[row : row + 1, : job.plan.depth], relation[row]
            )
            for row, job in enumerate(jobs)
        ]
        wanted = sorted({int(i) for result in finished for i in result.ids[0] if i >= 0})
        items = {item.id: item for item in await self.gallery.describe(wanted, seq)}
        timings = {"encode": encoded - started, "search": searched - encoded}
        return [
            SearchAnswer(
                [(items[int(i)], float(s)) for i, s in zip(r.ids[0], r.scores[0], strict=True) if int(i) in items],
                timings | {"rerank": reranked - searched if job.plan.rerank else 0.0},
                len(jobs),
                rerank_batch if job.plan.rerank else 0,
            )
            for job, r in zip(jobs, finished, strict=True)
        ]

    async def _rerank(
        self, jobs: list[SearchJob], encoding, ids: np.ndarray, seq: int
    ) -> tuple[list[np.ndarray | None], int]:
        """The second stage of every re-ranking job of the batch in one relation pass."""
        rows = [row for row, job in enumerate(jobs) if job.plan.rerank]
        relation: list[np.ndarray | None] = [None] * len(jobs)
        if not rows:
            return relation, 0
        heads = [jobs[row].plan.rerank_ids(ids[row : row + 1])[0] for row in rows]
        width = max(len(head) for head in heads)
        candidates = np.full((len(rows), width), -1, np.int64)
        for n, head in enumerate(heads):
            candidates[n, : len(head)] = head
        queries = {key: value[rows] for key, value in encoding.to_arrays().items()}
        answer = await self.gallery.relation_scores(RelationJob(queries, candidates), seq)
        for n, row in enumerate(rows):
            relation[row] = answer.scores[n : n + 1, : len(heads[n])]
        return relation, answer.batch

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
