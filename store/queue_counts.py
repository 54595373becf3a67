"""Queued jobs per owner, read from the database at most once per `max_age_s` in a process.

The API checks queue room on every submission. Counting the queue each time cost a session, a
COUNT and a commit per submit; this keeps the counts of the last read and adds what this
process accepted since, so its own submissions always count. What other processes accepted
(and what workers claimed) since the last read is missed: the bounds are soft by at most
`max_age_s` of the other API processes' submissions.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from store import jobs
from store.db import Database


class QueuedCounts:
    """The queue's length per owner and in all, at most `max_age_s` old."""

    def __init__(self, db: Database, max_age_s: float = 1.0) -> None:
        self.db = db
        self.max_age_s = max_age_s
        self._counts: Counter[str] = Counter()
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def of(self, owner: str) -> tuple[int, int]:
        """(the owner's queued jobs, everyone's)."""
        with self._lock:
            if time.monotonic() - self._read_at > self.max_age_s:
                self._read()
            return self._counts[owner], self._counts.total()

    def add(self, owner: str, count: int) -> None:
        """Count `count` jobs this process just queued for `owner`."""
        with self._lock:
            self._counts[owner] += count

    def _read(self) -> None:
        # One reader at a time; the others wait for it rather than count again.
        with self.db.session() as session:
            self._counts = Counter(jobs.queued_by_owner(session))
        self._read_at = time.monotonic()
