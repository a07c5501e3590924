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

A saved gallery is a self-describing directory: ``gallery.json`` (format version, kind, method,
checkpoint reference and weights hash, model config, index config, count, a SHA-256 per file),
``items.jsonl`` (id, source path, class, pair id per photo), ``encoding.safetensors`` (what the
gallery's kind scores with) and ``index/`` (the FAISS index). Loading checks every checksum and, when
given, that the model's weights are the ones the gallery was built with.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from torch import nn

from sbir.config import IndexConfig
from sbir.errors import SbirError
from sbir.inference.index import EmbeddingIndex, IndexFileError
from sbir.inference.search import RERANK_OFFSET, SearchPlan, SearchResult, stable_topk
from sbir.models.encoding import Encoding

if TYPE_CHECKING:
    from sbir.methods.base import MethodFamily

logger = logging.getLogger(__name__)

FORMAT_NAME = "sbir.gallery"
FORMAT_VERSION = 1
META_FILE = "gallery.json"
ITEMS_FILE = "items.jsonl"
ENCODING_FILE = "encoding.safetensors"
INDEX_DIR = "index"
IMAGES_DIR = "images"  # optional: the photos themselves, `<id>.<ext>`, for serving them back


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


@dataclass(frozen=True)
class Provenance:
    """What a saved gallery was built from, so serving loads exactly what evaluation scored."""

    method: str
    checkpoint: str  # the reference the gallery was built from (path, runs:/, models:/)
    checkpoint_sha256: str  # weights content hash (sbir.checkpoint.weights_sha256)
    model_config: dict[str, Any] = field(default_factory=dict)


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
        self.embeddings = self.photos.retrieval_embeddings()
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

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Gallery rows of ids (-1 stays -1); an id that is not in the gallery is an error."""
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(self.ids)
        sorted_ids = self.ids[order]
        pos = np.clip(np.searchsorted(sorted_ids, ids), 0, max(0, len(sorted_ids) - 1))
        found = (sorted_ids[pos] == ids) if len(sorted_ids) else np.zeros(ids.shape, bool)
        unknown = ~found & (ids >= 0)
        if np.any(unknown):
            raise GalleryError(f"ids not in the gallery: {np.unique(ids[unknown])[:10].tolist()}")
        return np.where(ids >= 0, order[pos], -1) if len(sorted_ids) else np.full(ids.shape, -1)

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
        return self._queries(queries).retrieval_embeddings() @ self.embeddings.T

    @property
    def index(self) -> EmbeddingIndex:
        """The FAISS index over the gallery's embeddings and ids (``index_config`` decides its kind)."""
        if self._index is None:
            self._index = self._new_index()
        return self._index

    def _new_index(self) -> EmbeddingIndex:
        cfg = self.index_config
        index = EmbeddingIndex(
            int(self.embeddings.shape[1]),
            cfg.kind,
            nlist=cfg.nlist,
            nprobe=cfg.nprobe,
            hnsw_m=cfg.hnsw_m,
            ef_search=cfg.ef_search,
        )
        if len(self.ids):
            index.add(self.embeddings.detach().cpu().numpy(), self.ids)
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
        cand_scores, cand_ids = self._index_search(queries, plan.depth)
        relation = self.relation_scores(queries, plan.rerank_ids(cand_ids), pair_batch) if plan.rerank else None
        return plan.finish(cand_ids, cand_scores, relation)

    def _exhaustive_search(self, queries: Encoding, k: int, mode: str, pair_batch: int) -> SearchResult:
        raise GalleryError(f"a {self.kind} gallery has no exhaustive mode")

    def relation_scores(self, queries: Encoding, ids: np.ndarray, pair_batch: int = 1024) -> np.ndarray:
        """The second stage's scores of each query with its candidate ids (only galleries with a re-rank mode)."""
        raise GalleryError(f"a {self.kind} gallery has no second stage to re-score candidates")

    def _index_search(self, queries: Encoding, depth: int) -> tuple[np.ndarray, np.ndarray]:
        embeddings = self._queries(queries).retrieval_embeddings().detach().cpu().numpy()
        scores, ids = self.index.search(embeddings, depth)
        return np.asarray(scores, dtype=np.float32), ids

    # ----------------------------------------------------------------- updates
    def add(self, photos: Encoding, items: Sequence[GalleryItem]) -> None:
        """Append photos; their ids must be new. Nothing changes if any check fails."""
        if len(items) != len(photos):
            raise GalleryError(f"{len(items)} gallery items for {len(photos)} encoded photos")
        new_ids = np.asarray([item.id for item in items], dtype=np.int64)
        _check_ids(np.concatenate([self.ids, new_ids]))
        photos = photos.to(self.device)
        embeddings = photos.retrieval_embeddings()
        self.index.add(embeddings.detach().cpu().numpy(), new_ids)
        self.photos = type(self.photos).cat([self.photos, photos])
        self.embeddings = torch.cat([self.embeddings, embeddings])
        self.items += list(items)
        self.ids = np.concatenate([self.ids, new_ids])

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        """Remove photos by id and return how many went; an unknown id is an error and removes nothing."""
        rows = self.rows_of(np.unique(np.asarray(ids, dtype=np.int64)))
        keep = np.ones(len(self), bool)
        keep[rows] = False
        self.index.remove(self.ids[rows])
        kept = torch.from_numpy(np.flatnonzero(keep)).to(self.device)
        self.photos = self.photos.select(kept)
        self.embeddings = self.embeddings[kept]
        self.items = [item for item, k in zip(self.items, keep, strict=True) if k]
        self.ids = self.ids[keep]
        return len(rows)

    # ----------------------------------------------------------------- persistence
    def save(self, directory: str | Path, provenance: Provenance) -> Path:
        """Write the gallery as a self-describing directory; ``gallery.json`` goes last, so a half-written
        gallery never looks complete."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        meta_path = out / META_FILE
        meta_path.unlink(missing_ok=True)
        lines = [json.dumps(asdict(item), sort_keys=True) for item in self.items]
        (out / ITEMS_FILE).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        arrays = {k: np.ascontiguousarray(v) for k, v in self.photos.to_arrays().items()}
        save_file(arrays, str(out / ENCODING_FILE))
        self.index.save(out / INDEX_DIR)
        files = [ITEMS_FILE, ENCODING_FILE, f"{INDEX_DIR}/index.faiss", f"{INDEX_DIR}/index.json"]
        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "kind": self.kind,
            "modes": list(self.modes),
            "count": len(self),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "provenance": asdict(provenance),
            "index": self.index_config.model_dump(mode="json"),
            "files": {name: _sha256(out / name) for name in files},
        }
        tmp = meta_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        tmp.replace(meta_path)
        logger.info("saved a %s gallery of %d photos to %s", self.kind, len(self), out)
        return out


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
        flat_photo = candidates.reshape(-1)
        scores = torch.empty(q * k, device=self.device)
        for start in range(0, q * k, pair_batch):
            stop = min(q * k, start + pair_batch)
            scores[start:stop] = self.model.pair_scores(
                queries.select(flat_query[start:stop]), self.photos.select(flat_photo[start:stop]), precision
            )
        return scores.view(q, k)

    def _exhaustive_search(self, queries: Encoding, k: int, mode: str, pair_batch: int) -> SearchResult:
        scores = self.score_matrix(queries, mode, pair_batch=pair_batch)
        rows = stable_topk(scores, k)
        return self._pack(rows, scores.gather(1, rows))

    @torch.no_grad()
    def relation_scores(self, queries: Encoding, ids: np.ndarray, pair_batch: int = 1024) -> np.ndarray:
        """Relation score r of each query with each of its candidate ids (Q x K; -1 ids score NaN)."""
        rows = torch.from_numpy(self.rows_of(ids)).to(self.device)
        scores = self._relate_candidates(self._queries(queries), rows.clamp(min=0), pair_batch, "fp32")
        return torch.where(rows >= 0, scores, torch.full_like(scores, torch.nan)).float().cpu().numpy()

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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_gallery_meta(directory: str | Path) -> dict[str, Any]:
    """The checked ``gallery.json`` of a saved gallery (every file's checksum verified)."""
    root = Path(directory)
    meta_path = root / META_FILE
    if not meta_path.is_file():
        raise GalleryError(f"{root} is not a saved gallery: {META_FILE} is missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GalleryError(f"{meta_path}: unreadable ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise GalleryError(f"{meta_path} is not an {FORMAT_NAME} file")
    if meta.get("version") != FORMAT_VERSION:
        raise GalleryError(f"{meta_path}: format version {meta.get('version')!r}, this sbir reads {FORMAT_VERSION}")
    if meta.get("kind") not in GALLERY_KINDS:
        raise GalleryError(f"{meta_path}: unknown gallery kind {meta.get('kind')!r}")
    for name, expected in (meta.get("files") or {}).items():
        path = root / name
        if not path.is_file():
            raise GalleryError(f"{root}: {name} is missing")
        if _sha256(path) != expected:
            raise GalleryError(f"{path} does not match its checksum in {META_FILE}: the gallery is corrupt")
    return meta


def load_gallery(
    directory: str | Path,
    model: nn.Module,
    family: MethodFamily,
    *,
    checkpoint_sha256: str | None = None,
) -> Gallery:
    """Load a saved gallery for ``model`` (checked: format, checksums, method and, if given, the weights)."""
    root = Path(directory)
    meta = read_gallery_meta(root)
    provenance = Provenance(**meta["provenance"])
    if provenance.method != family.name:
        raise GalleryError(f"{root} was built for method {provenance.method!r}, not {family.name!r}")
    if checkpoint_sha256 is not None and provenance.checkpoint_sha256 != checkpoint_sha256:
        raise GalleryError(
            f"{root} was built with other weights ({provenance.checkpoint}, sha256 "
            f"{provenance.checkpoint_sha256[:12]}…) than the model being loaded ({checkpoint_sha256[:12]}…); "
            "rebuild it with `sbir index build` for this checkpoint"
        )
    items = [GalleryItem(**json.loads(line)) for line in (root / ITEMS_FILE).read_text().splitlines() if line]
    photos = family.encoding.from_arrays(load_file(str(root / ENCODING_FILE)))
    try:
        index = EmbeddingIndex.load(root / INDEX_DIR)
    except (IndexFileError, FileNotFoundError) as exc:
        raise GalleryError(f"{root}: {exc}") from exc
    cls = GALLERY_KINDS[meta["kind"]]
    gallery = cls(model, photos, items, IndexConfig.model_validate(meta["index"]), index=index)
    logger.info("loaded a %s gallery of %d photos from %s", gallery.kind, len(gallery), root)
    return gallery


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


_MAGIC = ((b"\x89PNG", ".png"), (b"\xff\xd8", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"))


def image_suffix(data: bytes) -> str:
    """The file suffix of encoded image bytes, from their magic number."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    for magic, suffix in _MAGIC:
        if data.startswith(magic):
            return suffix
    raise GalleryError("not a PNG, JPEG, WebP, GIF or BMP image")


def write_images(directory: str | Path, images: Mapping[int, bytes]) -> None:
    """Store gallery photos as ``images/<id>.<ext>`` (names from the integer id only, never from a request)."""
    folder = Path(directory) / IMAGES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for gallery_id, data in images.items():
        (folder / f"{int(gallery_id)}{image_suffix(data)}").write_bytes(data)


def find_image(directory: str | Path, gallery_id: int) -> Path | None:
    """The stored photo of a gallery id, or None."""
    matches = sorted((Path(directory) / IMAGES_DIR).glob(f"{int(gallery_id)}.*"))
    return matches[0] if matches else None
