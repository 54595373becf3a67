"""Progress bars on stderr for long work: dataset generation, feature extraction, epochs."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total: int, desc: str, unit: str = "img") -> tqdm:
    """A progress bar on stderr that disappears when done."""
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)


class TrainingBars:
    """tqdm bars for feature extraction and epochs, plus one line per finished epoch."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def __enter__(self) -> TrainingBars:
        return self

    def __exit__(self, *exc) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _reset(self, total: int, desc: str, unit: str) -> tqdm:
        if self.bar is None or self.bar.desc != desc:
            self._close()
            self.bar = progress_bar(total, desc, unit)
        return self.bar

    def features(self, split: str, done: int, total: int) -> None:
        bar = self._reset(total, f"features {split}", "img")
        bar.update(done - bar.n)

    def progress(self, p) -> None:
        bar = self._reset(p.steps, f"epoch {p.epoch}/{p.epochs}", "step")
        bar.update(p.step - bar.n)
        bar.set_postfix(loss=f"{p.loss:.3f}", img_s=f"{p.images_per_s:.0f}", eta=f"{p.eta_s:.0f}s")

    def epoch_end(self, row: dict) -> None:
        self._close()
        scores = " ".join(f"{k}={v:.3f}" for k, v in row.items() if isinstance(v, float))
        print(f"epoch {row['epoch']}: {scores}", file=sys.stderr)
