"""The endpoint's ingress: HTTP routes, the sketch encoder and (with one shard) the gallery, in one replica.

Every request is checked before a model sees it (``serve.requests``); the API key is a FastAPI dependency
of every route that reads or changes data; problems are answered as JSON ``{"error": ...}`` with a 4xx
status (``serve.http``). The routes only parse and answer: which version is served is ``serve.versions``'s
job, the batched search ``serve.retriever``'s, and the gallery lives in this replica
(``serve.gallery.LocalGallery``) or in the GalleryShard deployments (``serve.shards``).
(No ``from __future__ import annotations`` here: Serve's class-based ingress reads route signatures at run time.)
"""

import asyncio
import base64
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from sbir.errors import SbirError
from sbir.inference.encoder import Encoder
from sbir.inference.gallery import GalleryItem
from sbir.inference.saved_gallery import ShardSpec, find_image
from serve import http
from serve.gallery import GalleryView, LocalGallery, ShardedGallery
from serve.holder import ShardHolder
from serve.http import error_response, media_type, read_body, read_form, require_api_key
from serve.metrics import EndpointMetrics
from serve.model import ServingModel
from serve.requests import (
    RequestError,
    base64_image_bytes,
    class_label,
    decode_image,
    gallery_id,
    json_sketch,
    parse_int,
    parse_json,
    photo_name,
    search_query,
    with_query_options,
)
from serve.retriever import Retriever, SearchJob
from serve.settings import AppSettings
from serve.versions import ModelVersions
from serve.versions_cache import Loaded

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
}
KEYED = [Depends(require_api_key)]  # every route that reads or changes data; the page and the probes are open

api = FastAPI(
    title="sbir retrieval endpoint",
    version="1",
    description="Zero-shot sketch-based image retrieval: search a gallery of photos with a sketch (docs/serving.md).",
)
http.install(api)

_SKETCH_BODY = {
    "parameters": [
        {"name": "k", "in": "query", "required": False, "schema": {"type": "integer"}},
        {"name": "mode", "in": "query", "required": False, "schema": {"type": "string"}},
        {"name": "rerank_k", "in": "query", "required": False, "schema": {"type": "integer"}},
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "string", "description": "base64 PNG/JPEG/WebP (or a data: URL)"},
                        "strokes": {"description": "QuickDraw strokes, raw or simplified: [[[x...],[y...]], ...]"},
                        "k": {"type": "integer"},
                        "mode": {"type": "string", "description": "a served mode of the model (GET /v1/info)"},
                        "rerank_k": {"type": "integer"},
                    },
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "sketch": {"type": "string", "format": "binary"},
                        "k": {"type": "integer"},
                        "mode": {"type": "string"},
                        "rerank_k": {"type": "integer"},
                    },
                }
            },
        },
    },
}


