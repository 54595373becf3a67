"""A training run's checkpoint folder, mirrored to the blob store after every epoch.

Whichever worker picks a run up again (after a crash, possibly on another machine) restores the
folder first, and the trainer resumes from the last finished epoch. Files are uploaded before
TensorFlow's `checkpoint` index that points at them, and stale files deleted after it, so the
stored copy always names a checkpoint it holds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from store.blobs import BlobStore, download_dir

INDEX = "checkpoint"  # tf.train.CheckpointManager's pointer to the latest checkpoint
HISTORY = "history.json"


class CheckpointSync:
    """Mirror `local` (a trainer's work folder) at `prefix` in the blob store."""

    def __init__(self, blobs: BlobStore, prefix: str, local: Path) -> None:
        self.blobs, self.prefix, self.local = blobs, prefix, Path(local)
        self._sent: dict[str, tuple[int, int]] = {}  # relative path → (size, mtime_ns)

    def restore(self) -> int | None:
        """Replace the local folder with the stored one; the epochs it holds, or None."""
        if not self.blobs.list(self.prefix):
            return None
        shutil.rmtree(self.local, ignore_errors=True)
        download_dir(self.blobs, self.prefix, self.local)
        self._sent = {name: _stamp(self.local / name) for name in self._files()}
        history = self.local / HISTORY
        return len(json.loads(history.read_text())) if history.is_file() else 0

    def upload(self) -> int:
        """Send new and changed files, the index last, then delete stale ones; returns sent."""
        names = self._files()
        changed = [n for n in names if self._sent.get(n) != _stamp(self.local / n)]
        changed.sort(key=lambda name: Path(name).name == INDEX)  # the index goes last
        for name in changed:
            self.blobs.put(self.prefix + name, (self.local / name).read_bytes())
            self._sent[name] = _stamp(self.local / name)
        for name in set(self._sent) - set(names):
            self.blobs.delete(self.prefix + name)
            del self._sent[name]
        return len(changed)

    def _files(self) -> list[str]:
        return sorted(
            p.relative_to(self.local).as_posix() for p in self.local.rglob("*") if p.is_file()
        )


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns
