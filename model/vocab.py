"""Caption text: standardisation and the word vocabulary (top-k words plus specials)."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)
PAD_ID, START_ID, END_ID, UNK_ID = range(4)

# The tutorial's punctuation set: these characters are dropped before splitting on spaces.
_PUNCTUATION = re.compile(r"[!\"#$%&()*+.,\-/:;=?@\[\\\]^_`{|}~]")


def standardize(text: str) -> list[str]:
    """Lowercase a caption, strip punctuation and split it into words."""
    return _PUNCTUATION.sub(" ", text.lower()).split()


@dataclass(frozen=True)
class Vocabulary:
    """Token ids for words: ids 0-3 are the specials, then words by falling frequency."""

    tokens: tuple[str, ...]

    @classmethod
    def build(cls, captions: Iterable[str], max_words: int = 5000) -> Vocabulary:
        """Keep the `max_words` most frequent words (ties broken alphabetically)."""
        counts = Counter(word for caption in captions for word in standardize(caption))
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return cls(SPECIALS + tuple(word for word, _ in ranked[:max_words]))

    def __post_init__(self) -> None:
        if self.tokens[: len(SPECIALS)] != SPECIALS:
            raise ValueError(f"vocabulary must start with {SPECIALS}")
        object.__setattr__(self, "_ids", {word: i for i, word in enumerate(self.tokens)})

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, caption: str, max_length: int | None = None) -> list[int]:
        """Ids of `<start> words… <end>`, words cut to `max_length`, unknown words as `<unk>`."""
        words = standardize(caption)[:max_length]
        return [START_ID, *(self._ids.get(word, UNK_ID) for word in words), END_ID]

    def words(self, ids: Sequence[int]) -> list[str]:
        """Words for ids, stopping before the first `<end>`."""
        out = []
        for i in ids:
            if i == END_ID:
                break
            out.append(self.tokens[i])
        return out

    def save(self, path: Path) -> None:
        """Write the vocabulary as JSON: {"tokens": [...]}, index = id."""
        Path(path).write_text(json.dumps({"tokens": list(self.tokens)}, indent=0))

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        """Read a vocabulary written by `save`."""
        return cls(tuple(json.loads(Path(path).read_text())["tokens"]))