def _result(rank: int, item: GalleryItem, score: float) -> dict[str, Any]:
    return {
        "rank": rank,
        "id": item.id,
        "score": score,
        "class": item.class_name,
        "path": item.path,
        "image_url": f"/v1/gallery/{item.id}/image",
    }


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    """HTTP, the encoder and the search pipeline; the gallery in-process or over the shard deployments."""

    async def __init__(self, settings: AppSettings, device: str, shards: list[DeploymentHandle]) -> None:
        import faiss
        import torch

        self.settings = settings
        self.limits = settings.serve
        self.device = device
        self.shards = shards
        threads = self.limits.ingress.compute_threads
        torch.set_num_threads(threads)  # Ray gives a fractional replica one thread; the config decides
        faiss.omp_set_num_threads(threads)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")  # torch and FAISS work
        self.metrics = EndpointMetrics()
        api.state.metrics, api.state.api_key = self.metrics, settings.api_key
        self.retrievers: Loaded[Retriever] = Loaded(self._open)
        self.versions = ModelVersions(settings, self._warm, self.metrics.gallery_size.set)
        asyncio.get_event_loop().create_task(self._follow_journal())
        await self.versions.start(wait=self.limits.load_before_ready)  # Serve counts the replica started after this

    # ----------------------------------------------------------------- versions
    async def _open(self, model: ServingModel) -> Retriever:
        """Load a version: the encoder here, the gallery here (one shard) or in the shard deployments."""
        loop = asyncio.get_running_loop()
        encoder = await loop.run_in_executor(
            self.executor, lambda: Encoder.from_checkpoint(model.checkpoint_dir, device=self.device)
        )
        gallery: GalleryView
        if self.shards:
            gallery = ShardedGallery(model, self.shards)
            await gallery.load()
        else:
            holder = await ShardHolder.open(
                model, ShardSpec(), self.executor, self.limits.max_batch_size, encoder=encoder
            )
            gallery = LocalGallery(holder)
        retriever = Retriever(
            model, encoder, gallery, self.executor, self.limits.max_batch_size, self.limits.batch_wait_timeout_s
        )
        await retriever.follow_journal()
        return retriever

    async def _warm(self, model: ServingModel) -> int:
        size, _ = await (await self.retrievers.get(model)).info()
        return size

    async def _retriever(self) -> Retriever:
        return await self.retrievers.get(self.versions.serving())

    async def _follow_journal(self) -> None:
        """Updates other replicas journaled reach this one within ``serve.gallery.sync_interval_s``."""
        while True:
            await asyncio.sleep(self.limits.gallery.sync_interval_s)
            for retriever in self.retrievers.loaded():
                try:
                    await retriever.follow_journal()
                    await retriever.gallery.sync(retriever.seq)
                except Exception as exc:  # a journal being copied on a shared filesystem: next time
                    logger.warning("journal sync failed: %s", exc)

    # ----------------------------------------------------------------- the drawing page (docs/serving.md#the-page)
    @api.get("/", include_in_schema=False)
    async def page(self) -> Response:
        """The drawing page; it holds no data, so it answers without the API key (and asks for it)."""
        return Response((STATIC_DIR / "index.html").read_bytes(), media_type="text/html; charset=utf-8")

    @api.get("/static/{name}", include_in_schema=False)
    async def static_file(self, name: str) -> Response:
        if name not in STATIC_FILES:  # a fixed list: no name from a request reaches the filesystem
            return error_response(404, f"no static file {name!r}")
        return Response((STATIC_DIR / name).read_bytes(), media_type=STATIC_FILES[name])

    # ----------------------------------------------------------------- probes and info
    @api.get("/healthz", summary="alive (answers even while loading)")
    async def healthz(self) -> dict[str, str]:
        return {"status": "alive"}

    @api.get("/readyz", summary="ready: the model and its gallery are loaded")
    async def readyz(self) -> Response:
        current = self.versions.current
        if current is None:
            return error_response(503, f"not ready: {self.versions.load_error or 'loading'}")
        return JSONResponse({"status": "ready", "model_id": current.model_id})

    @api.get("/metrics", name="metrics", summary="Prometheus metrics", dependencies=KEYED)
    async def prometheus(self) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

    @api.get("/v1/info", summary="what is served: model, version, method, gallery", dependencies=KEYED)
    async def info(self) -> Response:
        model = self.versions.serving()
        retriever = await self.retrievers.get(model)
        family = retriever.family
        size, index_kind = await retriever.info()
        return JSONResponse(
            {
                "model": model.reference,
                "model_id": model.model_id,
                "version": model.version,
                "run_id": model.run_id,
                "method": family.name,
                "method_title": family.title,
                "modes": list(family.served_modes),
                "default_mode": family.default_mode,
                "explains": family.explains,
                "checkpoint_sha256": model.weights_sha256,
                "gallery": model.gallery_source,
                "gallery_writable": model.writable,
                "swaps": self.versions.swaps,
                "limits": {"top_k": self.limits.top_k, "max_k": self.limits.max_k, "rerank_k": self.limits.rerank_k},
                "gallery_size": size,
                "index_kind": index_kind,
                "gallery_shards": max(1, len(self.shards)),
                "journal_entries": retriever.seq,
            }
        )

    # ----------------------------------------------------------------- search
    async def _sketch_request(self, request: Request) -> tuple[dict[str, Any], np.ndarray, str, float]:
        """The fields and the decoded sketch of a search or explain request (JSON or multipart)."""
        started = time.perf_counter()
        body = await read_body(request, self.limits.max_upload_bytes)
        media = media_type(request)
        if media == "application/json":
            fields = parse_json(body)
            sketch, source = json_sketch(fields, self.limits)
        elif media == "multipart/form-data":
            fields = await read_form(request, body)
            uploads = fields.pop("sketch", None)
            if not uploads or len(uploads) != 1:
                raise RequestError(400, "a multipart search needs exactly one file field 'sketch'")
            if any(isinstance(v, list) for v in fields.values()):
                raise RequestError(400, "only the field 'sketch' may be a file")
            sketch, source = decode_image(uploads[0][1], self.limits, "sketch"), "image"
        else:
            raise RequestError(415, f"content type {media or 'none'!r}: send application/json or multipart/form-data")
        return fields, sketch, source, time.perf_counter() - started

    @api.post("/v1/search", summary="search the gallery with a sketch", openapi_extra=_SKETCH_BODY, dependencies=KEYED)
    async def search(self, request: Request) -> Response:
        started = time.perf_counter()
        retriever = await self._retriever()
        family = retriever.family
        fields, sketch, source, decode_s = await self._sketch_request(request)
        fields = with_query_options(fields, list(request.query_params.multi_items()))
        query = search_query(fields, sketch, source, self.limits, family.served_modes)
        mode = query.mode or family.default_mode
        answer = await retriever.search(SearchJob(query.sketch, retriever.plan(query.k, mode, query.rerank_k)))
        timings = {"decode": decode_s, **answer.timings, "total": time.perf_counter() - started}
        self.metrics.batch_size.observe(answer.batch)
        if answer.rerank_batch:
            self.metrics.rerank_batch.observe(answer.rerank_batch)
        for stage, seconds in timings.items():
            self.metrics.latency.labels(stage).observe(seconds)
        return JSONResponse(
            {
                "model_id": retriever.model.model_id,
                "mode": mode,
                "k": query.k,
                "results": [_result(rank, item, score) for rank, (item, score) in enumerate(answer.hits, 1)],
                "timings": timings,
                "encoder_batch": answer.batch,
                "rerank_batch": answer.rerank_batch,
                "input": query.source,
            }
        )

    # ----------------------------------------------------------------- gallery
    @api.get("/v1/gallery/{item_id}/image", summary="a gallery photo (only items of the gallery)", dependencies=KEYED)
    async def gallery_image(self, item_id: str) -> Response:
        retriever = await self._retriever()
        wanted = gallery_id(item_id)
        items = await retriever.describe([wanted])
        path = find_image(retriever.model.gallery_dir, wanted) if items else None
        if path is None:
            raise RequestError(404, f"gallery item {wanted} does not exist or has no stored photo")
        return Response(path.read_bytes(), media_type=IMAGE_TYPES.get(path.suffix, "application/octet-stream"))

    @api.post(
        "/v1/gallery",
        summary="add photos (multipart 'photo' files, optional 'class'; or JSON images)",
        dependencies=KEYED,
    )
    async def gallery_add(self, request: Request) -> Response:
        retriever = await self._writable()
        photos = await self._photos(request)
        images = [decode_image(data, self.limits, f"photo {name!r}") for name, _, data in photos]
        added = await retriever.add(photos, await retriever.encode_photos(images))
        size = await self._gallery_size(retriever)
        return JSONResponse({"added": [asdict(item) for item in added], "gallery_size": size}, status_code=201)

    async def _writable(self) -> Retriever:
        model = self.versions.serving()
        if not model.writable:
            raise RequestError(409, f"the gallery {model.gallery_source} is read-only (a copy of an s3:// gallery)")
        return await self.retrievers.get(model)

    async def _gallery_size(self, retriever: Retriever) -> int:
        size, _ = await retriever.info()
        self.metrics.gallery_size.set(size)
        return size

    async def _photos(self, request: Request) -> list[tuple[str, str | None, bytes]]:
        body = await read_body(request, self.limits.max_upload_bytes)
        media = media_type(request)
        if media == "multipart/form-data":
            fields = await read_form(request, body)
            uploads = fields.pop("photo", None)
            class_name = fields.pop("class", None)
            if fields:
                raise RequestError(400, f"unknown field(s) {', '.join(sorted(fields))}; send 'photo' files and 'class'")
            if not uploads:
                raise RequestError(400, "send one or more file fields 'photo'")
            return [(photo_name(name), class_label(class_name), data) for name, data in uploads]
        if media == "application/json":
            payload = parse_json(body)
            photos = payload.get("photos")
            if not isinstance(photos, list) or not photos or not all(isinstance(p, dict) for p in photos):
                raise RequestError(
                    400, "'photos' must be a non-empty list of {'image': base64, 'class': ..., 'name': ...}"
                )
            out = []
            for i, photo in enumerate(photos):
                data = base64_image_bytes(photo.get("image"), self.limits, f"photos[{i}].image")
                out.append((photo_name(str(photo.get("name", f"photo-{i}"))), class_label(photo.get("class")), data))
            return out
        raise RequestError(415, f"content type {media or 'none'!r}: send multipart/form-data or application/json")

    @api.delete("/v1/gallery/{item_id}", summary="remove a photo from the gallery", dependencies=KEYED)
    async def gallery_remove(self, item_id: str) -> Response:
        retriever = await self._writable()
        wanted = gallery_id(item_id)
        if not await retriever.remove(wanted):
            raise RequestError(404, f"gallery item {wanted} does not exist")
        return JSONResponse({"removed": wanted, "gallery_size": await self._gallery_size(retriever)})

    # ----------------------------------------------------------------- explain
    @api.post(
        "/v1/explain",
        summary="why a photo matches a sketch (ZSE-SBIR): attention, correspondences, synthesis",
        dependencies=KEYED,
    )
    async def explain(self, request: Request) -> Response:
        retriever = await self._retriever()
        family = retriever.family
        if not family.explains:
            raise RequestError(404, f"{family.title} has no explanations; /v1/explain serves ZSE-SBIR models")
        fields, sketch, _, _ = await self._sketch_request(request)
        unknown = sorted(set(fields) - {"id", "arrays", "image", "strokes"})
        if unknown:
            raise RequestError(400, f"unknown field(s) {', '.join(unknown)}; an explanation takes id and arrays")
        if "id" not in fields:
            raise RequestError(400, "name the gallery photo to explain with 'id'")
        wanted = parse_int(fields["id"], "id", 0, 2**62)
        arrays = str(fields.get("arrays", "false")).lower() in ("1", "true", "yes")
        if not await retriever.describe([wanted]):
            raise RequestError(404, f"gallery item {wanted} does not exist")
        out = await retriever.explain(sketch, wanted, arrays)
        if out is None:
            raise RequestError(404, f"gallery item {wanted} has no stored photo to explain against")
        out["png"] = {name: base64.b64encode(data).decode() for name, data in out["png"].items()}
        return JSONResponse({"id": wanted, **out})

    # ----------------------------------------------------------------- admin
    @api.post(
        "/v1/admin/reload", summary="resolve the model reference again and swap to a new version", dependencies=KEYED
    )
    async def admin_reload(self) -> Response:
        try:
            return JSONResponse((await self.versions.reload()).to_json())
        except SbirError as exc:
            raise RequestError(409, f"reload failed, still serving {self.versions.current_id}: {exc}") from None
