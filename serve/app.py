"""The retrieval endpoint: a FastAPI ingress over the encoder, index and re-rank deployments (docs/serving.md).

``build_app(args)`` is the application builder that ``sbir serve``, ``serve run`` and ``serve deploy`` (and
KubeRay's ``serveConfigV2``) all use; ``args`` name the model, the gallery and the project config. The
ingress checks every request before a model sees it (``serve.requests``), answers problems as JSON
``{"error": ...}`` with a 4xx status, and never lets one request take the service down.
(No ``from __future__ import annotations`` here: Serve's class-based ingress reads route signatures at run time.)
"""

import asyncio
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from sbir.config import Config, ServeConfig
from sbir.errors import SbirError
from sbir.inference.gallery import GalleryItem
from sbir.inference.saved_gallery import find_image
from sbir.inference.search import SearchPlan
from sbir.methods import get_family
from serve.deployments import EncodeRequest, GalleryIndex, Reranker, SketchEncoder
from serve.metrics import EndpointMetrics
from serve.model import ServingModel, resolve_serving
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

logger = logging.getLogger(__name__)

API_KEY_ENV = "SBIR_API_KEY"
OPEN_PATHS = ("/healthz", "/readyz")  # probes answer without the key
PUBLIC_DOCS = ("/docs", "/openapi.json", "/docs/oauth2-redirect")
STATIC_DIR = Path(__file__).with_name("static")
STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
}

api = FastAPI(
    title="sbir retrieval endpoint",
    version="1",
    description="Zero-shot sketch-based image retrieval: search a gallery of photos with a sketch (docs/serving.md).",
)

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
                        "mode": {"type": "string", "enum": ["ret", "rn_rerank"]},
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


class ModelLoadError(SbirError):
    """With serve.load_before_ready, the model or gallery did not load: the replica does not start."""


@dataclass(frozen=True)
class AppSettings:
    """What the ingress needs to know: the limits and defaults, and what to serve (and how to re-resolve it)."""

    serve: ServeConfig
    model: str
    gallery: str | None  # None: the `gallery` artifact of the model version's run
    tracking_uri: str | None
    runs_dir: str
    api_key: str | None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@api.exception_handler(RequestError)
