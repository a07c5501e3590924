"""A small Python client of the retrieval endpoint (docs/serving.md#python-client), on httpx.

>>> client = Client("http://127.0.0.1:8000", api_key=None)
>>> hits = client.search(Path("sketch.png"), k=5).hits

Every error answer becomes a :class:`ClientError` carrying the HTTP status and the server's message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from sbir.errors import SbirError


class ClientError(SbirError):
    """The endpoint refused a request or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Hit:
    """One ranked gallery photo of a search answer."""

    rank: int
    id: int
    score: float
    class_name: str | None
    image_url: str
    path: str = ""


@dataclass(frozen=True)
class SearchResponse:
    """A search answer: which model version answered, in which mode, the hits and the server's timings."""

    model_id: str
    mode: str
    hits: list[Hit]
    timings: dict[str, float] = field(default_factory=dict)
    encoder_batch: int = 1

    @property
    def ids(self) -> list[int]:
        return [hit.id for hit in self.hits]


class Client:
    """Talks to one endpoint; the API key (if any) goes in the ``X-API-Key`` header."""

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 60.0) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self.url = _checked_url(url)
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach the endpoint at {self.url}: {exc}") from None
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except (json.JSONDecodeError, AttributeError):
                message = response.text
            raise ClientError(f"{method} {path}: {response.status_code} {message}", response.status_code)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of a call; anything else (a proxy's HTML page, another service) is a ClientError."""
        response = self._call(method, path, **kwargs)
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            kind = response.headers.get("content-type", "no content type")
            raise ClientError(
                f"{method} {path}: {self.url} answered {response.status_code} with {kind}, not JSON; is it an "
                "sbir endpoint?",
                response.status_code,
            ) from None

    def ready(self) -> bool:
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def info(self) -> dict[str, Any]:
        return self._json("GET", "/v1/info")

    def search(
        self,
        sketch: Path | bytes | None = None,
        *,
        strokes: list | dict | None = None,
        k: int | None = None,
        mode: str | None = None,
        rerank_k: int | None = None,
    ) -> SearchResponse:
        """Search with a sketch image (a file or its bytes, sent as multipart) or QuickDraw strokes (JSON)."""
        options = {key: value for key, value in (("k", k), ("mode", mode), ("rerank_k", rerank_k)) if value is not None}
        if (sketch is None) == (strokes is None):
            raise ClientError("give a sketch image or strokes, one of them")
        if strokes is not None:
            payload = self._json("POST", "/v1/search", json={"strokes": strokes, **options})
        else:
            data = Path(sketch).read_bytes() if isinstance(sketch, Path) else sketch
            files = {"sketch": ("sketch.png", data, "application/octet-stream")}
            payload = self._json("POST", "/v1/search", files=files, data={k: str(v) for k, v in options.items()})
        return _search_response(payload, self.url)

    def add(self, photos: list[Path], class_name: str | None = None) -> list[dict[str, Any]]:
        files = [("photo", (p.name, p.read_bytes(), "application/octet-stream")) for p in photos]
        data = {"class": class_name} if class_name else {}
        return self._json("POST", "/v1/gallery", files=files, data=data)["added"]

    def remove(self, gallery_id: int) -> None:
        self._call("DELETE", f"/v1/gallery/{int(gallery_id)}")

    def image(self, gallery_id: int) -> bytes:
        return self._call("GET", f"/v1/gallery/{int(gallery_id)}/image").content

    def explain(self, sketch: Path | bytes, gallery_id: int, arrays: bool = False) -> dict[str, Any]:
        data = Path(sketch).read_bytes() if isinstance(sketch, Path) else sketch
        files = {"sketch": ("sketch.png", data, "application/octet-stream")}
        form = {"id": str(int(gallery_id)), "arrays": str(arrays).lower()}
        return self._json("POST", "/v1/explain", files=files, data=form)

    def reload(self) -> dict[str, Any]:
        return self._json("POST", "/v1/admin/reload")


def _checked_url(url: str) -> str:
    """The endpoint URL without a trailing slash, or a ClientError saying why it is not one."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise ClientError(f"{url!r} is not a valid URL ({exc})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ClientError(f"{url!r} is not an endpoint URL: expected http://host:port or https://host")
    return url.rstrip("/")


def _search_response(payload: Any, url: str) -> SearchResponse:
    """A search answer, or a ClientError when the JSON is not one (another service answered)."""
    try:
        return _parse_search(payload)
    except (KeyError, TypeError, ValueError) as exc:
        raise ClientError(
            f"{url} answered JSON that is not a search result (missing {exc}); is it an sbir endpoint?"
        ) from None


def _parse_search(payload: dict[str, Any]) -> SearchResponse:
    hits = [
        Hit(r["rank"], r["id"], r["score"], r.get("class"), r["image_url"], r.get("path", ""))
        for r in payload["results"]
    ]
    return SearchResponse(
        payload["model_id"], payload["mode"], hits, payload.get("timings", {}), payload.get("encoder_batch", 1)
    )
