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
from typing import Any, Generic, TypeVar

import numpy as np
from PIL import Image
from ray import serve

from sbir.inference.gallery import GalleryItem, find_image
from serve.journal import Journal
from serve.model import ServingModel

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
            arrays = encoder.encode_images(images, modality).to_arrays()
            seconds = time.perf_counter() - started
            for row, i in enumerate(members):
                out[i] = EncodeResult({k: v[row : row + 1] for k, v in arrays.items()}, len(requests), seconds)
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
    index: Any  # EmbeddingIndex
    items: dict[int, GalleryItem]
    journal: Journal
    family: Any
    applied: int = 0


@serve.deployment(name="GalleryIndex")
class GalleryIndex:
    """The FAISS index of the gallery's retrieval embeddings and its items; applies and writes the journal."""

    def __init__(self) -> None:
        self.states = Loaded(self._open)

    def _open(self, model: ServingModel) -> IndexState:
        import json
        from pathlib import Path

        from sbir.inference.index import EmbeddingIndex
        from sbir.methods import get_family

        root = Path(model.gallery_dir)
        items = [GalleryItem(**json.loads(line)) for line in (root / "items.jsonl").read_text().splitlines() if line]
        state = IndexState(
            EmbeddingIndex.load(root / "index"), {i.id: i for i in items}, Journal(root), get_family(model.method)
        )
        self._sync(state)
        return state

    def _sync(self, state: IndexState) -> None:
        for entry in state.journal.entries(state.applied):
            if entry.op == "add":
                embeddings = state.family.encoding.from_arrays(entry.arrays).retrieval_embeddings().numpy()
                state.index.add(embeddings, np.asarray([i.id for i in entry.items], dtype=np.int64))
                state.items |= {item.id: item for item in entry.items}
            else:
                state.index.remove(np.asarray(entry.ids, dtype=np.int64), missing_ok=True)
                for gallery_id in entry.ids:
                    state.items.pop(gallery_id, None)
            state.applied = entry.seq

    def _state(self, model: ServingModel) -> IndexState:
        state = self.states.get(model)
        self._sync(state)
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
        self._sync(state)
        return items

    async def remove(self, model: ServingModel, gallery_id: int) -> bool:
        """Journal the removal of an item; False when there is no such item."""
        state = self._state(model)
        if gallery_id not in state.items:
            return False
        state.journal.remove([gallery_id])
        self._sync(state)
        return True

    async def info(self, model: ServingModel) -> dict[str, Any]:
        state = self._state(model)
        return {"gallery_size": len(state.items), "index_kind": state.index.kind, "journal_entries": state.applied}


@dataclass
class RerankState:
    gallery: Any  # RelationGallery
    transform: Any
    journal: Journal
    family: Any
    applied: int = 0


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
        from sbir.inference.gallery import load_gallery

        encoder = Encoder.from_checkpoint(model.checkpoint_dir, device=self.device)
        gallery = load_gallery(model.gallery_dir, encoder.model, encoder.family, checkpoint_sha256=model.weights_sha256)
        state = RerankState(gallery, encoder.transform, Journal(model.gallery_dir), encoder.family)
        self._sync(state)
        return state

    def _sync(self, state: RerankState) -> None:
        for entry in state.journal.entries(state.applied):
            if entry.op == "add":
                state.gallery.add(state.family.encoding.from_arrays(entry.arrays), list(entry.items))
            else:
                known = set(state.gallery.ids.tolist())
                present = [i for i in entry.ids if i in known]
                if present:
                    state.gallery.remove(present)
            state.applied = entry.seq

    def _state(self, model: ServingModel) -> RerankState:
        state = self.states.get(model)
        self._sync(state)
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