async def _request_error(_: Request, exc: RequestError) -> JSONResponse:
    return _error(exc.status, str(exc))


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return _error(400, problems or "invalid request")


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything above `limit` bytes before it is all read."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError(400, f"invalid Content-Length {declared!r}")
        if int(declared) > limit:
            raise RequestError(413, f"the request body is {declared} bytes, above the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the request body is above the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _form(request: Request, body: bytes) -> dict[str, Any]:
    """A multipart body, already read, as {field: str | (filename, bytes)}."""

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=64, max_fields=64)
    except Exception as exc:  # python-multipart and Starlette raise several types for a broken body
        raise RequestError(400, f"invalid multipart body: {exc}") from None
    fields: dict[str, Any] = {}
    for name, value in form.multi_items():
        if name in fields and name != "photo":
            raise RequestError(400, f"field {name!r} is given more than once")
        if hasattr(value, "read"):
            fields.setdefault(name, []).append((value.filename or "upload", await value.read()))
        else:
            fields[name] = value
    return fields


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    """HTTP in front of the model deployments: checks, API key, timings, metrics, model reloads."""

    async def __init__(
        self,
        settings: AppSettings,
        encoder: DeploymentHandle,
        index: DeploymentHandle,
        reranker: DeploymentHandle | None,
    ) -> None:
        self.settings = settings
        self.limits = settings.serve
        self.encoder, self.index, self.reranker = encoder, index, reranker
        self.metrics = EndpointMetrics()
        self.model: ServingModel | None = None
        self.load_error: str | None = None
        self.swaps = 0
        if self.limits.load_before_ready:
            await self._load_first()  # Serve counts the replica as started only after this
            if self.load_error is not None:
                raise ModelLoadError(f"cannot load {settings.model}: {self.load_error}")
        else:
            self._loader = asyncio.get_event_loop().create_task(self._load_first())

    # ----------------------------------------------------------------- model lifecycle
    async def _resolve(self) -> ServingModel:
        s = self.settings
        return await asyncio.to_thread(resolve_serving, s.model, s.gallery, s.tracking_uri, s.runs_dir)

    async def _warm(self, model: ServingModel) -> int:
        """Load a version in every model deployment (one replica each; others load on first use)."""
        calls = [self.encoder.load.remote(model), self.index.load.remote(model)]
        if self.reranker is not None:
            calls.append(self.reranker.load.remote(model))
        results = [await call for call in calls]
        return int(results[1])

    async def _load_first(self) -> None:
        try:
            model = await self._resolve()
            size = await self._warm(model)
        except Exception as exc:  # keep answering /healthz and /readyz with the reason
            self.load_error = str(exc)
            logger.error("cannot load %s: %s", self.settings.model, exc)
            return
        self.model = model
        self.metrics.gallery_size.set(size)
        logger.info("serving %s (%d photos)", model.model_id, size)
        if self.limits.reload_interval_s > 0:
            asyncio.get_event_loop().create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.limits.reload_interval_s)
            try:
                await self.reload_model()
            except Exception as exc:  # a failed reload keeps the version that works
                logger.warning("reload of %s failed, still serving %s: %s", self.settings.model, self._id(), exc)

    def _id(self) -> str:
        return self.model.model_id if self.model else "nothing"

    async def reload_model(self) -> dict[str, Any]:
        """Resolve the reference again; load a new version beside the old one, then swap."""
        candidate = await self._resolve()
        if self.model is not None and candidate.model_id == self.model.model_id:
            return {"changed": False, "model_id": candidate.model_id}
        size = await self._warm(candidate)
        previous, self.model = self._id(), candidate
        self.swaps += 1
        self.metrics.gallery_size.set(size)
        logger.info("swapped %s -> %s", previous, candidate.model_id)
        return {"changed": True, "model_id": candidate.model_id, "previous": previous}

    def _serving(self) -> ServingModel:
        if self.model is None:
            raise RequestError(503, f"not ready: {self.load_error or 'the model and gallery are loading'}")
        return self.model

    # ----------------------------------------------------------------- cross-cutting
    def _check_key(self, request: Request) -> None:
        key = self.settings.api_key
        if not key or request.url.path in OPEN_PATHS:
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if given != key:
            raise RequestError(401, "an API key is required: send it as X-API-Key or 'Authorization: Bearer <key>'")

    async def _answer(self, endpoint: str, request: Request, handler) -> Response:
        """Run a handler with the API key check; count it; turn every failure into a JSON answer."""
        try:
            self._check_key(request)
            response = await handler()
        except RequestError as exc:
            response = _error(exc.status, str(exc))
        except SbirError as exc:
            response = _error(400, str(exc))
        except Exception as exc:
            logger.exception("%s failed", endpoint)
            response = _error(500, f"internal error: {type(exc).__name__}: {exc}")
        self.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        return response

    # ----------------------------------------------------------------- the drawing page (docs/serving.md#the-page)
    @api.get("/", include_in_schema=False)
    async def page(self) -> Response:
        """The drawing page; it holds no data, so it answers without the API key (and asks for it)."""
        return Response((STATIC_DIR / "index.html").read_bytes(), media_type="text/html; charset=utf-8")

    @api.get("/static/{name}", include_in_schema=False)
    async def static_file(self, name: str) -> Response:
        if name not in STATIC_FILES:  # a fixed list: no name from a request reaches the filesystem
            return _error(404, f"no static file {name!r}")
        return Response((STATIC_DIR / name).read_bytes(), media_type=STATIC_FILES[name])

    # ----------------------------------------------------------------- probes and info
    @api.get("/healthz", summary="alive (answers even while loading)")
    async def healthz(self) -> dict[str, str]:
        return {"status": "alive"}

    @api.get("/readyz", summary="ready: the model and its gallery are loaded")
    async def readyz(self) -> Response:
        if self.model is None:
            return _error(503, f"not ready: {self.load_error or 'loading'}")
        return JSONResponse({"status": "ready", "model_id": self.model.model_id})

    @api.get("/metrics", summary="Prometheus metrics")
    async def prometheus(self, request: Request) -> Response:
        async def handler() -> Response:
            return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

        return await self._answer("metrics", request, handler)

    @api.get("/v1/info", summary="what is served: model, version, method, gallery")
    async def info(self, request: Request) -> Response:
        async def handler() -> Response:
            model = self._serving()
            family = get_family(model.method)
            described = await self.index.info.remote(model)
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
                    "swaps": self.swaps,
                    "limits": {
                        "top_k": self.limits.top_k,
                        "max_k": self.limits.max_k,
                        "rerank_k": self.limits.rerank_k,
                    },
                    **described,
                }
            )

        return await self._answer("info", request, handler)

    # ----------------------------------------------------------------- search
    async def _sketch_request(self, request: Request) -> tuple[dict[str, Any], np.ndarray, str, float]:
        """The fields and the decoded sketch of a search or explain request (JSON or multipart)."""
        started = time.perf_counter()
        body = await _read_body(request, self.limits.max_upload_bytes)
        media = _media_type(request)
        if media == "application/json":
            fields = parse_json(body)
            sketch, source = json_sketch(fields, self.limits)
        elif media == "multipart/form-data":
            fields = await _form(request, body)
            uploads = fields.pop("sketch", None)
            if not uploads or len(uploads) != 1:
                raise RequestError(400, "a multipart search needs exactly one file field 'sketch'")
            if any(isinstance(v, list) for v in fields.values()):
                raise RequestError(400, "only the field 'sketch' may be a file")
            sketch, source = decode_image(uploads[0][1], self.limits, "sketch"), "image"
        else:
            raise RequestError(415, f"content type {media or 'none'!r}: send application/json or multipart/form-data")
        return fields, sketch, source, time.perf_counter() - started

    async def _encode(self, model: ServingModel, image: np.ndarray, modality: str):
        return await self.encoder.encode.remote(EncodeRequest(model, modality, image))

    @api.post("/v1/search", summary="search the gallery with a sketch", openapi_extra=_SKETCH_BODY)
    async def search(self, request: Request) -> Response:
        async def handler() -> Response:
            model = self._serving()
            family = get_family(model.method)
            fields, sketch, source, decode_s = await self._sketch_request(request)
            query = search_query(fields, sketch, source, self.limits, family.served_modes)
            mode = query.mode or family.default_mode
            result = await self._search(model, query.sketch, query.k, mode, query.rerank_k, decode_s)
            result["input"] = query.source
            return JSONResponse(result)

        return await self._answer("search", request, handler)

    async def _search(
        self, model: ServingModel, sketch: np.ndarray, k: int, mode: str, rerank_k: int, decode_s: float
    ) -> dict:
        """Encode, search the index, re-rank (rn_rerank); timings per stage, `total` including decoding."""
        started = time.perf_counter()
        encoded = await self._encode(model, sketch, "sketch")
        self.metrics.batch_size.observe(encoded.batch_size)
        family = get_family(model.method)
        embedding = family.encoding.from_arrays(encoded.arrays).retrieval_embeddings().numpy()
        plan = SearchPlan.for_mode(k, mode, family.rerank_mode, rerank_k, 2**62)
        hits = await self.index.search.remote(model, embedding, plan.depth)
        ids, scores, items = hits.ids.reshape(1, -1), hits.scores.reshape(1, -1), hits.items
        timings = {"decode": decode_s, "encode": encoded.seconds, "search": hits.seconds, "rerank": 0.0}
        relation = None
        if plan.rerank and ids.size:
            relation, timings["rerank"] = await self.reranker.rerank.remote(
                model, encoded.arrays, plan.rerank_ids(ids)[0]
            )
            relation = relation.reshape(1, -1)
        result = plan.finish(ids, scores, relation)
        ids, scores = result.ids[0], result.scores[0]
        found = [(items[int(i)], float(s)) for i, s in zip(ids, scores, strict=True) if int(i) in items]
        results = [self._result(rank, item, score) for rank, (item, score) in enumerate(found, 1)]
        timings["total"] = decode_s + time.perf_counter() - started
        for stage, seconds in timings.items():
            self.metrics.latency.labels(stage).observe(seconds)
        return {
            "model_id": model.model_id,
            "mode": mode,
            "k": k,
            "results": results,
            "timings": timings,
            "encoder_batch": encoded.batch_size,
        }

    @staticmethod
    def _result(rank: int, item: GalleryItem, score: float) -> dict[str, Any]:
        return {
            "rank": rank,
            "id": item.id,
            "score": score,
            "class": item.class_name,
            "path": item.path,
            "image_url": f"/v1/gallery/{item.id}/image",
        }

    # ----------------------------------------------------------------- gallery
    @api.get("/v1/gallery/{item_id}/image", summary="a gallery photo (only items of the gallery)")
    async def gallery_image(self, item_id: str, request: Request) -> Response:
        async def handler() -> Response:
            model = self._serving()
            wanted = gallery_id(item_id)
            items = await self.index.describe.remote(model, [wanted])
            path = find_image(model.gallery_dir, wanted) if items else None
            if path is None:
                raise RequestError(404, f"gallery item {wanted} does not exist or has no stored photo")
            return Response(path.read_bytes(), media_type=IMAGE_TYPES.get(path.suffix, "application/octet-stream"))

        return await self._answer("gallery_image", request, handler)

    @api.post("/v1/gallery", summary="add photos (multipart 'photo' files, optional 'class'; or JSON images)")
    async def gallery_add(self, request: Request) -> Response:
        async def handler() -> Response:
            model = self._serving()
            if not model.writable:
                raise RequestError(409, f"the gallery {model.gallery_source} is read-only (a copy of an s3:// gallery)")
            photos = await self._photos(request)
            images = [decode_image(data, self.limits, f"photo {name!r}") for name, _, data in photos]
            encoded = [await self._encode(model, image, "photo") for image in images]
            arrays = {key: np.concatenate([e.arrays[key] for e in encoded]) for key in encoded[0].arrays}
            added = await self.index.add.remote(model, photos, arrays)
            size = (await self.index.info.remote(model))["gallery_size"]
            self.metrics.gallery_size.set(size)
            return JSONResponse({"added": [asdict(item) for item in added], "gallery_size": size}, status_code=201)

        return await self._answer("gallery_add", request, handler)

    async def _photos(self, request: Request) -> list[tuple[str, str | None, bytes]]:
        body = await _read_body(request, self.limits.max_upload_bytes)
        media = _media_type(request)
        if media == "multipart/form-data":
            fields = await _form(request, body)
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

    @api.delete("/v1/gallery/{item_id}", summary="remove a photo from the gallery")
    async def gallery_remove(self, item_id: str, request: Request) -> Response:
        async def handler() -> Response:
            model = self._serving()
            if not model.writable:
                raise RequestError(409, f"the gallery {model.gallery_source} is read-only (a copy of an s3:// gallery)")
            wanted = gallery_id(item_id)
            if not await self.index.remove.remote(model, wanted):
                raise RequestError(404, f"gallery item {wanted} does not exist")
            size = (await self.index.info.remote(model))["gallery_size"]
            self.metrics.gallery_size.set(size)
            return JSONResponse({"removed": wanted, "gallery_size": size})

        return await self._answer("gallery_remove", request, handler)

    # ----------------------------------------------------------------- explain
    @api.post("/v1/explain", summary="why a photo matches a sketch (ZSE-SBIR): attention, correspondences, synthesis")
    async def explain(self, request: Request) -> Response:
        async def handler() -> Response:
            model = self._serving()
            family = get_family(model.method)
            if not family.explains or self.reranker is None:
                raise RequestError(404, f"{family.title} has no explanations; /v1/explain serves ZSE-SBIR models")
            fields, sketch, _, _ = await self._sketch_request(request)
            unknown = sorted(set(fields) - {"id", "arrays", "image", "strokes"})
            if unknown:
                raise RequestError(400, f"unknown field(s) {', '.join(unknown)}; an explanation takes id and arrays")
            if "id" not in fields:
                raise RequestError(400, "name the gallery photo to explain with 'id'")
            wanted = parse_int(fields["id"], "id", 0, 2**62)
            arrays = str(fields.get("arrays", "false")).lower() in ("1", "true", "yes")
            if not await self.index.describe.remote(model, [wanted]):
                raise RequestError(404, f"gallery item {wanted} does not exist")
            out = await self.reranker.explain.remote(model, sketch, wanted, arrays)
            if out is None:
                raise RequestError(404, f"gallery item {wanted} has no stored photo to explain against")
            import base64

            out["png"] = {name: base64.b64encode(data).decode() for name, data in out["png"].items()}
            return JSONResponse({"id": wanted, **out})

        return await self._answer("explain", request, handler)

    # ----------------------------------------------------------------- admin
    @api.post("/v1/admin/reload", summary="resolve the model reference again and swap to a new version")
    async def admin_reload(self, request: Request) -> Response:
        async def handler() -> Response:
            try:
                return JSONResponse(await self.reload_model())
            except SbirError as exc:
                raise RequestError(409, f"reload failed, still serving {self._id()}: {exc}") from None

        return await self._answer("admin_reload", request, handler)


