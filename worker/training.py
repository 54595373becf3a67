"""The training worker: one run at a time, on the `training` queue.

`Training.run(run_id)` claims the run, readies its dataset (a built-in synthetic set, shapes or
scenes, or an uploaded archive) and its base model or its new decoder's architecture, restores
the last checkpoint from the blob store if an earlier attempt left one, trains, registers the
best weights as a new model version and applies the run's promotion policy. A heartbeat thread
renews the run's lease, stores its progress and picks up cancel requests; the training loop
stops at the next step once one arrives.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import uuid
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from core.archives import extract_archive
from core.errors import BundleError, DatasetError, LostLease, RunSkipped, TrainingStopped
from core.formats import bundle_limits
from core.settings import Settings
from store import feedback, registry, training
from store.blob_keys import checkpoint_prefix, dataset_key
from store.blobs import open_blob_store
from store.db import Database
from store.tables import RunStatus, TrainingRun
from worker.bundles import fetch_bundle, register_bundle
from worker.checkpoints import CheckpointSync

log = logging.getLogger(__name__)
SYNTHETIC = ("shapes", "scenes")  # the built-in sets, generated on the worker
SYNTHETIC_VAL_FRACTION = 0.2


class Beat(threading.Thread):
    """Renews a run's lease every few seconds, storing its latest progress; notes cancels."""

    def __init__(self, db: Database, run_id: uuid.UUID, worker: str, lease_s: float) -> None:
        super().__init__(name=f"heartbeat-{run_id}", daemon=True)
        self.db, self.run_id, self.worker, self.lease_s = db, run_id, worker, lease_s
        self.progress: dict | None = None  # replaced (not mutated) by the training thread
        self.canceled = threading.Event()
        self.lost = threading.Event()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(min(self.lease_s / 4, 5.0)):
            self.beat()

    def beat(self) -> None:
        """One renewal; errors are logged and the next beat tries again."""
        try:
            with self.db.session() as session:
                state = training.heartbeat(
                    session, self.run_id, self.worker, self.lease_s, self.progress
                )
        except Exception:  # noqa: BLE001 - a database blip must not stop training
            log.exception("heartbeat of run %s failed", self.run_id)
            return
        if not state.ours:
            self.lost.set()
        if state.cancel:
            self.canceled.set()

    def should_stop(self) -> bool:
        """Asked before every training step."""
        return self.canceled.is_set() or self.lost.is_set()

    def stop(self) -> None:
        """End the thread."""
        self._done.set()
        self.join(timeout=30)


