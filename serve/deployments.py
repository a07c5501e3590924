"""The model-side Ray Serve deployments: sketch encoder (request batching), gallery index, re-ranker.

Each replica loads what it serves by itself from a :class:`serve.model.ServingModel` and keeps the last two
versions it was asked for, so a model swap (``/v1/admin/reload``) never fails a request in flight. The index
and the re-ranker replay the gallery's journal before they answer, so every replica sees every update.
"""

from __future__ import annotations

import io
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
from PIL import Image
from ray import serve

from sbir.inference.gallery import GalleryItem
from sbir.inference.saved_gallery import Journal, find_image
from serve.model import ServingModel

if TYPE_CHECKING:
    from sbir.inference.gallery import Gallery
    from sbir.inference.index import EmbeddingIndex
    from sbir.inference.transforms import ImageTransform
    from sbir.methods import MethodFamily

logger = logging.getLogger(__name__)

T = TypeVar("T")
KEEP_VERSIONS = 2  # the serving version and the one before it, so a swap never drops requests in flight


class Loaded(Generic[T]):
    """The last few versions a replica loaded, by model id."""

    def __init__(self, load: Callable[[ServingModel], T]) -> None:
        self._load = load
        self._items: OrderedDict[str, T] = OrderedDict()

    def get(self, model: ServingModel) -> T:
        if model.model_id not in self._items:
            logger.info("loading %s", model.model_id)
            self._items[model.model_id] = self._load(model)
            while len(self._items) > KEEP_VERSIONS:
                self._items.popitem(last=False)
        self._items.move_to_end(model.model_id)
        return self._items[model.model_id]


@dataclass(frozen=True)
class EncodeRequest:
    model: ServingModel
    modality: str
    image: np.ndarray  # H x W x 3 uint8


@dataclass(frozen=True)
class EncodeResult:
    """One image's encoding, with what the next stages need: the retrieval embedding for the index and the
    encoding's arrays for a re-rank stage."""

    embedding: np.ndarray  # 1 x D retrieval embedding (float32)
    arrays: dict[str, np.ndarray]  # the encoding of one image (one row per field)
    batch_size: int  # how many images were encoded together with it
    seconds: float