# --------------------------------------------------------------------- the application
APP_ARGS = ("config", "model", "gallery", "tracking_uri", "runs_dir", "overrides")


class AppArgsError(SbirError):
    exit_code = 2


def _config(args: dict[str, Any]) -> Config:
    from sbir.config import load_config

    overrides = args.get("overrides") or []
    if isinstance(overrides, str):
        overrides = [part for part in overrides.split(",") if part]
    return load_config(args.get("config"), list(overrides))


def settings_from_args(args: dict[str, Any]) -> tuple[AppSettings, Config]:
    """The builder's arguments (from `sbir serve`, a Serve config file or `serve run … key=value`), checked."""
    unknown = sorted(set(args) - set(APP_ARGS))
    if unknown:
        raise AppArgsError(f"unknown application argument(s) {', '.join(unknown)}; known: {', '.join(APP_ARGS)}")
    config = _config(args)
    model = args.get("model") or config.serve.model or os.environ.get("SBIR_MODEL")
    if not model:
        raise AppArgsError("no model to serve: pass model=<path|run id|models:/name@alias> (or serve.model)")
    gallery = args.get("gallery") or config.serve.gallery or os.environ.get("SBIR_GALLERY") or None
    settings = AppSettings(
        serve=config.serve,
        model=str(model),
        gallery=str(gallery) if gallery else None,
        tracking_uri=args.get("tracking_uri") or config.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI"),
        runs_dir=str(args.get("runs_dir") or config.run.dir),
        api_key=config.serve.api_key or os.environ.get(API_KEY_ENV) or None,
    )
    return settings, config


def build_app(args: dict[str, Any]) -> serve.Application:
    """The Serve application: Ingress -> (SketchEncoder, GalleryIndex, Reranker for relation models)."""
    settings, config = settings_from_args(dict(args))
    cfg = settings.serve
    device = config.eval.device
    encoder = SketchEncoder.options(**cfg.encoder.serve_options()).bind(
        cfg.max_batch_size, cfg.batch_wait_timeout_s, device
    )
    index = GalleryIndex.options(**cfg.index.serve_options()).bind()
    reranker = Reranker.options(**cfg.reranker.serve_options()).bind(device) if _wants_reranker(settings) else None
    return Ingress.options(**cfg.ingress.serve_options()).bind(settings, encoder, index, reranker)


def _wants_reranker(settings: AppSettings) -> bool:
    """A re-rank deployment for methods with a relation stage (known from the checkpoint, without loading it)."""
    try:
        resolved = resolve_serving(settings.model, settings.gallery, settings.tracking_uri, settings.runs_dir)
    except SbirError:
        return True  # the ingress reports the problem on /readyz; keep the deployment graph complete
    return get_family(resolved.method).reranks
