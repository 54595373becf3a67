"""Uploaded datasets: a row per checked archive; the archive itself is one blob."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.tables import Dataset


def create_dataset(session: Session, dataset: Dataset) -> Dataset:
    """Record a checked, stored archive (flushed; the caller's session commits)."""
    session.add(dataset)
    session.flush()
    return dataset


def get_dataset(
    session: Session, dataset_id: uuid.UUID, owner: str | None = None
) -> Dataset | None:
    """One dataset (of `owner`, if given), or None."""
    dataset = session.get(Dataset, dataset_id)
    return dataset if dataset is not None and owner in (None, dataset.owner) else None


def list_datasets(session: Session, owner: str, limit: int = 100) -> list[Dataset]:
    """The owner's datasets, newest first."""
    query = select(Dataset).where(Dataset.owner == owner).order_by(Dataset.created_at.desc())
    return list(session.scalars(query.limit(limit)))
