"""Leases that follow the work: a heartbeat renews the lease of every job this worker holds,
from its claim until its result is stored, so only a worker that is gone loses its jobs."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from store import jobs
from store.db import Database

log = logging.getLogger(__name__)
BEATS_PER_LEASE = 4  # a lease survives three missed beats


class Leases:
    """The claims this worker holds, and the heartbeat thread that keeps their leases."""

    def __init__(self, db: Database, lease_seconds: float) -> None:
        self.db, self.lease_seconds = db, lease_seconds
        self._claims: dict[object, jobs.Claim] = {}  # by attempt token
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="leases", daemon=True)
        self._thread.start()

    @contextmanager
    def holding(self, claim: jobs.Claim) -> Iterator[None]:
        """Keep the claim's leases alive for the block."""
        with self._lock:
            self._claims[claim.token] = claim
        try:
            yield
        finally:
            with self._lock:
                del self._claims[claim.token]

    def stop(self) -> None:
        """End the heartbeat."""
        self._stopped.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stopped.wait(self.lease_seconds / BEATS_PER_LEASE):
            with self._lock:
                claims = list(self._claims.values())
            if not claims:
                continue
            try:
                with self.db.session() as session:
                    jobs.extend_leases(session, claims, self.lease_seconds)
            except Exception:  # noqa: BLE001 - the next beat tries again
                log.exception("could not renew the leases of %d claims", len(claims))