class Training:
    """A training worker's resident state: encoders by weights, the blob store, the database."""

    def __init__(self, settings: Settings, worker: str, db: Database) -> None:
        self.settings, self.worker, self.db = settings, worker, db
        self.blobs = open_blob_store(settings)
        self._encoders: dict[str, object] = {}  # InceptionV3 takes seconds to build

    def run(self, run_id: str) -> str:
        """Take one run to a terminal status (or leave it to a worker that took it over)."""
        settings = self.settings
        with self.db.session() as session:
            run = training.claim_run(
                session,
                uuid.UUID(run_id),
                self.worker,
                settings.training_lease_s,
                settings.training_max_attempts,
            )
        if run is None:
            raise RunSkipped(run_id)
        beat = Beat(self.db, run.id, self.worker, settings.training_lease_s)
        beat.start()
        try:
            status, values = self._outcome(run, beat)
        finally:
            beat.stop()
        if beat.lost.is_set():
            raise LostLease(run_id)
        return self._finish(run, status, progress=beat.progress, **values)

    def _outcome(self, run: TrainingRun, beat: Beat) -> tuple[RunStatus, dict]:
        """Train; the terminal status and the fields to store with it."""
        try:
            return RunStatus.SUCCEEDED, self._train(run, beat)
        except TrainingStopped:
            return RunStatus.CANCELED, _error("canceled", "canceled; its last checkpoint is kept")
        except DatasetError as exc:
            return RunStatus.FAILED, _error("invalid_dataset", str(exc))
        except BundleError as exc:
            return RunStatus.FAILED, _error("incompatible_base", str(exc))
        except Exception as exc:  # noqa: BLE001 - any other failure ends the run, with its reason
            log.exception("training run %s failed", run.id)
            return RunStatus.FAILED, _error("training_failed", f"{type(exc).__name__}: {exc}")

    def _finish(self, run: TrainingRun, status: RunStatus, **values) -> str:
        promote = values.pop("promote", None)
        with self.db.session() as session:  # the run ends and its version serves together
            if not training.finish_run(session, run.id, self.worker, status, **values):
                log.warning("run %s was taken over; its outcome here is dropped", run.id)
            elif promote is not None:
                registry.promote(session, promote)
        return status.value

    def _train(self, run: TrainingRun, beat: Beat) -> dict:
        """Train, register the version, decide its promotion: the run's outcome fields."""
        from model.config import ModelConfig
        from model.data import check_images, load_dataset
        from model.training import TrainConfig, train

        splits = load_dataset(self.dataset_folder(run, beat))
        splits["train"] = [*splits["train"], *self.corrections(run)]
        for role in ("train", "val"):
            check_images(splits.get(role, []))
        base = self._base_bundle(run)
        encoder = self.encoder(base.encoder.weights if base else None)
        work = self.settings.data_dir / "training" / str(run.id)
        sync = CheckpointSync(self.blobs, checkpoint_prefix(run.id), work / "work")
        resumed = sync.restore()
        settings = dict(run.hyperparameters)
        architecture = settings.pop("model", None)  # None: a fine-tune, or a run from before it
        config = TrainConfig(**settings)
        callbacks = RunCallbacks(self.db, run, self.worker, beat, sync, resumed)
        bundle = train(
            splits,
            encoder,
            work / "bundle",
            config,
            model_config=ModelConfig(**(architecture or {})),
            work_dir=work / "work",
            cache_dir=self.settings.data_dir / "features",
            callbacks=callbacks.as_callbacks(),
            base=base,
        )
        number = register_bundle(
            self.db,
            self.blobs,
            work / "bundle",
            parent=run.base_version,
            training_run_id=run.id,
            dataset=run.dataset,
        )
        decision = self._decide(run, bundle, encoder, splits["val"][: config.val_images])
        shutil.rmtree(work, ignore_errors=True)  # the checkpoint stays in the blob store
        return {
            "model_version": number,
            "promotion_result": decision,
            "promote": number if decision["promoted"] else None,
        }

    def encoder(self, weights: str | None):
        """The encoder for these weights (the setting wins), built once per process."""
        from model.encoder import DEFAULT_WEIGHTS, Encoder

        weights = self.settings.encoder_weights or weights or DEFAULT_WEIGHTS
        if weights not in self._encoders:
            self._encoders[weights] = Encoder(weights)
        return self._encoders[weights]

    def _base_bundle(self, run: TrainingRun):
        from model.bundle import load_bundle

        if run.base_version is None:
            return None
        with self.db.session() as session:
            version = registry.get_version(session, run.base_version)
        return load_bundle(fetch_bundle(self.blobs, version, self.settings.data_dir))

    def dataset_folder(self, run: TrainingRun, beat: Beat) -> Path:
        """The run's dataset on this machine, made or fetched once and then reused."""
        spec, root = run.dataset, self.settings.data_dir / "datasets"
        if spec["type"] in SYNTHETIC:
            folder = root / f"{spec['type']}-{spec['size']}-{spec['seed']}"
            if not folder.is_dir():
                _publish(folder, lambda staging: write_synthetic(staging, spec, beat))
            return folder
        folder = root / str(run.dataset_id)
        if not folder.is_dir():
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=root.parent, suffix=".archive") as archive:
                archive.write(self.blobs.get(dataset_key(run.dataset_id)))
                archive.flush()
                extract_archive(Path(archive.name), folder)
        return dataset_root(folder)

    def corrections(self, run: TrainingRun) -> list:
        """The tenant's caption corrections the run asked to learn from, as training examples
        (each correction `weight` times), their images fetched once into data_dir/feedback."""
        from model.data import Example

        spec = run.dataset.get("feedback")
        if not spec:
            return []
        until = datetime.fromisoformat(spec["until"])
        with self.db.session() as session:
            rows = feedback.list_feedback(session, run.owner, before=until)
        folder = self.settings.data_dir / "feedback"
        folder.mkdir(parents=True, exist_ok=True)
        examples = []
        for row in rows:
            path = folder / str(row.id)
            if not path.is_file():
                path.write_bytes(self.blobs.get(row.image_key))
            examples.append(Example(f"feedback-{row.id}", path, (row.caption,) * spec["weight"]))
        log.info("learning from %d caption corrections, weight %d", len(examples), spec["weight"])
        return examples

    def _decide(self, run: TrainingRun, bundle, encoder, val_examples) -> dict:
        """Whether the new version should serve, under the run's promotion policy, and why."""
        policy, metric = run.promotion["policy"], run.promotion.get("metric")
        candidate = bundle.metrics["val"].get(metric) if metric else None

        def verdict(promoted: bool, reason: str, current: float | None = None) -> dict:
            return {
                "promoted": promoted,
                "reason": reason,
                "metric": metric,
                "candidate": candidate,
                "active": current,
                **bundle_limits(bundle.metrics),  # the new version's, as GET /v1/models shows
            }

        if policy != "if_better":
            return verdict(policy == "always", f"policy {policy}")
        with self.db.session() as session:
            active = registry.active_version(session)
        if active is None:
            return verdict(True, "no version was active")
        if active.encoder_fingerprint != encoder.fingerprint:
            return verdict(False, f"{active.version} uses another encoder")
        current = self._score(active, encoder, val_examples)[metric]
        better = candidate is not None and (current is None or candidate > current)
        comparison = "better than" if better else "not better than"
        return verdict(
            better,
            f"{metric} {candidate} is {comparison} {active.version}'s "
            f"{current} on this run's validation images",
            current,
        )

    def _score(self, version, encoder, examples) -> dict:
        """The version's validation scores on `examples` (their features are cached)."""
        from model.bundle import load_bundle
        from model.evaluation import caption_features, score
        from model.features import extract_features
        from model.inference import Decoding

        bundle = load_bundle(fetch_bundle(self.blobs, version, self.settings.data_dir))
        features = extract_features(encoder, examples, self.settings.data_dir / "features")
        return score(examples, caption_features(Decoding(bundle), features))


