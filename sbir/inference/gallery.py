"""Galleries: photos encoded once, then scored in full (evaluation) or searched top-k (serving).

Two implementations behind one interface (docs/index.md, docs/zse_sbir.md#retrieval-modes):

* :class:`Gallery` — a bi-encoder gallery (CLIP-AT, and ZSE-SBIR's ``ret``): L2-normalised embeddings
  compared by cosine similarity, held in a FAISS :class:`EmbeddingIndex` for search.
* :class:`RelationGallery` — ZSE-SBIR with the photos' self-attention tokens cached, adding ``rn``
  (exhaustive relation scores) and ``rn_rerank`` (top-K by ``ret``, then relation scores for those K;
  the K come first in descending relation score, the rest follow in ``ret`` order).

Every gallery encodes and scores where its model is (its device): photos and queries are moved there,
score matrices stay there until the caller asks for them. Score matrices are rank-faithful (higher =
better): under ``rn_rerank`` a re-ranked photo scores ``RERANK_OFFSET + r``, above every cosine.

Searches run through :class:`sbir.inference.search.SearchPlan`; saving and loading a gallery folder is
``sbir.inference.saved_gallery``'s job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from sbir.config import IndexConfig
from sbir.errors import SbirError
from sbir.inference.index import EmbeddingIndex
from sbir.inference.search import RERANK_OFFSET, SearchPlan, SearchResult, stable_topk
from sbir.models.encoding import Encoding

logger = logging.getLogger(__name__)

PROGRESS_EVERY_S = 10.0


class PairProgress:
    """A log line at most every PROGRESS_EVERY_S while relation pairs are scored (pairs done, time left), so a
    long evaluation is never silent; short work logs nothing."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.started = self.last = time.perf_counter()

    def done(self, pairs: int) -> None:
        now = time.perf_counter()
        if now - self.last < PROGRESS_EVERY_S or pairs >= self.total:
            return
        self.last = now
        elapsed = now - self.started
        left = elapsed / pairs * (self.total - pairs)
        logger.info(
            "relation pairs %s/%s (%.0f%%), %.0f s elapsed, ~%.0f s left",
            f"{pairs:,}",
            f"{self.total:,}",
            100 * pairs / self.total,
            elapsed,
            left,
        )


class GalleryError(SbirError, ValueError):
    """A gallery is inconsistent, was asked for something it cannot do, or a saved one is corrupt."""


