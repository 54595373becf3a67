"""Model bundles between the registry and a worker's disk: fetch a version, register a new one.

A version's files are immutable once registered, so each worker keeps a local copy per version
under `data_dir/models/` and downloads it at most once.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

from store import registry
from store.blobs import BlobStore, download_dir, upload_dir
from store.db import Database
from store.models import ModelVersion, version_name

WEIGHTS = "decoder.weights.h5"  # model.bundle.WEIGHTS, without importing TensorFlow here


def fetch_bundle(blobs: BlobStore, version: ModelVersion, root: Path) -> Path:
    """The version's bundle directory on this machine, downloaded unless already there."""
    local = Path(root) / "models" / f"{version.version}-{version.digest[:12]}"
    if not (local / WEIGHTS).is_file():
        download_dir(blobs, version.bundle_key, local)
    return local


def weights_digest(bundle_dir: Path) -> str:
    """sha256 of a bundle's decoder weights: tells two bundles apart."""
    return hashlib.sha256((Path(bundle_dir) / WEIGHTS).read_bytes()).hexdigest()


def register_bundle(db: Database, blobs: BlobStore, bundle_dir: Path, metrics: dict[str, Any],
                    encoder: tuple[str, str], **origin: Any) -> int:  # fmt: skip
    """Upload a bundle and record it as a new version; returns its number.

    `encoder` is (weights, fingerprint); `origin` holds parent, training_run_id and dataset.
    A training run that registered before its worker died gets its earlier version back.
    """
    run_id: uuid.UUID | None = origin.get("training_run_id")
    with db.session() as session:
        if run_id is not None and (done := registry.version_of_run(session, run_id)):
            return done.number
        new = registry.NewVersion(digest=weights_digest(bundle_dir), encoder_weights=encoder[0],
                                  encoder_fingerprint=encoder[1], metrics=metrics,
                                  **origin)  # fmt: skip
        version = registry.register(session, new)
        # Uploaded before the row commits: a version in the registry always has its files.
        upload_dir(blobs, bundle_dir, version.bundle_key)
        return version.number


def import_bundle(db: Database, blobs: BlobStore, bundle_dir: Path, promote: bool = False) -> str:
    """Register a bundle made elsewhere (`captioner train`) as a version; its name."""
    config = json.loads((Path(bundle_dir) / "config.json").read_text())
    metrics_file = Path(bundle_dir) / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    encoder = (config["encoder"]["weights"], config["encoder"]["fingerprint"])
    number = register_bundle(db, blobs, bundle_dir, metrics, encoder,
                             dataset={"type": "import", "path": str(bundle_dir)})  # fmt: skip
    if promote:
        with db.session() as session:
            registry.promote(session, number)
    return version_name(number)
