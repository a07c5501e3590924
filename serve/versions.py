"""The model-version lifecycle of one ingress replica: load the first version, poll for a new one, swap.

A version is resolved from the model reference (``serve.model.resolve_serving``) and loaded in the model
deployments before it is served; a new one is loaded beside the old one and swapped in only once ready,
so a swap (``/v1/admin/reload``, or ``serve.reload_interval_s``) never fails a request in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sbir.errors import SbirError
from serve.model import ServingModel, resolve_serving
from serve.requests import RequestError
from serve.settings import AppSettings

logger = logging.getLogger(__name__)


class ModelLoadError(SbirError):
    """With serve.load_before_ready, the model or gallery did not load: the replica does not start."""


@dataclass(frozen=True)
class Reload:
    """The outcome of resolving the model reference again."""

    changed: bool
    model_id: str
    previous: str | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"changed": self.changed, "model_id": self.model_id}
        return out | ({"previous": self.previous} if self.previous is not None else {})


class ModelVersions:
    """Which version this replica serves; ``load`` warms a version in the model deployments and returns the
    gallery size, ``on_size`` reports it."""

    def __init__(
        self,
        settings: AppSettings,
        load: Callable[[ServingModel], Awaitable[int]],
        on_size: Callable[[int], None],
    ) -> None:
        self.settings = settings
        self._load = load
        self._on_size = on_size
        self.current: ServingModel | None = None
        self.load_error: str | None = None
        self.swaps = 0

    async def start(self, wait: bool) -> None:
        """Load the first version: now (``wait``; a failure raises ModelLoadError) or in the background."""
        if wait:
            await self._load_first()
            if self.load_error is not None:
                raise ModelLoadError(f"cannot load {self.settings.model}: {self.load_error}")
        else:
            asyncio.get_event_loop().create_task(self._load_first())

    async def _resolve(self) -> ServingModel:
        s = self.settings
        return await asyncio.to_thread(resolve_serving, s.model, s.gallery, s.tracking_uri, s.runs_dir)

    async def _load_first(self) -> None:
        try:
            model = await self._resolve()
            size = await self._load(model)
        except Exception as exc:  # keep answering /healthz and /readyz with the reason
            self.load_error = str(exc)
            logger.error("cannot load %s: %s", self.settings.model, exc)
            return
        self.current = model
        self._on_size(size)
        logger.info("serving %s (%d photos)", model.model_id, size)
        if self.settings.serve.reload_interval_s > 0:
            asyncio.get_event_loop().create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.serve.reload_interval_s)
            try:
                await self.reload()
            except Exception as exc:  # a failed reload keeps the version that works
                logger.warning("reload of %s failed, still serving %s: %s", self.settings.model, self.current_id, exc)

    @property
    def current_id(self) -> str:
        return self.current.model_id if self.current else "nothing"

    async def reload(self) -> Reload:
        """Resolve the reference again; load a new version beside the old one, then swap."""
        candidate = await self._resolve()
        if self.current is not None and candidate.model_id == self.current.model_id:
            return Reload(False, candidate.model_id)
        size = await self._load(candidate)
        previous, self.current = self.current_id, candidate
        self.swaps += 1
        self._on_size(size)
        logger.info("swapped %s -> %s", previous, candidate.model_id)
        return Reload(True, candidate.model_id, previous)

    def serving(self) -> ServingModel:
        """The version to answer with; a 503 naming the reason while none is loaded."""
        if self.current is None:
            raise RequestError(503, f"not ready: {self.load_error or 'the model and gallery are loading'}")
        return self.current
