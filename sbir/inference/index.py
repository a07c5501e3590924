"""A FAISS embedding index keyed by int64 ids, for L2-normalised embeddings under inner product.

Retrieval in sbir ranks gallery images by cosine similarity to a sketch embedding. With
L2-normalised embeddings cosine similarity *is* the inner product, so every index here uses
``METRIC_INNER_PRODUCT`` and higher scores are better.

Three index kinds are offered behind one API (:class:`EmbeddingIndex`):

``flat``
    Exact search (``IndexIDMap2(IndexFlatIP)``). The default: galleries in zero-shot SBIR
    benchmarks are small enough that exact search is cheap, and exact results make evaluation
    reproducible. Ties are broken deterministically: by score descending, then id ascending.
``ivf``
    Inverted file (``IndexIVFFlat``, ``nlist`` cells, ``nprobe`` probed per query). Needs k-means
    training before vectors can be added: it trains on the first :meth:`EmbeddingIndex.add`
    batch if that batch has at least ``nlist`` vectors, or you call
    :meth:`EmbeddingIndex.train` yourself with a representative sample.
``hnsw``
    Graph search (``IndexIDMap2(IndexHNSWFlat)``, ``hnsw_m`` links, ``ef_search`` beam width).
    FAISS cannot delete from an HNSW graph, so :meth:`EmbeddingIndex.remove` rebuilds the graph
    from the stored vectors without the removed ids: correct, but O(N log N) per call, so batch
    your removals.

Every kind supports add / remove / search / reconstruct / save / load. Ids are non-negative
int64 (``-1`` is the "no result" padding value FAISS uses, so negative ids are rejected).

Persistence is a directory holding ``index.faiss`` (written by ``faiss.write_index``) and a
JSON sidecar ``index.json`` (kind, dim, params, format version, count, SHA-256 of the index
file). No pickle is used anywhere. Loading validates the sidecar against the FAISS file and
raises :class:`IndexFileError` on any mismatch or corruption.

Thread safety: concurrent :meth:`~EmbeddingIndex.search` calls are safe; mutations
(add / remove / train / parameter changes) must not run concurrently with anything else.

This module is pure numpy + FAISS on purpose (no Ray): it is used inside Ray actors, in the
serving process and in plain unit tests alike.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Final, Literal, cast, get_args

import faiss
import numpy as np

from sbir.errors import SbirError
from sbir.files import read_format_json, sha256_file, write_atomic

__all__ = ["FORMAT_VERSION", "EmbeddingIndex", "IndexFileError", "IndexKind"]

logger = logging.getLogger(__name__)

IndexKind = Literal["flat", "ivf", "hnsw"]
_KINDS: Final[tuple[str, ...]] = get_args(IndexKind)

#: Version of the on-disk sidecar layout. Bump on any incompatible change.
FORMAT_VERSION: Final[int] = 1
_FORMAT_NAME: Final[str] = "sbir.retrieval.EmbeddingIndex"
INDEX_FILENAME: Final[str] = "index.faiss"
SIDECAR_FILENAME: Final[str] = "index.json"

# Embeddings whose norm differs from 1 by more than this trigger a (logged) warning: inner
# product is then no longer cosine similarity, which is almost always a caller bug.
_NORM_TOLERANCE: Final[float] = 1e-3
# Flat search fetches this many extra neighbours so that ties at the k-th score can be broken
# by id; it keeps doubling the fetch while the tie extends past what was fetched.
_TIE_MARGIN: Final[int] = 16
# Faiss k-means warns below this many training points per centroid; we log it ourselves.
_IVF_POINTS_PER_CENTROID: Final[int] = 39


class IndexFileError(SbirError, ValueError):
    """A saved index is corrupt, inconsistent with its sidecar, or of an unsupported version."""


def _fmt_ids(ids: np.ndarray | list[int], limit: int = 10) -> str:
    """Render offending ids for an error message, truncated so messages stay readable."""
    values = [int(i) for i in np.asarray(ids).ravel()]
    shown = ", ".join(str(i) for i in values[:limit])
    if len(values) > limit:
        shown += f", ... ({len(values)} in total)"
    return f"[{shown}]"


def _as_ids(ids: Any, *, name: str = "ids") -> np.ndarray:
    """Validate and convert ids to a 1-D int64 array (scalars become length-1 arrays)."""
    arr = np.atleast_1d(np.asarray(ids))
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array (int64), got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} contain values that do not fit in int64")
    arr = arr.astype(np.int64, copy=False)
    negative = arr[arr < 0]
    if negative.size:
        raise ValueError(f"{name} must be non-negative (-1 marks 'no result'); offending ids: {_fmt_ids(negative)}")
    return arr


class EmbeddingIndex:
    """Inner-product nearest-neighbour index over L2-normalised embeddings, keyed by int64 ids.

    Args:
        dim: Embedding dimension.
        kind: ``"flat"`` (exact, default), ``"ivf"`` (inverted file) or ``"hnsw"`` (graph).
        nlist: IVF only: number of k-means cells. Training needs at least this many vectors.
        nprobe: IVF only: cells visited per query (clamped to ``nlist``). ``nprobe == nlist``
            makes IVF search exact.
        hnsw_m: HNSW only: graph out-degree. Higher = better recall, more memory.
        ef_search: HNSW only: search beam width (FAISS uses ``max(ef_search, k)``).

    Ranking: results are ordered by score descending, then id ascending. For ``flat`` this
    order is exact over the whole index (tied items at the k-th place are resolved by id); for
    ``ivf`` / ``hnsw`` it applies to the candidates the approximate search returned.
    """

    def __init__(
        self,
        dim: int,
        kind: IndexKind = "flat",
        *,
        nlist: int = 64,
        nprobe: int = 8,
        hnsw_m: int = 32,
        ef_search: int = 64,
    ) -> None:
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {list(_KINDS)}, got {kind!r}")
        for pname, value in (
            ("dim", dim),
            ("nlist", nlist),
            ("nprobe", nprobe),
            ("hnsw_m", hnsw_m),
            ("ef_search", ef_search),
        ):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{pname} must be a positive integer, got {value!r}")
        self._dim = int(dim)
        self._kind: IndexKind = kind
        self._nlist = int(nlist)
        self._nprobe = int(nprobe)
        self._hnsw_m = int(hnsw_m)
        self._ef_search = int(ef_search)
        # Sorted, unique ids currently stored: the source of truth for membership checks.
        self._ids = np.empty(0, dtype=np.int64)
        self._index: faiss.Index = self._new_faiss_index()
        self._apply_search_params()

    # ------------------------------------------------------------------ construction helpers

    def _new_faiss_index(self) -> faiss.Index:
        """Build an empty FAISS index of this object's kind and parameters."""
        metric = faiss.METRIC_INNER_PRODUCT
        if self._kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self._dim))
        if self._kind == "hnsw":
            return faiss.IndexIDMap2(faiss.IndexHNSWFlat(self._dim, self._hnsw_m, metric))
        quantizer = faiss.IndexFlatIP(self._dim)
        ivf = faiss.IndexIVFFlat(quantizer, self._dim, self._nlist, metric)
        # (faiss's Python wrapper keeps `quantizer` alive as long as `ivf` is referenced.)
        # We check the sample size ourselves and log instead of faiss printing to stderr.
        ivf.cp.min_points_per_centroid = 1
        # A hashtable direct map makes arbitrary int64 ids reconstructable and removable.
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        return ivf

    def _apply_search_params(self) -> None:
        if self._kind == "ivf":
            cast(Any, self._index).nprobe = min(self._nprobe, self._nlist)
        elif self._kind == "hnsw":
            self._hnsw().hnsw.efSearch = self._ef_search

    def _hnsw(self) -> Any:
        return faiss.downcast_index(cast(Any, self._index).index)

    # ------------------------------------------------------------------ properties

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return self._dim

    @property
    def kind(self) -> IndexKind:
        """Index kind: ``"flat"``, ``"ivf"`` or ``"hnsw"``."""
        return self._kind

    @property
    def params(self) -> dict[str, int]:
        """Constructor parameters (the ones persisted in the sidecar)."""
        return {
            "nlist": self._nlist,
            "nprobe": self._nprobe,
            "hnsw_m": self._hnsw_m,
            "ef_search": self._ef_search,
        }

    @property
    def is_trained(self) -> bool:
        """Whether vectors can be added (always true except for an untrained IVF index)."""
        return bool(self._index.is_trained)

    @property
    def nprobe(self) -> int:
        """IVF cells probed per query; may be changed between searches."""
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"nprobe must be a positive integer, got {value!r}")
        self._nprobe = int(value)
        self._apply_search_params()

    @property
    def ef_search(self) -> int:
        """HNSW search beam width; may be changed between searches."""
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"ef_search must be a positive integer, got {value!r}")
        self._ef_search = int(value)
        self._apply_search_params()

    def __len__(self) -> int:
        return int(self._ids.size)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, bool) or not isinstance(item, int | np.integer):
            return False
        return self.contains(int(item))

    def __repr__(self) -> str:
        extra = ""
        if self._kind == "ivf":
            extra = f", nlist={self._nlist}, nprobe={self._nprobe}, trained={self.is_trained}"
        elif self._kind == "hnsw":
            extra = f", hnsw_m={self._hnsw_m}, ef_search={self._ef_search}"
        return f"EmbeddingIndex(dim={self._dim}, kind={self._kind!r}, size={len(self)}{extra})"

    def ids(self) -> np.ndarray:
        """All stored ids, sorted ascending (int64 copy)."""
        return self._ids.copy()

    def contains(self, id: int) -> bool:
        """Whether ``id`` is stored."""
        pos = int(np.searchsorted(self._ids, id))
        return pos < self._ids.size and int(self._ids[pos]) == int(id)

    def _present_mask(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``ids`` (int64) are stored."""
        if self._ids.size == 0:
            return np.zeros(ids.shape, dtype=bool)
        pos = np.minimum(np.searchsorted(self._ids, ids), self._ids.size - 1)
        return self._ids[pos] == ids

    # ------------------------------------------------------------------ validation

    def _as_vectors(self, x: Any, *, name: str) -> np.ndarray:
        """Validate a (N, dim) array of finite values and return it as contiguous float32."""
        arr = np.asarray(x)
        if arr.ndim != 2:
            hint = " (use x.reshape(1, -1) for a single vector)" if arr.ndim == 1 else ""
            raise ValueError(f"{name} must be a 2-D array of shape (N, {self._dim}), got {arr.shape}{hint}")
        if arr.shape[1] != self._dim:
            raise ValueError(f"{name} have dimension {arr.shape[1]}, but this index has dim={self._dim}")
        try:
            arr = np.ascontiguousarray(arr, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be convertible to float32, got dtype {arr.dtype}") from exc
        bad_rows = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        if bad_rows.size:
            raise ValueError(f"{name} contain NaN or infinite values in rows {_fmt_ids(bad_rows)}")
        return arr

    @staticmethod
    def _warn_if_not_normalised(x: np.ndarray) -> None:
        if x.shape[0] == 0:
            return
        norms = np.linalg.norm(x, axis=1)
        off = int(np.count_nonzero(np.abs(norms - 1.0) > _NORM_TOLERANCE))
        if off:
            logger.warning(
                "%d of %d embeddings are not L2-normalised (norm range %.4g..%.4g); inner-product "
                "scores will not be cosine similarities",
                off,
                x.shape[0],
                float(norms.min()),
                float(norms.max()),
            )

    # ------------------------------------------------------------------ mutation

    def train(self, vectors: np.ndarray) -> None:
        """Train the IVF coarse quantizer (k-means) on ``vectors``; a no-op for flat / hnsw.

        Train on a sample representative of what will be added. Needs at least ``nlist``
        vectors (ideally ~39 x nlist or more). Retraining is only allowed while the index is
        empty, because stored vectors are assigned to the old cells.
        """
        x = self._as_vectors(vectors, name="training vectors")
        if self._kind != "ivf":
            logger.debug("train() is a no-op for kind=%r", self._kind)
            return
        if len(self):
            raise RuntimeError(
                f"cannot retrain an IVF index holding {len(self)} vectors; remove them first or build a new index"
            )
        if x.shape[0] < self._nlist:
            raise ValueError(
                f"IVF training needs at least nlist={self._nlist} vectors, got {x.shape[0]}; "
                "train on a larger sample, or construct the index with a smaller nlist"
            )
        if x.shape[0] < _IVF_POINTS_PER_CENTROID * self._nlist:
            logger.warning(
                "training IVF with %d vectors for nlist=%d cells; at least %d are recommended",
                x.shape[0],
                self._nlist,
                _IVF_POINTS_PER_CENTROID * self._nlist,
            )
        self._warn_if_not_normalised(x)
        self._index = self._new_faiss_index()
        self._apply_search_params()
        self._index.train(x)
        logger.info("trained IVF index: %d vectors, nlist=%d", x.shape[0], self._nlist)

    def add(self, embeddings: np.ndarray, ids: np.ndarray) -> None:
        """Add ``embeddings`` (N x dim) under ``ids`` (N non-negative int64, all new).

        An untrained IVF index trains on this batch first when it holds >= ``nlist`` vectors;
        otherwise a ``ValueError`` says how many are needed. Nothing is added if any check
        fails (wrong shape, NaN/inf, negative or duplicate ids).
        """
        x = self._as_vectors(embeddings, name="embeddings")
        id_arr = _as_ids(ids)
        if id_arr.size != x.shape[0]:
            raise ValueError(f"got {x.shape[0]} embeddings but {id_arr.size} ids")
        if x.shape[0] == 0:
            return
        uniq, counts = np.unique(id_arr, return_counts=True)
        dup_in_batch = uniq[counts > 1]
        if dup_in_batch.size:
            raise ValueError(f"duplicate ids within the batch: {_fmt_ids(dup_in_batch)}")
        already = id_arr[self._present_mask(id_arr)]
        if already.size:
            raise ValueError(f"ids already in the index: {_fmt_ids(np.sort(already))} (remove them first to replace)")
        if not self.is_trained:
            if x.shape[0] < self._nlist:
                raise ValueError(
                    f"IVF index is untrained: the first add() needs at least nlist={self._nlist} "
                    f"vectors to train on, got {x.shape[0]}. Call train(sample) with >= {self._nlist} "
                    "representative vectors first, add a larger first batch, or use a smaller nlist"
                )
            self.train(x)
        else:
            self._warn_if_not_normalised(x)
        self._index.add_with_ids(x, id_arr)
        self._ids = np.union1d(self._ids, id_arr)

    def remove(self, ids: Any, *, missing_ok: bool = False) -> int:
        """Remove ``ids`` and return how many were removed.

        Unknown ids raise ``KeyError`` naming them (and nothing is removed) unless
        ``missing_ok=True``, in which case they are skipped. HNSW removal rebuilds the graph from
        the remaining stored vectors (FAISS HNSW has no delete), so batch removals there.
        """
        id_arr = np.unique(_as_ids(ids))
        present = self._present_mask(id_arr)
        if not missing_ok and not present.all():
            raise KeyError(f"ids not in the index: {_fmt_ids(id_arr[~present])}")
        to_remove = id_arr[present]
        if to_remove.size == 0:
            return 0
        if self._kind == "hnsw":
            self._rebuild_hnsw_without(to_remove)
        else:
            removed = int(self._index.remove_ids(to_remove))
            if removed != to_remove.size:  # pragma: no cover - would be a faiss bug
                raise RuntimeError(f"faiss removed {removed} vectors, expected {to_remove.size}")
        self._ids = np.setdiff1d(self._ids, to_remove, assume_unique=True)
        return int(to_remove.size)

    def _rebuild_hnsw_without(self, to_remove: np.ndarray) -> None:
        """Rebuild the HNSW graph from the stored vectors, minus ``to_remove``."""
        idmap = cast(Any, self._index)
        labels = faiss.vector_to_array(idmap.id_map).astype(np.int64, copy=False)
        vectors = self._hnsw().storage.reconstruct_n(0, idmap.ntotal)
        keep = ~np.isin(labels, to_remove)
        logger.debug("rebuilding HNSW graph with %d of %d vectors", int(keep.sum()), labels.size)
        new_index = self._new_faiss_index()
        if keep.any():
            new_index.add_with_ids(np.ascontiguousarray(vectors[keep]), np.ascontiguousarray(labels[keep]))
        self._index = new_index
        self._apply_search_params()

    # ------------------------------------------------------------------ queries

    def reconstruct(self, ids: Any) -> np.ndarray:
        """Return the stored vectors for ``ids`` as a (len(ids), dim) float32 array.

        Unknown ids raise ``KeyError`` naming them. Exact for every kind (all store raw float32).
        """
        id_arr = _as_ids(ids)
        present = self._present_mask(id_arr)
        if not present.all():
            raise KeyError(f"ids not in the index: {_fmt_ids(np.unique(id_arr[~present]))}")
        if id_arr.size == 0:
            return np.empty((0, self._dim), dtype=np.float32)
        return np.asarray(self._index.reconstruct_batch(id_arr), dtype=np.float32)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` neighbours of each query by inner product.

        Returns ``(scores, ids)``, shapes (Q, k), float32 and int64, each row ordered by score
        descending then id ascending. ``k`` may exceed ``len(self)``: missing places are padded
        with score ``-inf`` and id ``-1``.
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
            raise ValueError(f"k must be a non-negative integer, got {k!r}")
        k = int(k)
        q = self._as_vectors(queries, name="queries")
        nq, n = q.shape[0], len(self)
        scores = np.full((nq, k), -np.inf, dtype=np.float32)
        labels = np.full((nq, k), -1, dtype=np.int64)
        kk = min(k, n)
        if nq == 0 or kk == 0:
            return scores, labels
        if self._kind == "flat":
            d, i = self._search_flat_exact_ties(q, kk)
        else:
            d, i = self._index.search(q, kk)
            d, i = self._sort_rows(np.asarray(d, dtype=np.float32), np.asarray(i, dtype=np.int64))
        scores[:, :kk] = d
        labels[:, :kk] = i
        return scores, labels

    @staticmethod
    def _sort_rows(d: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Order each row by score desc, then id asc; faiss's '-1' padding goes last as -inf."""
        d = np.where(i < 0, np.float32(-np.inf), d).astype(np.float32, copy=False)
        order = np.lexsort((i, -d), axis=-1)
        return np.take_along_axis(d, order, axis=1), np.take_along_axis(i, order, axis=1)

    def _search_flat_exact_ties(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k with ties at the k-th score resolved by ascending id.

        FAISS's heap returns an arbitrary subset of items tied at the k-th score. We fetch extra
        neighbours and, for any row whose last fetched score still equals its k-th score (the
        tie may continue past the fetch), refetch that row with twice as many until the tie is
        fully inside the fetch or the whole index was fetched. ``k <= len(self)`` here.
        """
        n = len(self)
        out_d = np.empty((q.shape[0], k), dtype=np.float32)
        out_i = np.empty((q.shape[0], k), dtype=np.int64)
        rows = np.arange(q.shape[0])
        fetch = min(n, k + _TIE_MARGIN)
        while rows.size:
            d, i = self._index.search(q[rows], fetch)
            d = np.asarray(d, dtype=np.float32)
            i = np.asarray(i, dtype=np.int64)
            # The last fetched score still ties the k-th: the tie may continue past the fetch.
            unresolved = (d[:, fetch - 1] >= d[:, k - 1]) & (fetch < n)
            done = ~unresolved
            sd, si = self._sort_rows(d[done], i[done])
            out_d[rows[done]] = sd[:, :k]
            out_i[rows[done]] = si[:, :k]
            rows = rows[unresolved]
            fetch = min(n, fetch * 2)
        return out_d, out_i

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save to directory ``path`` (created if needed) as ``index.faiss`` + ``index.json``.

        Both files are written atomically (temp file + rename); the sidecar is written last and
        carries the SHA-256 of the index file, so a half-finished save is detected on load.
        Returns the directory path.
        """
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        index_path = directory / INDEX_FILENAME
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{INDEX_FILENAME}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            faiss.write_index(self._index, str(tmp))
            checksum = sha256_file(tmp)
            os.replace(tmp, index_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        sidecar = {
            "format": _FORMAT_NAME,
            "version": FORMAT_VERSION,
            "kind": self._kind,
            "dim": self._dim,
            "metric": "inner_product",
            "params": self.params,
            "count": len(self),
            "trained": self.is_trained,
            "index_file": INDEX_FILENAME,
            "index_sha256": checksum,
            "faiss_version": faiss.__version__,
        }
        write_atomic(directory / SIDECAR_FILENAME, (json.dumps(sidecar, indent=2) + "\n").encode())
        logger.info("saved %r to %s", self, directory)
        return directory

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EmbeddingIndex:
        """Load an index saved by :meth:`save` from directory ``path``.

        Raises ``FileNotFoundError`` if the directory or either file is missing, and
        :class:`IndexFileError` if the sidecar is unreadable, of another format version,
        inconsistent with the FAISS file, or the FAISS file is corrupt.
        """
        directory = Path(path)
        if not directory.is_dir():
            raise FileNotFoundError(f"no saved EmbeddingIndex directory at {directory}")
        sidecar_path = directory / SIDECAR_FILENAME
        if not sidecar_path.is_file():
            raise FileNotFoundError(f"missing index sidecar {sidecar_path}")
        meta = cls._read_sidecar(sidecar_path)
        index_path = directory / INDEX_FILENAME
        if not index_path.is_file():
            raise FileNotFoundError(f"missing FAISS index file {index_path}")
        if sha256_file(index_path) != meta["index_sha256"]:
            raise IndexFileError(
                f"{index_path} does not match the checksum in {sidecar_path}: the file is corrupt "
                "or from a different save"
            )
        try:
            raw = faiss.read_index(str(index_path))
        except RuntimeError as exc:
            raise IndexFileError(f"FAISS could not read {index_path}: {exc}") from exc

        obj = cls(meta["dim"], meta["kind"], **meta["params"])
        obj._index = cls._check_loaded_index(raw, meta, index_path)
        obj._apply_search_params()
        obj._ids = np.unique(obj._stored_ids())
        if obj._ids.size != meta["count"] or obj._ids.size != obj._index.ntotal:
            raise IndexFileError(
                f"{index_path} holds {obj._index.ntotal} vectors ({obj._ids.size} unique ids) but "
                f"the sidecar says count={meta['count']}"
            )
        logger.info("loaded %r from %s", obj, directory)
        return obj

    @staticmethod
    def _read_sidecar(sidecar_path: Path) -> dict[str, Any]:
        """Parse and validate the JSON sidecar; raise IndexFileError naming the problem."""
        meta = read_format_json(sidecar_path, _FORMAT_NAME, FORMAT_VERSION, IndexFileError, "index sidecar")
        problems: list[str] = []
        if meta.get("kind") not in _KINDS:
            problems.append(f"kind={meta.get('kind')!r} (expected one of {list(_KINDS)})")
        if meta.get("metric") != "inner_product":
            problems.append(f"metric={meta.get('metric')!r} (expected 'inner_product')")
        for key in ("dim", "count"):
            value = meta.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "dim" else 0):
                problems.append(f"{key}={value!r}")
        params = meta.get("params")
        expected_params = {"nlist", "nprobe", "hnsw_m", "ef_search"}
        if not isinstance(params, dict) or set(params) != expected_params:
            problems.append(f"params={params!r} (expected keys {sorted(expected_params)})")
        elif not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in params.values()):
            problems.append(f"params={params!r} (values must be positive integers)")
        if not isinstance(meta.get("index_sha256"), str):
            problems.append("index_sha256 missing")
        if problems:
            raise IndexFileError(f"invalid index sidecar {sidecar_path}: " + "; ".join(problems))
        return meta

    @staticmethod
    def _check_loaded_index(raw: Any, meta: dict[str, Any], index_path: Path) -> faiss.Index:
        """Check the FAISS object read from disk is the structure ``meta`` describes.

        Returns ``raw`` itself: it owns the C++ object (a ``downcast_index`` proxy would not, and
        would dangle once ``raw`` is garbage-collected). ``read_index`` already returns the
        concrete subclass.
        """
        index = raw
        kind = meta["kind"]
        if kind == "ivf":
            ok = isinstance(index, faiss.IndexIVFFlat)
        else:
            inner_type = faiss.IndexFlatIP if kind == "flat" else faiss.IndexHNSWFlat
            ok = isinstance(index, faiss.IndexIDMap2) and isinstance(faiss.downcast_index(index.index), inner_type)
        if not ok:
            raise IndexFileError(f"{index_path} holds a {type(index).__name__}, not a {kind!r} index")
        if index.d != meta["dim"] or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise IndexFileError(
                f"{index_path} has dim={index.d}, metric={index.metric_type}; sidecar says "
                f"dim={meta['dim']}, inner product"
            )
        if kind == "ivf":
            if index.nlist != meta["params"]["nlist"]:
                raise IndexFileError(f"{index_path} has nlist={index.nlist}, sidecar says {meta['params']}")
            if index.direct_map.type != faiss.DirectMap.Hashtable:
                index.set_direct_map_type(faiss.DirectMap.Hashtable)
        return index

    def _stored_ids(self) -> np.ndarray:
        """Ids as stored inside the FAISS structure (used to rebuild membership after load)."""
        if self._kind != "ivf":
            return faiss.vector_to_array(cast(Any, self._index).id_map).astype(np.int64, copy=False)
        ivf = cast(Any, self._index)
        invlists = ivf.invlists
        parts = [np.empty(0, dtype=np.int64)]
        for list_no in range(ivf.nlist):
            size = invlists.list_size(list_no)
            if size:
                parts.append(faiss.rev_swig_ptr(invlists.get_ids(list_no), size).astype(np.int64))
        return np.concatenate(parts)
