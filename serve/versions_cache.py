"""The last few model versions a replica loaded, by model id: a swap loads the new one beside the old."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from serve.model import ServingModel

logger = logging.getLogger(__name__)

T = TypeVar("T")
KEEP_VERSIONS = 2  # the serving version and the one before it, so a swap never drops requests in flight


class Loaded(Generic[T]):
    """What ``load`` made of each of the last ``KEEP_VERSIONS`` versions asked for."""

    def __init__(self, load: Callable[[ServingModel], Awaitable[T]]) -> None:
        self._load = load
        self._items: OrderedDict[str, asyncio.Task[T]] = OrderedDict()

    async def get(self, model: ServingModel) -> T:
        """The loaded version (loading it once, however many requests ask at the same time)."""
        key = model.model_id
        if key not in self._items:
            logger.info("loading %s", key)
            self._items[key] = asyncio.ensure_future(self._load(model))
            while len(self._items) > KEEP_VERSIONS:
                self._items.popitem(last=False)
        self._items.move_to_end(key)
        task = self._items[key]
        try:
            return await asyncio.shield(task)
        except Exception:
            if self._items.get(key) is task:  # a failed load is tried again by the next request
                del self._items[key]
            raise

    def loaded(self) -> list[T]:
        """The versions that finished loading."""
        return [
            task.result()
            for task in self._items.values()
            if task.done() and not task.cancelled() and not task.exception()
        ]
