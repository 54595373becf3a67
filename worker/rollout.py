"""Which model an inference worker serves, and how it changes without stopping.

At start the worker serves the registry's active version (or MODEL_BUNDLE before the first
promotion, or waits for one). Then a thread polls the registry every MODEL_POLL_S; when another
version becomes active it downloads and loads it beside the serving one, compiles its decoder,
and swaps it in: the batch running keeps the model it started with, the next batch gets the new
one. A bundle trained on another encoder, or of a format or decoder this version cannot build, is
refused (and reported), and the old one serves on.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from core.errors import BundleError
from core.formats import weights_digest
from core.metrics import MODEL_SWAP_SECONDS, show_version
from core.options import DEFAULT_MAX_LENGTH
from core.settings import Settings
from store import registry
from store.blobs import BlobStore
from store.db import Database
from store.tables import ModelVersion, utcnow
from worker.bundles import fetch_bundle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Served:
    """A loaded model and the version name jobs record for it."""

    captioner: object  # model.inference.Captioner
    version: str


class Rollout:
    """Loads the first model, then follows the registry's active version on a thread."""

    def __init__(self, settings: Settings, worker: str, db: Database, blobs: BlobStore) -> None:
        self.settings, self.worker, self.db, self.blobs = settings, worker, db, blobs
        self.served: Served | None = None  # replaced whole, so a reader sees one or the other
        self.refused: str | None = None  # an active version this worker cannot serve
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="rollout", daemon=True)

    def start(self) -> Served:
        """Load the first model (waiting for a promotion if there is none), then follow."""
        enable_memory_growth()
        waited = False
        while self.served is None:
            active = self._active()
            if active is None and self.settings.model_bundle is not None:
                self.served = self._load_first(None)  # the bundle it was started with
            elif active is not None and active.version != self.refused:
                try:
                    self.served = self._load_first(active)
                except BundleError as exc:
                    self._refuse(active.version, exc)
            else:
                if not waited:  # once, not at every poll
                    log.info("no model version it can serve is active; waiting for a promotion")
                waited = True
                self._report()
                if self._stop.wait(self.settings.model_poll_s):
                    raise RuntimeError("stopped while waiting for a model")
        self._report()
        show_version(self.served.version)
        self._thread.start()
        return self.served

    def stop(self) -> None:
        """End the polling thread."""
        self._stop.set()

    def _follow(self) -> None:
        while not self._stop.wait(self.settings.model_poll_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the next poll tries again; serving goes on
                log.exception("model check failed")

    def check(self) -> None:
        """Swap to the active version if it changed and fits this worker's encoder."""
        active = self._active()
        if active is None or active.version in (self.served.version, self.refused):
            self._report()
            return
        started = time.perf_counter()
        try:
            served = self._load(active, self.served.captioner.encoder)
        except BundleError as exc:  # another encoder, format or architecture: serve on
            self._refuse(active.version, exc)
            return
        self.served, self.refused = served, None
        swap_ms = (time.perf_counter() - started) * 1000
        log.info("now serving %s (loaded and swapped in %.0f ms)", served.version, swap_ms)
        show_version(served.version)
        MODEL_SWAP_SECONDS.observe(swap_ms / 1000)
        self._report(
            swap_ms=swap_ms, swapped_at=utcnow(), refused_version=None, refused_reason=None
        )

    def _refuse(self, version: str, exc: BundleError) -> None:
        """Keep `version` from being loaded again, and say why in /v1/workers."""
        log.error("refusing %s: %s", version, exc)
        self.refused = version
        self._report(refused_version=version, refused_reason=str(exc))

    def _active(self) -> ModelVersion | None:
        with self.db.session() as session:
            return registry.active_version(session)

    def _load_first(self, active: ModelVersion | None) -> Served:
        from model.bundle import load_bundle
        from model.encoder import Encoder
        from model.inference import Captioner

        started = time.perf_counter()
        path = self._bundle_dir(active)
        bundle = load_bundle(path)
        captioner = Captioner(
            bundle, Encoder(self.settings.encoder_weights or bundle.encoder.weights)
        )
        captioner.warm_up(self.settings.batch_max_size, DEFAULT_MAX_LENGTH)
        version = active.version if active else bundle_version(path)
        log.info("model %s ready in %.1f s", version, time.perf_counter() - started)
        return Served(captioner, version)

    def _load(self, version: ModelVersion, encoder) -> Served:
        """A new version on the running encoder, compiled for every batch size."""
        from model.bundle import load_bundle
        from model.inference import Captioner

        captioner = Captioner(load_bundle(self._bundle_dir(version)), encoder)
        captioner.decoding.warm_up(self.settings.batch_max_size, max_length=DEFAULT_MAX_LENGTH)
        return Served(captioner, version.version)

    def _bundle_dir(self, version: ModelVersion | None) -> Path:
        if version is None:
            return self.settings.model_bundle
        return fetch_bundle(self.blobs, version, self.settings.data_dir)

    def _report(self, **state) -> None:
        serving = self.served.version if self.served else None
        try:
            with self.db.session() as session:
                registry.report_worker(session, self.worker, model_version=serving, **state)
        except Exception:  # noqa: BLE001 - reporting is for people watching; serving goes on
            log.exception("could not report the served model")


def bundle_version(path: Path) -> str:
    """A local bundle's version (MODEL_BUNDLE): its directory name and its weights' hash."""
    return f"{Path(path).name}-{weights_digest(path)[:8]}"


def enable_memory_growth() -> None:
    """Let TensorFlow take GPU memory as it needs it, not all of it at start."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)
