"""EpochPrefetcher: same items in the same order, next epoch opened while the current one runs, errors kept."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from pipelines.prefetch import EpochPrefetcher

WAIT = 10.0  # seconds; generous, the events fire at once


class Epochs:
    """Fake epoch source that records which epochs were opened and can hold an epoch's first item."""

    def __init__(self, items: dict[int, list[int]]) -> None:
        self.items = items
        self.opened: list[int] = []
        self.open_events = {e: threading.Event() for e in items}
        self.release = {e: threading.Event() for e in items}
        for event in self.release.values():
            event.set()

    def open(self, epoch: int) -> Iterator[int]:
        self.opened.append(epoch)
        self.open_events[epoch].set()
        return self._iterate(epoch)

    def _iterate(self, epoch: int) -> Iterator[int]:
        assert self.release[epoch].wait(WAIT)
        yield from self.items[epoch]


def test_every_epoch_yields_its_items_in_order() -> None:
    source = Epochs({0: [1, 2, 3], 1: [], 2: [7, 8]})
    prefetch = EpochPrefetcher(source.open, range(3))
    assert [list(prefetch.epoch(e)) for e in range(3)] == [[1, 2, 3], [], [7, 8]]
    assert source.opened == [0, 1, 2]


def test_next_epoch_opens_while_the_current_one_is_consumed() -> None:
    source = Epochs({0: [1, 2, 3], 1: [4]})
    prefetch = EpochPrefetcher(source.open, range(2))
    current = prefetch.epoch(0)
    assert next(current) == 1
    assert source.open_events[1].wait(WAIT), "epoch 1 was not opened while epoch 0 was still running"
    assert list(current) == [2, 3]
    assert list(prefetch.epoch(1)) == [4]


def test_epochs_open_one_after_another() -> None:
    source = Epochs({0: [1], 1: [2]})
    source.release[0].clear()  # epoch 0 cannot produce its first item yet
    prefetch = EpochPrefetcher(source.open, range(2))
    current = prefetch.epoch(0)
    assert source.open_events[0].wait(WAIT)
    assert not source.open_events[1].wait(0.2), "epoch 1 opened before epoch 0 had its first item"
    source.release[0].set()
    assert list(current) == [1]
    assert list(prefetch.epoch(1)) == [2]


def test_resuming_starts_at_the_first_unfinished_epoch() -> None:
    source = Epochs({0: [0], 1: [1], 2: [2], 3: [3]})
    prefetch = EpochPrefetcher(source.open, range(2, 4))
    assert [list(prefetch.epoch(e)) for e in range(2, 4)] == [[2], [3]]
    assert source.opened == [2, 3]  # nothing before the resume point, nothing past the end


def test_an_error_opening_an_epoch_surfaces_when_that_epoch_is_iterated() -> None:
    def open_epoch(epoch: int) -> Iterator[int]:
        if epoch == 1:
            raise OSError("shard 1 unreadable")
        return iter([epoch])

    prefetch = EpochPrefetcher(open_epoch, range(2))
    assert list(prefetch.epoch(0)) == [0]  # epoch 1's failure does not disturb epoch 0
    with pytest.raises(OSError, match="shard 1 unreadable"):
        list(prefetch.epoch(1))


def test_an_epoch_outside_the_range_is_refused() -> None:
    prefetch = EpochPrefetcher(lambda e: iter([e]), range(2))
    with pytest.raises(ValueError, match="outside"):
        prefetch.epoch(5)
