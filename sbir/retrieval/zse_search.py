"""ZSE-SBIR retrieval modes over a cached photo gallery (method-zse-sbir.md §9.3).

* ``ret``: cosine similarity of L2-normalised pre-CA [Ret] tokens (indexable).
* ``rn``: exhaustive relation scores over every sketch–photo pair, photo tokens encoded once.
* ``rn_rerank``: top-K by ``ret``, then relation scores for those K from the cached tokens.
  Final ranking: the K in descending r, then the rest in ``ret`` order.

Score matrices returned here are rank-faithful (higher = better) so every metric reads them directly:
under ``rn_rerank`` a re-ranked item scores ``RERANK_OFFSET + r``, which lies above every cosine.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from sbir.models.zse import ZSESBIR, ZSEEncoding

logger = logging.getLogger(__name__)

SearchMode = Literal["ret", "rn", "rn_rerank"]
SEARCH_MODES: tuple[str, ...] = ("ret", "rn", "rn_rerank")
RERANK_OFFSET = 2.0  # cosine scores lie in [-1, 1]; relation scores in (0, 1) are shifted above them


@dataclass
class SearchResult:
    ids: np.ndarray  # Q x k gallery ids, best first (-1 = no item)
    scores: np.ndarray  # Q x k rank-faithful scores


class ZSEGallery:
    """A photo gallery encoded once: [Ret] embeddings for the index and tokens for relation scoring."""

    def __init__(self, model: ZSESBIR, photos: ZSEEncoding, ids: Sequence[int] | np.ndarray | None = None) -> None:
        self.model = model
        self.photos = photos
        self.ids = np.arange(len(photos), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        if len(self.ids) != len(photos):
            raise ValueError(f"{len(self.ids)} ids for {len(photos)} photos")
        if len(np.unique(self.ids)) != len(self.ids):
            raise ValueError("gallery ids must be unique")
        self.embeddings = ZSESBIR.ret_embedding(photos)

    def __len__(self) -> int:
        return len(self.photos)

    # ----------------------------------------------------------------- full score matrices (evaluation)
    def score_matrix(
        self,
        sketches: ZSEEncoding,
        mode: SearchMode,
        rerank_k: int = 200,
        pair_batch: int = 1024,
        precision: str = "fp32",
    ) -> torch.Tensor:
        """Q x G rank-faithful scores for `mode` (columns in gallery order)."""
        if mode not in SEARCH_MODES:
            raise ValueError(f"unknown retrieval mode {mode!r}; choose one of {', '.join(SEARCH_MODES)}")
        ret = ZSESBIR.ret_embedding(sketches) @ self.embeddings.T
        if mode == "ret":
            return ret
        if mode == "rn":
            return self.model.score_matrix(sketches, self.photos, pair_batch=pair_batch, precision=precision)
        k = min(rerank_k, len(self))
        candidates = stable_topk(ret, k)
        relation = self._relate_candidates(sketches, candidates, pair_batch, precision)
        out = ret.clone()
        out.scatter_(1, candidates, relation + RERANK_OFFSET)
        return out

    def _relate_candidates(
        self, sketches: ZSEEncoding, candidates: torch.Tensor, pair_batch: int, precision: str
    ) -> torch.Tensor:
        """Relation scores for each sketch against its own K candidate photos (Q x K)."""
        q, k = candidates.shape
        flat_sketch = torch.arange(q).repeat_interleave(k)
        flat_photo = candidates.reshape(-1)
        scores = torch.empty(q * k)
        for start in range(0, q * k, pair_batch):
            stop = min(q * k, start + pair_batch)
            scores[start:stop] = self.model.pair_scores(
                sketches.select(flat_sketch[start:stop]), self.photos.select(flat_photo[start:stop]), precision
            ).cpu()
        return scores.view(q, k)

    # ----------------------------------------------------------------- top-k search (serving)
    def search(
        self,
        sketches: ZSEEncoding,
        k: int,
        mode: SearchMode = "rn_rerank",
        rerank_k: int = 200,
        pair_batch: int = 1024,
        index: object | None = None,
    ) -> SearchResult:
        """Top-k gallery ids per sketch. With an `index` (EmbeddingIndex over this gallery's ids and
        embeddings) the `ret` stage is an ANN search; otherwise it is exact."""
        if mode == "rn":
            scores = self.score_matrix(sketches, "rn", pair_batch=pair_batch)
            return self._top(scores, k)
        depth = max(k, rerank_k) if mode == "rn_rerank" else k
        depth = min(depth, len(self))
        if index is None:
            ret = ZSESBIR.ret_embedding(sketches) @ self.embeddings.T
            cand = stable_topk(ret, depth)
            cand_scores = ret.gather(1, cand)
        else:
            s, ids = index.search(ZSESBIR.ret_embedding(sketches).numpy(), depth)  # type: ignore[attr-defined]
            cand = torch.from_numpy(self._rows_of(ids))
            cand_scores = torch.from_numpy(np.asarray(s, dtype=np.float32))
        if mode == "ret":
            return self._pack(cand[:, :k], cand_scores[:, :k])
        kk = min(rerank_k, cand.shape[1])
        rel = self._relate_candidates(sketches, cand[:, :kk].clamp(min=0), pair_batch, "fp32")
        rel = torch.where(cand[:, :kk] >= 0, rel + RERANK_OFFSET, torch.full_like(rel, -torch.inf))
        merged_scores = torch.cat([rel, cand_scores[:, kk:]], dim=1)
        order = stable_topk(merged_scores, merged_scores.shape[1])
        cand = cand.gather(1, order)
        merged_scores = merged_scores.gather(1, order)
        return self._pack(cand[:, :k], merged_scores[:, :k])

    def _rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Gallery rows of index ids (-1 stays -1); an id outside the gallery is an error."""
        order = np.argsort(self.ids)
        sorted_ids = self.ids[order]
        pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
        found = sorted_ids[pos] == ids
        if np.any(~found & (ids >= 0)):
            raise KeyError(
                f"index returned ids not in the gallery: {np.unique(ids[~found & (ids >= 0)])[:10].tolist()}"
            )
        return np.where(ids >= 0, order[pos], -1)

    def _top(self, scores: torch.Tensor, k: int) -> SearchResult:
        idx = stable_topk(scores, min(k, scores.shape[1]))
        return self._pack(idx, scores.gather(1, idx))

    def _pack(self, rows: torch.Tensor, scores: torch.Tensor) -> SearchResult:
        rows_np = rows.numpy()
        ids = np.where(rows_np >= 0, self.ids[np.clip(rows_np, 0, None)], -1)
        return SearchResult(ids=ids, scores=scores.float().numpy())


def stable_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k best per row, ties broken by column index (deterministic, unlike topk)."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]


def encode_in_batches(model: ZSESBIR, images: torch.Tensor, modality: str, batch_size: int = 64) -> ZSEEncoding:
    """Encode a stack of images in bounded batches (no gradients)."""
    parts = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            parts.append(model.encode(images[start : start + batch_size], modality))
    return ZSEEncoding.cat(parts)
