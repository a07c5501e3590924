"""The two-stage search, owned here once: candidates from an index, optionally re-scored, then merged.

A search of ``k`` results asks the first stage (a FAISS index of retrieval embeddings) for ``depth``
candidates; a method with a re-rank mode (ZSE-SBIR's ``rn_rerank``) re-scores the first ``rerank``
of them with its second stage, and :meth:`SearchPlan.finish` merges both into the final top-k. The
saved gallery (``sbir.inference.gallery``) and the endpoint (``serve``) both run a search through a
:class:`SearchPlan`, so they rank alike wherever the stages run.

Scores are rank-faithful (higher = better): a re-scored candidate scores ``RERANK_OFFSET + r``, above
every cosine, so one descending order covers both stages.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sbir.errors import SbirError

RERANK_OFFSET = 2.0  # cosine scores lie in [-1, 1]; relation scores in (0, 1) are shifted above them


class SearchError(SbirError, ValueError):
    """A search was asked for something it cannot do (k below 1, a mode the gallery does not score)."""


@dataclass
class SearchResult:
    """Top-k gallery ids per query, best first (-1 = no item), with their rank-faithful scores."""

    ids: np.ndarray  # Q x k int64
    scores: np.ndarray  # Q x k float32


def stable_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k best per row, ties broken by column index (deterministic, unlike topk)."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]


def merge_reranked(cand_ids: np.ndarray, cand_scores: np.ndarray, relation: np.ndarray, k: int) -> SearchResult:
    """The re-rank ranking of index candidates: the first K (those with relation scores, Q x K) in
    descending relation score, scoring ``RERANK_OFFSET + r``, then the rest in their first-stage order.

    Missing candidates (id -1, relation NaN) go last.
    """
    kk = relation.shape[1]
    head = np.where(cand_ids[:, :kk] >= 0, relation + RERANK_OFFSET, -np.inf).astype(np.float32)
    merged = torch.from_numpy(np.concatenate([head, cand_scores[:, kk:].astype(np.float32)], axis=1))
    order = stable_topk(merged, merged.shape[1]).numpy()
    ids = np.take_along_axis(cand_ids, order, axis=1)[:, :k]
    return SearchResult(ids=ids, scores=np.take_along_axis(merged.numpy(), order, axis=1)[:, :k])


def merge_candidates(parts: list[tuple[np.ndarray, np.ndarray]], depth: int) -> tuple[np.ndarray, np.ndarray]:
    """The first stage over shards: each shard's (scores, ids) candidates (Q x n_i, -1 padded) merged into the
    ``depth`` best per query, by score descending then id ascending (the rule every index search follows),
    so exact shards merge into exactly the unsharded ranking."""
    scores = np.concatenate([s for s, _ in parts], axis=1).astype(np.float32)
    ids = np.concatenate([i for _, i in parts], axis=1).astype(np.int64)
    scores = np.where(ids < 0, np.float32(-np.inf), scores)
    order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -scores), axis=-1)[:, :depth]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def merge_relation(parts: list[np.ndarray]) -> np.ndarray:
    """The second stage over shards: each shard scored the candidates it holds (NaN elsewhere); one Q x K."""
    out = np.full(parts[0].shape, np.nan, dtype=np.float32)
    for part in parts:
        out = np.where(np.isnan(out), part, out)
    return out


@dataclass(frozen=True)
class SearchPlan:
    """How deep one search reaches: ``depth`` index candidates, the first ``rerank`` of them re-scored."""

    k: int
    depth: int  # candidates asked of the index
    rerank: int  # how many of the candidates the second stage re-scores (0: a one-stage search)

    @classmethod
    def for_mode(cls, k: int, mode: str, rerank_mode: str | None, rerank_k: int, size: int) -> SearchPlan:
        """The plan of a search of ``k`` results in ``mode`` over ``size`` items (``rerank_mode``: the
        method's two-stage mode, if it has one)."""
        if k < 1:
            raise SearchError(f"k must be at least 1, got {k}")
        if rerank_mode is not None and mode == rerank_mode:
            if rerank_k < 1:
                raise SearchError(f"rerank_k must be at least 1, got {rerank_k}")
            return cls(k, min(max(k, rerank_k), size), min(rerank_k, size))
        return cls(k, min(k, size), 0)

    def rerank_ids(self, cand_ids: np.ndarray) -> np.ndarray:
        """The candidates the second stage re-scores (Q x rerank)."""
        return cand_ids[:, : min(self.rerank, cand_ids.shape[1])]

    def finish(self, cand_ids: np.ndarray, cand_scores: np.ndarray, relation: np.ndarray | None = None) -> SearchResult:
        """The final top-k from the index candidates and, for a two-stage plan, the second stage's scores of
        :meth:`rerank_ids` (the invariant of :func:`merge_reranked`)."""
        if self.rerank and relation is not None:
            return merge_reranked(cand_ids, cand_scores, relation, self.k)
        return SearchResult(ids=cand_ids[:, : self.k], scores=cand_scores[:, : self.k].astype(np.float32))
