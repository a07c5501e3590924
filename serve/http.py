"""HTTP plumbing of the endpoint: JSON errors, bounded bodies, multipart forms, the API key, request counts.

Every answer to a problem is JSON ``{"error": ...}`` with a 4xx status (a 500 only for a bug, which is logged
and never takes the replica down). ``install(api)`` wires the handlers and the middleware into the FastAPI app.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sbir.errors import SbirError
from serve.metrics import EndpointMetrics
from serve.requests import RequestError

logger = logging.getLogger(__name__)

API_KEY_ENV = "SBIR_API_KEY"


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _request_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestError)
    return error_response(exc.status, str(exc))


async def _project_error(_: Request, exc: Exception) -> JSONResponse:
    return error_response(400, str(exc))


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return error_response(400, problems or "invalid request")


class AnswerEveryRequest:
    """ASGI middleware: a bug in a route becomes a logged JSON 500 instead of a dropped connection, every
    answer of a counted route is counted by route and status in the app's metrics, and every answer says how
    long the application took (``Server-Timing: app;dur=<ms>``, shown by browsers' developer tools)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: list[int] = []
        started = time.perf_counter()

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                took = (time.perf_counter() - started) * 1000
                message["headers"] = [*message.get("headers", []), (b"server-timing", f"app;dur={took:.2f}".encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception as exc:
            if status:
                raise
            logger.exception("%s %s failed", scope.get("method"), scope.get("path"))
            await error_response(500, f"internal error: {type(exc).__name__}: {exc}")(scope, receive, send_and_note)
        route = scope.get("route")
        metrics: EndpointMetrics | None = getattr(scope["app"].state, "metrics", None)
        if route is not None and metrics is not None and getattr(route, "name", None) in metrics.counted:
            metrics.requests.labels(route.name, str(status[0] if status else 500)).inc()


def install(api: FastAPI) -> None:
    """The endpoint's error handlers and middleware."""
    api.add_exception_handler(RequestError, _request_error)
    api.add_exception_handler(SbirError, _project_error)
    api.add_exception_handler(RequestValidationError, _validation_error)
    api.add_middleware(AnswerEveryRequest)


async def require_api_key(request: Request) -> None:
    """FastAPI dependency: the key configured for this app (``app.state.api_key``), as X-API-Key or a Bearer token."""
    key = getattr(request.app.state, "api_key", None)
    if not key:
        return
    given = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if given is None and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if given != key:
        raise RequestError(401, "an API key is required: send it as X-API-Key or 'Authorization: Bearer <key>'")


async def read_body(request: Request, limit: int) -> bytes:
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


async def read_form(request: Request, body: bytes) -> dict[str, Any]:
    """A multipart body, already read, as {field: str | [(filename, bytes), ...]}."""

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


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()