@serve.deployment(name="SketchEncoder")
class SketchEncoder:
    """Encodes sketches (and added photos) in request batches (``@serve.batch``)."""

    def __init__(self, max_batch_size: int, batch_wait_timeout_s: float, device: str = "auto") -> None:
        import torch

        from sbir.inference.encoder import Encoder

        torch.set_num_threads(1)
        self.device = device
        self.encoders = Loaded(lambda m: Encoder.from_checkpoint(m.checkpoint_dir, device=self.device))
        self.encode_batch.set_max_batch_size(max_batch_size)
        self.encode_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    async def load(self, model: ServingModel) -> None:
        self.encoders.get(model)

    async def encode(self, request: EncodeRequest) -> EncodeResult:
        return await self.encode_batch(request)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def encode_batch(self, requests: list[EncodeRequest]) -> list[EncodeResult]:
        started = time.perf_counter()
        out: list[EncodeResult | None] = [None] * len(requests)
        groups: dict[tuple[str, str], list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault((request.model.model_id, request.modality), []).append(i)
        for (_, modality), members in groups.items():
            encoder = self.encoders.get(requests[members[0]].model)
            images = [Image.fromarray(requests[i].image) for i in members]
            encoding = encoder.encode_images(images, modality)
            embeddings = encoding.retrieval_embeddings().float().cpu().numpy()
            arrays = encoding.to_arrays()
            seconds = time.perf_counter() - started
            for row, i in enumerate(members):
                rows = {k: v[row : row + 1] for k, v in arrays.items()}
                out[i] = EncodeResult(embeddings[row : row + 1], rows, len(requests), seconds)
        return out  # type: ignore[return-value]


@dataclass(frozen=True)
class SearchHits:
    """The index's answer: candidate ids and ``ret`` scores, best first, with their items."""

    ids: np.ndarray
    scores: np.ndarray
    items: dict[int, GalleryItem]
    seconds: float


@dataclass
class IndexState:
    """One version's index and items, and how far into the gallery's journal they are."""

    index: EmbeddingIndex
    items: dict[int, GalleryItem]
    journal: Journal
    family: MethodFamily
    applied: int = 0

    def sync(self) -> None:
        """Apply the journal entries this replica has not seen."""
        self.applied = self.journal.replay(self.applied, self._add, self._remove)

    def _add(self, arrays: dict[str, np.ndarray], items: list[GalleryItem]) -> None:
        embeddings = self.family.encoding.from_arrays(arrays).retrieval_embeddings().numpy()
        self.index.add(embeddings, np.asarray([item.id for item in items], dtype=np.int64))
        self.items |= {item.id: item for item in items}

    def _remove(self, ids: list[int]) -> None:
        self.index.remove(np.asarray(ids, dtype=np.int64), missing_ok=True)
        for gallery_id in ids:
            self.items.pop(gallery_id, None)


@serve.deployment(name="GalleryIndex")
class GalleryIndex:
    """The FAISS index of the gallery's retrieval embeddings and its items; applies and writes the journal."""

    def __init__(self) -> None:
        self.states = Loaded(self._open)

    def _open(self, model: ServingModel) -> IndexState:
        from sbir.inference.saved_gallery import load_index, read_items
        from sbir.methods import get_family

        items = {item.id: item for item in read_items(model.gallery_dir)}
        state = IndexState(load_index(model.gallery_dir), items, Journal(model.gallery_dir), get_family(model.method))
        state.sync()
        return state

    def _state(self, model: ServingModel) -> IndexState:
        state = self.states.get(model)
        state.sync()
        return state

    async def load(self, model: ServingModel) -> int:
        return len(self._state(model).items)

    async def search(self, model: ServingModel, embedding: np.ndarray, depth: int) -> SearchHits:
        """The `depth` best items by the retrieval embedding, with their items (one call, no second hop)."""
        started = time.perf_counter()
        state = self._state(model)
        if not state.items:
            return SearchHits(np.zeros(0, np.int64), np.zeros(0, np.float32), {}, time.perf_counter() - started)
        scores, ids = state.index.search(embedding.reshape(1, -1).astype(np.float32), min(depth, len(state.items)))
        keep = ids[0] >= 0
        ids, scores = ids[0][keep], scores[0][keep]
        items = {int(i): state.items[int(i)] for i in ids if int(i) in state.items}
        return SearchHits(ids, scores, items, time.perf_counter() - started)

    async def describe(self, model: ServingModel, ids: list[int]) -> list[GalleryItem]:
        state = self._state(model)
        return [state.items[int(i)] for i in ids if int(i) in state.items]

    async def add(
        self, model: ServingModel, photos: list[tuple[str, str | None, bytes]], arrays: dict[str, np.ndarray]
    ) -> list[GalleryItem]:
        """Journal the photos and their encodings (the ingress checked that the gallery is writable)."""
        state = self._state(model)
        items = state.journal.add(photos, arrays)
        state.sync()
        return items

    async def remove(self, model: ServingModel, gallery_id: int) -> bool:
        """Journal the removal of an item; False when there is no such item."""
        state = self._state(model)
        if gallery_id not in state.items:
            return False
        state.journal.remove([gallery_id])
        state.sync()
        return True

    async def info(self, model: ServingModel) -> dict[str, Any]:
        state = self._state(model)
        return {"gallery_size": len(state.items), "index_kind": state.index.kind, "journal_entries": state.applied}


@dataclass
class RerankState:
    """One version's gallery (with the photos' cached tokens), and how far into its journal it is."""

    gallery: Gallery
    transform: ImageTransform
    journal: Journal
    family: MethodFamily
    applied: int = 0

    def sync(self) -> None:
        """Apply the journal entries this replica has not seen."""
        self.applied = self.journal.replay(self.applied, self._add, self._remove)

    def _add(self, arrays: dict[str, np.ndarray], items: list[GalleryItem]) -> None:
        self.gallery.add(self.family.encoding.from_arrays(arrays), items)

    def _remove(self, ids: list[int]) -> None:
        known = set(self.gallery.ids.tolist())
        present = [i for i in ids if i in known]
        if present:
            self.gallery.remove(present)


@serve.deployment(name="Reranker")
class Reranker:
    """ZSE-SBIR's second stage: relation scores of a sketch with its top-K candidates from cached photo tokens."""

    def __init__(self, device: str = "auto") -> None:
        import torch

        torch.set_num_threads(1)
        self.device = device
        self.states = Loaded(self._open)

    def _open(self, model: ServingModel) -> RerankState:
        from sbir.inference.encoder import Encoder

        encoder = Encoder.from_checkpoint(model.checkpoint_dir, device=self.device)
        gallery = encoder.open_gallery(model.gallery_dir, checkpoint_sha256=model.weights_sha256)
        state = RerankState(gallery, encoder.transform, Journal(model.gallery_dir), encoder.family)
        state.sync()
        return state

    def _state(self, model: ServingModel) -> RerankState:
        state = self.states.get(model)
        state.sync()
        return state

    async def load(self, model: ServingModel) -> None:
        self._state(model)

    async def rerank(
        self, model: ServingModel, query: dict[str, np.ndarray], ids: np.ndarray
    ) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        state = self._state(model)
        scores = state.gallery.relation_scores(state.family.encoding.from_arrays(query), ids.reshape(1, -1))
        return scores[0], time.perf_counter() - started

    async def explain(
        self, model: ServingModel, sketch: np.ndarray, gallery_id: int, arrays: bool
    ) -> dict[str, Any] | None:
        """Attention maps, token correspondences and patch synthesis as PNG bytes (and the arrays, if asked);
        None when the item has no stored photo."""
        from sbir.explain import render_explanation_pngs

        state = self._state(model)
        path = find_image(model.gallery_dir, gallery_id)
        if path is None:
            return None
        device = state.gallery.device
        sketch_t = state.transform(Image.fromarray(sketch), "sketch").to(device)
        photo_t = state.transform(Image.open(io.BytesIO(path.read_bytes())).convert("RGB"), "photo").to(device)
        explanation = state.family.explain(state.gallery.model, sketch_t, photo_t)
        return render_explanation_pngs(explanation, arrays=arrays)
