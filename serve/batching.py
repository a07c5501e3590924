"""Greedy request batching: a request waits only while the model is busy, and whatever queued meanwhile
goes into the next batch together.

Ray Serve's ``@serve.batch`` waits ``batch_wait_timeout_s`` after the first request of every batch, so a
lone request pays the whole timeout; with a timeout of 0 it forms a batch the moment a request arrives,
so under load the batches stay small. Greedy batching gives both: no added wait at one client, and at
many clients a batch of everything that arrived while the previous batch ran (up to ``max_batch``).
``wait_s`` optionally lingers that long to fill a batch when the model is idle (useful on a GPU).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Waiting(Generic[T, R]):
    item: T
    future: asyncio.Future[R]


class GreedyBatcher(Generic[T, R]):
    """Runs ``process(items) -> results`` (one result per item, in order) on batches of submitted items, one
    batch at a time; each ``submit`` returns its own item's result or raises the batch's error."""

    def __init__(self, process: Callable[[list[T]], Awaitable[list[R]]], max_batch: int, wait_s: float = 0.0) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.process = process
        self.max_batch = max_batch
        self.wait_s = wait_s
        self._queue: list[_Waiting[T, R]] = []
        self._running = False

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiting(item, future))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            if self.wait_s > 0 and len(self._queue) < self.max_batch:
                await asyncio.sleep(self.wait_s)
            while self._queue:
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                await self._run(batch)
        finally:
            self._running = False

    async def _run(self, batch: list[_Waiting[T, R]]) -> None:
        try:
            results = await self.process([waiting.item for waiting in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} gave {len(results)} results")
        except Exception as exc:  # every request of the batch gets the error; the batcher carries on
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(exc)
            return
        for waiting, result in zip(batch, results, strict=True):
            if not waiting.future.done():  # a cancelled request (client gone) is skipped
                waiting.future.set_result(result)
