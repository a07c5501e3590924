"""Retrieval: the FAISS embedding index and the ZSE-SBIR search modes over a cached gallery."""

from sbir.retrieval.index import EmbeddingIndex, IndexFileError

__all__ = ["EmbeddingIndex", "IndexFileError"]
