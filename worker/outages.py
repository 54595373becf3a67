"""An outage of a dependency the worker needs (the blob store): noticed once, told once.

A job that cannot run because the blob store is away has done nothing wrong: it goes back in
the queue without spending an attempt, and waits as long as the outage has lasted so far (5 s
at least, 15 s at most), so a long outage neither fails jobs nor keeps the worker busy
retrying them, a short one delays them by about its own length, and once the store is back
its jobs run within 15 s (half of a default sweep interval; a 60 s cap let them wait a whole
minute after a minute's outage). Its deadline, if it has one, still ends it (the claim aborts
late jobs). The worker's heartbeat names the dependencies away (`is_away`).
"""

from __future__ import annotations

import logging
import threading
import time

from core.metrics import DEPENDENCY_UP

log = logging.getLogger(__name__)
MIN_DELAY_S = 5.0
MAX_DELAY_S = 15.0


class Outage:
    """Whether `dependency` is away, since when, and how long its jobs should wait."""

    def __init__(self, dependency: str) -> None:
        self.dependency = dependency
        self._lock = threading.Lock()
        self._since: float | None = None  # monotonic time of the first failure
        DEPENDENCY_UP.labels(dependency).set(1)

    def failed(self, error: BaseException) -> float:
        """Record a failure (logged when it starts an outage); the seconds its jobs should wait
        before they are tried again."""
        now = time.monotonic()
        with self._lock:
            if self._since is None:
                self._since = now
                DEPENDENCY_UP.labels(self.dependency).set(0)
                log.warning("the %s is away (%s): its jobs wait for it", self.dependency, error)
            return min(max(now - self._since, MIN_DELAY_S), MAX_DELAY_S)

    @property
    def is_away(self) -> bool:
        """Whether an outage is going on."""
        return self._since is not None

    def worked(self) -> None:
        """Record a success (logged when it ends an outage)."""
        with self._lock:
            if self._since is None:
                return
            lasted = time.monotonic() - self._since
            self._since = None
            DEPENDENCY_UP.labels(self.dependency).set(1)
            log.warning("the %s is back after %.0f s", self.dependency, lasted)
