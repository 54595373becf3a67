"""Model bundles between the registry and a worker's disk: fetch a version, register a new one.

A version's files are immutable once registered, so each worker keeps a local copy per version
under `data_dir/models/` and downloads it at most once.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from core.formats import BUNDLE_CONFIG, BUNDLE_WEIGHTS, read_manifest
from store import registry
from store.blobs import BlobStore, download_dir, upload_dir
from store.db import Database
from store.tables import ModelVersion, version_name


def fetch_bundle(blobs: BlobStore, version: ModelVersion, root: Path) -> Path:
    """The version's bundle directory on this machine, downloaded unless already there."""
    local = Path(root) / "models" / f"{version.version}-{version.digest[:12]}"
    if not (local / BUNDLE_WEIGHTS).is_file():
        download_dir(blobs, version.bundle_key, local)
    return local


def register_bundle(db: Database, blobs: BlobStore, bundle_dir: Path, **origin: Any) -> int:
    """Upload a bundle and record it as a new version; returns its number.

    `origin` holds parent, training_run_id and dataset. A training run that registered before
    its worker died gets its earlier version back.
    """
    run_id: uuid.UUID | None = origin.get("training_run_id")
    manifest = read_manifest(bundle_dir)
    with db.session() as session:
        if run_id is not None and (done := registry.version_of_run(session, run_id)):
            return done.number
        new = registry.NewVersion(
            digest=manifest.digest,
            metrics=manifest.metrics,
            encoder_weights=manifest.encoder_weights,
            encoder_fingerprint=manifest.encoder_fingerprint,
            architecture=bundle_architecture(bundle_dir),
            **origin,
        )
        version = registry.register(session, new)
        # Uploaded before the row commits: a version in the registry always has its files.
        upload_dir(blobs, bundle_dir, version.bundle_key)
        return version.number


def bundle_architecture(bundle_dir: Path) -> dict[str, Any] | None:
    """A bundle's model config (decoder and sizes) as its config.json says, for the registry;
    a bundle from before the decoder was named is a GRU."""
    model = json.loads((Path(bundle_dir) / BUNDLE_CONFIG).read_text()).get("model")
    return {"decoder": "gru", **model} if isinstance(model, dict) else None


def import_bundle(db: Database, blobs: BlobStore, bundle_dir: Path, promote: bool = False) -> str:
    """Register a bundle made elsewhere (`captioner train`) as a version; its name."""
    number = register_bundle(
        db, blobs, bundle_dir, dataset={"type": "import", "path": str(bundle_dir)}
    )
    if promote:
        with db.session() as session:
            registry.promote(session, number)
    return version_name(number)
