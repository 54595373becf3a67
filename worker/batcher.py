"""A micro-batcher: job threads hand in prepared inputs, one model thread runs them in batches.

A batch closes when it is full (`max_size`), when `max_wait` has passed since its first item
arrived, or as soon as no other job is on its way (no thread is between `expecting()` and
`submit()`): at low load a lone job runs at once instead of waiting out `max_wait`, and under
load the items that gather while the model is busy form the next, full batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# Runs one batch: the items share a key; returns one output per item, in order.
RunBatch = Callable[[Hashable, Sequence[Any]], Sequence[Any]]


@dataclass
class _Pending:
    key: Hashable  # items only share a batch with items of the same key
    item: Any
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """Collects items from many threads and runs them through `run` in batches, in one thread."""

    def __init__(self, run: RunBatch, max_size: int, max_wait_s: float) -> None:
        self._run = run
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self._pending: list[_Pending] = []
        self._expected = 0  # threads preparing an item they will submit
        self._changed = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="micro-batcher", daemon=True)
        self._thread.start()

    @contextmanager
    def expecting(self) -> Iterator[None]:
        """Tell the batcher an item is being prepared (fetched, decoded) by this thread."""
        with self._changed:
            self._expected += 1
        try:
            yield
        finally:
            with self._changed:
                self._expected -= 1
                self._changed.notify_all()

    def submit(self, key: Hashable, item: Any) -> Future:
        """Queue an item; the future gets its output, or the exception its batch raised."""
        return self.submit_many([(key, item)])[0]

    def submit_many(self, items: Sequence[tuple[Hashable, Any]]) -> list[Future]:
        """Queue (key, item) pairs at once (one wake-up of the model thread); their futures."""
        pending = [_Pending(key, item) for key, item in items]
        with self._changed:
            if self._stopping:
                raise RuntimeError("the batcher is stopped")
            self._pending.extend(pending)
            self._changed.notify_all()
        return [p.future for p in pending]

    def stop(self, timeout: float | None = None) -> None:
        """Run what is queued, then end the model thread."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run_batch(batch)

    def _next_batch(self) -> list[_Pending] | None:
        with self._changed:
            while not self._pending:
                if self._stopping:
                    return None
                self._changed.wait()
            deadline = self._pending[0].arrived + self.max_wait_s
            while self._should_wait(deadline):
                self._changed.wait(deadline - time.monotonic())
            return self._take()

    def _should_wait(self, deadline: float) -> bool:
        more_coming = self._expected > 0 and not self._stopping
        full = len(self._same_key()) >= self.max_size
        return more_coming and not full and time.monotonic() < deadline

    def _same_key(self) -> list[_Pending]:
        key = self._pending[0].key
        return [p for p in self._pending if p.key == key]

    def _take(self) -> list[_Pending]:
        batch = self._same_key()[: self.max_size]
        taken = {id(p) for p in batch}
        self._pending = [p for p in self._pending if id(p) not in taken]
        return batch

    def _run_batch(self, batch: list[_Pending]) -> None:
        try:
            outputs = self._run(batch[0].key, [p.item for p in batch])
            if len(outputs) != len(batch):
                raise RuntimeError(f"{len(outputs)} outputs for a batch of {len(batch)}")
        except BaseException as exc:  # noqa: BLE001 - every waiting job must hear of it
            log.exception("batch of %d failed", len(batch))
            for pending in batch:
                pending.future.set_exception(exc)
            return
        for pending, output in zip(batch, outputs, strict=True):
            pending.future.set_result(output)


class Slots:
    """Room for `capacity` jobs at once: a worker claims only what it will start soon."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free = capacity
        self._changed = threading.Condition()

    @contextmanager
    def taking(self, count: int) -> Iterator[Room]:
        """Wait until `count` jobs (at most the capacity) fit, and hold their room for the block
        (or what `Room.keep` kept of it)."""
        room = Room(self, min(count, self.capacity))
        with self._changed:
            self._changed.wait_for(lambda: self._free >= room.count)
            self._free -= room.count
        try:
            yield room
        finally:
            self.give(room.count)

    def give(self, count: int) -> None:
        """Free room for `count` jobs."""
        with self._changed:
            self._free += count
            self._changed.notify_all()


@dataclass
class Room:
    """Room held in `Slots` for a claim; the part a claim did not fill goes back at once."""

    slots: Slots
    count: int

    def keep(self, count: int) -> None:
        """Keep room for `count` jobs only."""
        self.slots.give(self.count - count)
        self.count = count