@dataclass(frozen=True)
class GalleryItem:
    """One gallery photo: its id (what search returns), where it came from, and its class if known."""

    id: int
    path: str
    class_name: str | None = None
    class_id: int = -1  # -1 = no class (a user's own photo collection)
    pair_id: str | None = None  # fine-grained key: the photo's own id


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class Gallery:
    """A bi-encoder gallery: normalised embeddings scored by cosine similarity, searched with FAISS."""

    kind: ClassVar[str] = "embedding"
    modes: ClassVar[tuple[str, ...]] = ("ret",)
    rerank_mode: ClassVar[str | None] = None  # the two-stage mode (index candidates re-scored), if any
    exhaustive_mode: ClassVar[str | None] = None  # the mode that scores every (query, photo) pair, if any

    def __init__(
        self,
        model: nn.Module,
        photos: Encoding,
        items: Sequence[GalleryItem],
        index_config: IndexConfig | None = None,
        *,
        index: EmbeddingIndex | None = None,
    ) -> None:
        if len(items) != len(photos):
            raise GalleryError(f"{len(items)} gallery items for {len(photos)} encoded photos")
        self.model = model
        self.device = model_device(model)
        self.photos = photos.to(self.device)
        self.items = list(items)
        self.ids = np.asarray([item.id for item in self.items], dtype=np.int64)
        _check_ids(self.ids)
        self._order: np.ndarray | None = None  # argsort of ids, for rows_of; dropped on every change
        self.index_config = index_config or IndexConfig()
        self._index = index  # built on first use: full score matrices (evaluation) never need it
        if index is not None and not np.array_equal(index.ids(), np.sort(self.ids)):
            foreign = np.setdiff1d(index.ids(), self.ids)[:10].tolist()
            raise GalleryError(
                f"the index holds {len(index)} ids for {len(self.ids)} gallery items; ids not in the gallery: {foreign}"
            )

    # ----------------------------------------------------------------- basics
    def __len__(self) -> int:
        return len(self.items)

    @property
    def class_ids(self) -> np.ndarray:
        return np.asarray([item.class_id for item in self.items], dtype=np.int64)

    @property
    def embeddings(self) -> torch.Tensor:
        """The photos' normalised retrieval embeddings (computed on call: serving never needs them all)."""
        return self.photos.retrieval_embeddings()

    def rows_of(self, ids: np.ndarray, *, missing_ok: bool = False) -> np.ndarray:
        """Gallery rows of ids (-1 stays -1); an id that is not in the gallery is an error, or -1 with
        ``missing_ok`` (a shard asked about ids another shard holds)."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(self.ids):
            return np.full(ids.shape, -1)
        if self._order is None:
            self._order = np.argsort(self.ids, kind="stable")
        sorted_ids = self.ids[self._order]
        pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
        found = sorted_ids[pos] == ids
        unknown = ~found & (ids >= 0)
        if np.any(unknown) and not missing_ok:
            raise GalleryError(f"ids not in the gallery: {np.unique(ids[unknown])[:10].tolist()}")
        return np.where(found & (ids >= 0), self._order[pos], -1)

    def item(self, gallery_id: int) -> GalleryItem:
        return self.items[int(self.rows_of(np.asarray([gallery_id]))[0])]

    def check_mode(self, mode: str) -> None:
        if mode not in self.modes:
            raise GalleryError(f"a {self.kind} gallery scores {', '.join(self.modes)}; got mode {mode!r}")

    def _queries(self, queries: Encoding) -> Encoding:
        return queries.to(self.device)

    def exhaustive_seconds(self, queries: Encoding, mode: str) -> float | None:
        """For a mode that scores every (query, photo) pair, an estimate of its time; None for indexed modes."""
        return None

    def _ret_scores(self, queries: Encoding) -> torch.Tensor:
        return self._queries(queries).retrieval_embeddings() @ self.photos.retrieval_embeddings().T

    @property
    def index(self) -> EmbeddingIndex:
        """The FAISS index over the gallery's embeddings and ids (``index_config`` decides its kind)."""
        if self._index is None:
            self._index = self._new_index()
        return self._index

    def _new_index(self) -> EmbeddingIndex:
        embeddings = self.photos.retrieval_embeddings()
        self.index_config = cfg = self.index_config.for_gallery(len(self), int(embeddings.shape[1]))
        index = EmbeddingIndex(
            int(embeddings.shape[1]),
            cfg.kind,
            nlist=cfg.nlist,
            nprobe=cfg.nprobe,
            hnsw_m=cfg.hnsw_m,
            ef_search=cfg.ef_search,
        )
        if len(self.ids):
            index.add(embeddings.detach().cpu().numpy(), self.ids)
        return index

    # ----------------------------------------------------------------- evaluation: full score matrices
    @torch.no_grad()
    def score_matrix(
        self,
        queries: Encoding,
        mode: str = "ret",
        *,
        rerank_k: int = 200,
        pair_batch: int = 1024,
        precision: str = "fp32",
    ) -> torch.Tensor:
        """Q x G rank-faithful scores for ``mode``, columns in gallery order, on the gallery's device."""
        self.check_mode(mode)
        return self._ret_scores(queries)

    # ----------------------------------------------------------------- serving: top-k search
    @torch.no_grad()
    def search(
        self, queries: Encoding, k: int, mode: str = "ret", *, rerank_k: int = 200, pair_batch: int = 1024
    ) -> SearchResult:
        """Top-k gallery ids per query: index candidates (exact for ``flat``), re-scored by the second stage
        in the re-rank mode, through the one :class:`SearchPlan` the endpoint uses too."""
        self.check_mode(mode)
        queries = self._queries(queries)
        plan = SearchPlan.for_mode(k, mode, self.rerank_mode, rerank_k, len(self))
        if mode == self.exhaustive_mode:
            return self._exhaustive_search(queries, plan.depth, mode, pair_batch)
        cand_scores, cand_ids = self.candidates(queries.retrieval_embeddings().detach().cpu().numpy(), plan.depth)
        relation = self.relation_scores(queries, plan.rerank_ids(cand_ids), pair_batch) if plan.rerank else None
        return plan.finish(cand_ids, cand_scores, relation)

    def _exhaustive_search(self, queries: Encoding, k: int, mode: str, pair_batch: int) -> SearchResult:
        raise GalleryError(f"a {self.kind} gallery has no exhaustive mode")

    def relation_scores(
        self, queries: Encoding, ids: np.ndarray, pair_batch: int = 1024, *, missing_ok: bool = False
    ) -> np.ndarray:
        """The second stage's scores of each query with its candidate ids (only galleries with a re-rank mode)."""
        raise GalleryError(f"a {self.kind} gallery has no second stage to re-score candidates")

    def candidates(self, embeddings: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """The first stage: the ``depth`` best ids per query by retrieval embedding (Q x D float32), with their
        cosine scores, best first (-1 where the gallery has fewer)."""
        scores, ids = self.index.search(np.ascontiguousarray(embeddings, dtype=np.float32), depth)
        return np.asarray(scores, dtype=np.float32), ids

    # ----------------------------------------------------------------- updates
    def add(self, photos: Encoding, items: Sequence[GalleryItem]) -> None:
        """Append photos; their ids must be new. Nothing changes if any check fails."""
        if len(items) != len(photos):
            raise GalleryError(f"{len(items)} gallery items for {len(photos)} encoded photos")
        new_ids = np.asarray([item.id for item in items], dtype=np.int64)
        _check_ids(np.concatenate([self.ids, new_ids]))
        photos = photos.to(self.device)
        self.index.add(photos.retrieval_embeddings().detach().cpu().numpy(), new_ids)
        self.photos = type(self.photos).cat([self.photos, photos])
        self.items += list(items)
        self.ids = np.concatenate([self.ids, new_ids])
        self._order = None

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        """Remove photos by id and return how many went; an unknown id is an error and removes nothing."""
        rows = self.rows_of(np.unique(np.asarray(ids, dtype=np.int64)))
        keep = np.ones(len(self), bool)
        keep[rows] = False
        self.index.remove(self.ids[rows])
        kept = torch.from_numpy(np.flatnonzero(keep)).to(self.device)
        self.photos = self.photos.select(kept)
        self.items = [item for item, k in zip(self.items, keep, strict=True) if k]
        self.ids = self.ids[keep]
        self._order = None
        return len(rows)


class RelationGallery(Gallery):
    """ZSE-SBIR: the bi-encoder gallery of [Ret] embeddings plus cached photo tokens for relation scores."""

    kind: ClassVar[str] = "relation"
    modes: ClassVar[tuple[str, ...]] = ("ret", "rn", "rn_rerank")
    rerank_mode: ClassVar[str | None] = "rn_rerank"
    exhaustive_mode: ClassVar[str | None] = "rn"

    @torch.no_grad()
    def score_matrix(
        self,
        queries: Encoding,
        mode: str = "ret",
        *,
        rerank_k: int = 200,
        pair_batch: int = 1024,
        precision: str = "fp32",
    ) -> torch.Tensor:
        self.check_mode(mode)
        queries = self._queries(queries)
        if mode == self.exhaustive_mode:
            return self.model.score_matrix(queries, self.photos, pair_batch=pair_batch, precision=precision)
        ret = self._ret_scores(queries)
        if mode != self.rerank_mode:
            return ret
        candidates = stable_topk(ret, min(rerank_k, len(self)))
        relation = self._relate_candidates(queries, candidates, pair_batch, precision)
        out = ret.clone()
        out.scatter_(1, candidates, relation + RERANK_OFFSET)
        return out

    @torch.no_grad()
    def exhaustive_seconds(self, queries: Encoding, mode: str, probe_pairs: int = 64) -> float | None:
        """Exhaustive ``rn`` time, extrapolated from timing the relation head on a few real pairs."""
        if mode != self.exhaustive_mode or len(self) == 0 or len(queries) == 0:
            return None
        queries = self._queries(queries)
        probe = torch.arange(min(probe_pairs, len(self)), device=self.device).unsqueeze(0)
        self._relate_candidates(
            queries.select(torch.zeros(1, dtype=torch.long, device=self.device)), probe[:, :2], 2, "fp32"
        )
        started = time.perf_counter()
        self._relate_candidates(
            queries.select(torch.zeros(1, dtype=torch.long, device=self.device)), probe, 1024, "fp32"
        )
        per_pair = (time.perf_counter() - started) / probe.shape[1]
        return per_pair * len(queries) * len(self)

    def _relate_candidates(
        self, queries: Encoding, candidates: torch.Tensor, pair_batch: int, precision: str
    ) -> torch.Tensor:
        """Relation scores of each query against its own K candidate photos (Q x K, on the device)."""
        q, k = candidates.shape
        flat_query = torch.arange(q, device=self.device).repeat_interleave(k)
        return self._relate_pairs(queries, flat_query, candidates.reshape(-1), pair_batch, precision).view(q, k)

    def _relate_pairs(
        self, queries: Encoding, query_rows: torch.Tensor, photo_rows: torch.Tensor, pair_batch: int, precision: str
    ) -> torch.Tensor:
        """Relation scores of (query row, photo row) pairs, ``pair_batch`` pairs through the head at a time."""
        scores = torch.empty(len(query_rows), device=self.device)
        progress = PairProgress(len(query_rows))
        for start in range(0, len(query_rows), pair_batch):
            stop = min(len(query_rows), start + pair_batch)
            scores[start:stop] = self.model.pair_scores(
                queries.select(query_rows[start:stop]), self.photos.select(photo_rows[start:stop]), precision
            )
            progress.done(stop)
        return scores

    def _exhaustive_search(self, queries: Encoding, k: int, mode: str, pair_batch: int) -> SearchResult:
        scores = self.score_matrix(queries, mode, pair_batch=pair_batch)
        rows = stable_topk(scores, k)
        return self._pack(rows, scores.gather(1, rows))

    @torch.no_grad()
    def relation_scores(
        self, queries: Encoding, ids: np.ndarray, pair_batch: int = 1024, *, missing_ok: bool = False
    ) -> np.ndarray:
        """Relation score r of each query with each of its candidate ids (Q x K; -1 ids, and with ``missing_ok``
        ids this gallery does not hold, score NaN). Only the real pairs go through the head, so rows padded
        with -1 (queries of several requests batched together) cost nothing."""
        rows = self.rows_of(ids, missing_ok=missing_ok)
        query_rows, columns = np.nonzero(rows >= 0)
        out = np.full(rows.shape, np.nan, dtype=np.float32)
        if len(query_rows):
            scores = self._relate_pairs(
                self._queries(queries),
                torch.from_numpy(query_rows).to(self.device),
                torch.from_numpy(rows[query_rows, columns]).to(self.device),
                pair_batch,
                "fp32",
            )
            out[query_rows, columns] = scores.float().cpu().numpy()
        return out

    def _pack(self, rows: torch.Tensor, scores: torch.Tensor) -> SearchResult:
        rows_np = rows.cpu().numpy()
        ids = np.where(rows_np >= 0, self.ids[np.clip(rows_np, 0, None)], -1)
        return SearchResult(ids=ids, scores=scores.float().cpu().numpy())


GALLERY_KINDS: dict[str, type[Gallery]] = {cls.kind: cls for cls in (Gallery, RelationGallery)}


def _check_ids(ids: np.ndarray) -> None:
    if np.any(ids < 0):
        raise GalleryError("gallery ids must be non-negative")
    uniq, counts = np.unique(ids, return_counts=True)
    if np.any(counts > 1):
        raise GalleryError(f"gallery ids must be unique; repeated: {uniq[counts > 1][:10].tolist()}")


def items_from_rows(rows: Mapping[str, np.ndarray], class_names: Mapping[int, str] | None = None) -> list[GalleryItem]:
    """Gallery items from column arrays (``path``, optional ``class_id``, ``pair_id``); ids are the row numbers."""
    paths = rows["path"]
    class_ids = rows.get("class_id")
    pair_ids = rows.get("pair_id")
    names = class_names or {}
    items = []
    for i, path in enumerate(paths):
        cid = int(class_ids[i]) if class_ids is not None else -1
        pair = str(pair_ids[i]) if pair_ids is not None and pair_ids[i] else None
        items.append(GalleryItem(i, str(path), names.get(cid), cid, pair))
    return items
