"""Open each epoch's input while the previous epoch trains, so per-epoch start-up overlaps compute.

Every training epoch is its own Ray Data dataset (see ``pipelines.train_loop``), and the first batch of
an epoch pays a fixed start-up: Ray Train's split coordinator starts the dataset's execution and the
first blocks have to be produced. ``EpochPrefetcher`` opens epoch ``e + 1`` and fetches its first batch
in a background thread as soon as epoch ``e`` starts, so that cost is paid during epoch ``e``'s steps
instead of as input wait. Batches and their order are unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")
_END = object()


class EpochPrefetcher(Generic[T]):
    """Iterate consecutive epochs; each one is opened, and its first item fetched, while the previous runs.

    `open_epoch(e)` returns the iterator of epoch `e` and is called in a background daemon thread, one
    epoch after another (epoch `e + 1` only once epoch `e` has its first item); `epochs` are the epochs
    the caller iterates, in order. A prefetch that is never consumed (training stopped) is abandoned:
    daemon threads never hold the process open.
    """

    def __init__(self, open_epoch: Callable[[int], Iterator[T]], epochs: range) -> None:
        self._open = open_epoch
        self._epochs = epochs
        self._pending: dict[int, Future] = {}
        self._last: Future | None = None  # the most recently started prefetch, which the next one waits for

    def _start(self, epoch: int) -> None:
        if epoch not in self._epochs or epoch in self._pending:
            return
        future: Future = Future()
        previous = self._last

        def fetch_head() -> None:
            if previous is not None:
                previous.exception()  # wait for it, whatever its outcome: epochs open one at a time
            try:
                iterator = self._open(epoch)
                future.set_result((iterator, next(iterator, _END)))
            except BaseException as exc:  # handed to the consumer of this epoch
                future.set_exception(exc)

        self._pending[epoch] = self._last = future
        threading.Thread(target=fetch_head, name=f"epoch-prefetch-{epoch}", daemon=True).start()

    def epoch(self, epoch: int) -> Iterator[T]:
        """The items of `epoch`; starting it also starts opening the next epoch in the background."""
        if epoch not in self._epochs:
            raise ValueError(f"epoch {epoch} is outside the prefetcher's epochs {self._epochs}")
        self._start(epoch)
        head = self._pending.pop(epoch)
        self._start(epoch + 1)
        return self._chain(head)

    @staticmethod
    def _chain(head: Future) -> Iterator[T]:
        iterator, first = head.result()  # re-raises an error of opening the epoch here, in the caller
        if first is _END:
            return
        yield first
        yield from iterator
