"""Every worker's heartbeat: its role, tasks in flight, last error and the dependencies it finds
away, written to its worker_models row every few seconds by a thread of its own (so a long
batch, a model swap or a training epoch never makes a live worker look gone). /v1/workers and
/metrics read it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from store import registry
from store.db import Database
from store.tables import utcnow

log = logging.getLogger(__name__)


class Activity:
    """Tasks this process runs now, and the last one that failed (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0
        self.last_error: tuple[str, object] | None = None  # (text, when)

    def started(self) -> None:
        """A task began."""
        with self._lock:
            self.in_flight += 1

    def ended(self) -> None:
        """A task ended, however."""
        with self._lock:
            self.in_flight -= 1

    def failed(self, error: BaseException) -> None:
        """Remember a task's failure (its type and message, at most 500 characters)."""
        self.last_error = (f"{type(error).__name__}: {error}"[:500], utcnow())


class Heartbeat:
    """Reports `activity` and the dependencies `away()` names for `worker` (with `role`) every
    `every_s` seconds until stopped."""

    def __init__(
        self,
        db: Database,
        worker: str,
        role: str,
        activity: Activity,
        every_s: float,
        away: Callable[[], list[str]] = list,
    ) -> None:
        self.db, self.worker, self.role, self.activity = db, worker, role, activity
        self.every_s, self.away = every_s, away
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def beat(self) -> None:
        """One report."""
        error, at = self.activity.last_error or (None, None)
        with self.db.session() as session:
            registry.report_worker(
                session,
                self.worker,
                role=self.role,
                in_flight=self.activity.in_flight,
                away=self.away(),
                last_error=error,
                last_error_at=at,
            )

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - the next beat tries again
                log.warning("heartbeat failed", exc_info=True)