class RunCallbacks:
    """The training loop's hooks for one run: progress to the heartbeat, epochs to the store."""

    def __init__(self, db, run, worker, beat, sync, resumed: int | None) -> None:
        self.db, self.run, self.worker, self.beat, self.sync = db, run, worker, beat, sync
        self.resumed = resumed  # epochs done before this attempt, when it resumed

    def as_callbacks(self):
        """A model.training.Callbacks bound to this run."""
        from model.training import Callbacks

        return Callbacks(
            progress=self.progress,
            epoch_end=self.epoch_end,
            features=self.features,
            should_stop=self.beat.should_stop,
        )

    def progress(self, p) -> None:
        self.beat.progress = {"phase": "training", **asdict(p), "resumed_from_epoch": self.resumed}

    def features(self, split: str, done: int, total: int) -> None:
        self.beat.progress = {"phase": "features", "split": split, "done": done, "total": total}

    def epoch_end(self, row: dict) -> None:
        self.sync.upload()  # the checkpoint first: the history then never runs ahead of it
        history = [*(self.run.history or [])[: row["epoch"] - 1], row]
        self.run.history = history
        with self.db.session() as session:
            training.record_epoch(session, self.run.id, self.worker, history)


def _error(code: str, message: str) -> dict:
    return {"error_code": code, "error_message": message}


def write_synthetic(folder: Path, spec: dict, beat: Beat) -> None:
    """Generate a built-in synthetic set (spec's type: shapes or scenes), reporting progress as
    it goes."""
    from model.scenes import write_scenes_dataset
    from model.shapes import write_shapes_dataset

    write = {"shapes": write_shapes_dataset, "scenes": write_scenes_dataset}[spec["type"]]

    def progress(done: int) -> None:
        beat.progress = {"phase": "dataset", "done": done, "total": spec["size"]}

    write(folder, spec["size"], spec["seed"], SYNTHETIC_VAL_FRACTION, progress)


def _publish(folder: Path, make) -> None:
    """Make a folder beside its final place, then rename it there (never seen half-made)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        make(staging)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def dataset_root(folder: Path) -> Path:
    """The folder holding annotations/: the extraction folder or its one subfolder."""
    if (folder / "annotations").is_dir():
        return folder
    return next(path for path in folder.iterdir() if (path / "annotations").is_dir())
