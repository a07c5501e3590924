"""The endpoint's HTTP routes: a FastAPI ingress over the encoder, index and re-rank deployments (docs/serving.md).

Every request is checked before a model sees it (``serve.requests``); the API key is a FastAPI dependency
of every route that reads or changes data; problems are answered as JSON ``{"error": ...}`` with a 4xx
status (``serve.http``). The routes only parse and answer: which version is served is ``serve.versions``'s
job, the search itself ``serve.stages``'s.
(No ``from __future__ import annotations`` here: Serve's class-based ingress reads route signatures at run time.)
"""

import base64
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from sbir.errors import SbirError
from sbir.inference.saved_gallery import find_image
from sbir.methods import get_family
from serve import http
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
)
from serve.settings import AppSettings
from serve.stages import SearchStages
from serve.versions import ModelVersions

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
    }
}


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    """HTTP in front of the model deployments."""

    async def __init__(
        self,
        settings: AppSettings,
        encoder: DeploymentHandle,
        index: DeploymentHandle,
        reranker: DeploymentHandle | None,
    ) -> None:
        self.settings = settings
        self.limits = settings.serve
        self.metrics = EndpointMetrics()
        api.state.metrics, api.state.api_key = self.metrics, settings.api_key
        self.stages = SearchStages(encoder, index, reranker, self.metrics)
        self.versions = ModelVersions(settings, self.stages.load, self.metrics.gallery_size.set)
        await self.versions.start(wait=self.limits.load_before_ready)  # Serve counts the replica started after this

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
        family = get_family(model.method)
        described = await self.stages.index.info.remote(model)
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
                **described,
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
        model = self.versions.serving()
        family = get_family(model.method)
        fields, sketch, source, decode_s = await self._sketch_request(request)
        query = search_query(fields, sketch, source, self.limits, family.served_modes)
        result = await self.stages.search(
            model,
            family,
            query.sketch,
            k=query.k,
            mode=query.mode or family.default_mode,
            rerank_k=query.rerank_k,
            decode_s=decode_s,
        )
        return JSONResponse(result | {"input": query.source})

    # ----------------------------------------------------------------- gallery
    @api.get("/v1/gallery/{item_id}/image", summary="a gallery photo (only items of the gallery)", dependencies=KEYED)
    async def gallery_image(self, item_id: str) -> Response:
        model = self.versions.serving()
        wanted = gallery_id(item_id)
        items = await self.stages.index.describe.remote(model, [wanted])
        path = find_image(model.gallery_dir, wanted) if items else None
        if path is None:
            raise RequestError(404, f"gallery item {wanted} does not exist or has no stored photo")
        return Response(path.read_bytes(), media_type=IMAGE_TYPES.get(path.suffix, "application/octet-stream"))

    @api.post(
        "/v1/gallery",
        summary="add photos (multipart 'photo' files, optional 'class'; or JSON images)",
        dependencies=KEYED,
    )
    async def gallery_add(self, request: Request) -> Response:
        model = self._writable()
        photos = await self._photos(request)
        images = [decode_image(data, self.limits, f"photo {name!r}") for name, _, data in photos]
        encoded = [await self.stages.encode(model, image, "photo") for image in images]
        arrays = {key: np.concatenate([e.arrays[key] for e in encoded]) for key in encoded[0].arrays}
        added = await self.stages.index.add.remote(model, photos, arrays)
        size = await self._gallery_size(model)
        return JSONResponse({"added": [asdict(item) for item in added], "gallery_size": size}, status_code=201)

    def _writable(self) -> ServingModel:
        model = self.versions.serving()
        if not model.writable:
            raise RequestError(409, f"the gallery {model.gallery_source} is read-only (a copy of an s3:// gallery)")
        return model

    async def _gallery_size(self, model: ServingModel) -> int:
        size = (await self.stages.index.info.remote(model))["gallery_size"]
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
        model = self._writable()
        wanted = gallery_id(item_id)
        if not await self.stages.index.remove.remote(model, wanted):
            raise RequestError(404, f"gallery item {wanted} does not exist")
        return JSONResponse({"removed": wanted, "gallery_size": await self._gallery_size(model)})

    # ----------------------------------------------------------------- explain
    @api.post(
        "/v1/explain",
        summary="why a photo matches a sketch (ZSE-SBIR): attention, correspondences, synthesis",
        dependencies=KEYED,
    )
    async def explain(self, request: Request) -> Response:
        model = self.versions.serving()
        family = get_family(model.method)
        if not family.explains or self.stages.reranker is None:
            raise RequestError(404, f"{family.title} has no explanations; /v1/explain serves ZSE-SBIR models")
        fields, sketch, _, _ = await self._sketch_request(request)
        unknown = sorted(set(fields) - {"id", "arrays", "image", "strokes"})
        if unknown:
            raise RequestError(400, f"unknown field(s) {', '.join(unknown)}; an explanation takes id and arrays")
        if "id" not in fields:
            raise RequestError(400, "name the gallery photo to explain with 'id'")
        wanted = parse_int(fields["id"], "id", 0, 2**62)
        arrays = str(fields.get("arrays", "false")).lower() in ("1", "true", "yes")
        if not await self.stages.index.describe.remote(model, [wanted]):
            raise RequestError(404, f"gallery item {wanted} does not exist")
        out = await self.stages.reranker.explain.remote(model, sketch, wanted, arrays)
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
