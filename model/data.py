"""Caption datasets in COCO format or Karpathy split files: one loader for real and synthetic."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import formats
from core.errors import DatasetError


@dataclass(frozen=True)
class Example:
    """One image and its reference captions."""

    image_id: str  # unique within the dataset
    path: Path
    captions: tuple[str, ...]
    size: tuple[int, int] | None = None  # (width, height) when the annotations give it
    objects: tuple[dict[str, Any], ...] = field(default=(), compare=False)  # synthetic set only


def split_role(name: str) -> str:
    """'train', 'val' or 'test' for an annotation or folder name such as captions_val2014."""
    role = formats.split_role(name)
    if role is None:
        raise DatasetError(f"cannot tell whether {name!r} is a train, val or test split")
    return role


def load_coco_captions(annotations: Path, image_dir: Path) -> list[Example]:
    """Examples from a COCO captions file (images + annotations) and its image folder."""
    data = _read_json(annotations)
    captions: dict[Any, list[str]] = defaultdict(list)
    for ann in data.get("annotations", []):
        if not isinstance(ann, dict) or "image_id" not in ann or not ann.get("caption"):
            raise DatasetError(f"{annotations}: bad annotation entry {str(ann)[:200]}")
        captions[ann["image_id"]].append(str(ann["caption"]))
    examples = []
    for image in data.get("images", []):
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise DatasetError(f"{annotations}: bad image entry {str(image)[:200]}")
        if not captions.get(image["id"]):
            continue  # COCO test images have no captions
        size = (image["width"], image["height"]) if "width" in image and "height" in image else None
        examples.append(
            Example(
                image_id=str(image["id"]),
                path=image_dir / image["file_name"],
                captions=tuple(captions[image["id"]]),
                size=size,
                objects=tuple(image.get("objects", ())),
            )
        )
    return examples


def load_karpathy(split_file: Path, image_root: Path) -> dict[str, list[Example]]:
    """Splits from a Karpathy file (dataset_coco.json, dataset_flickr8k.json); restval → train."""
    data = _read_json(split_file)
    splits: dict[str, list[Example]] = defaultdict(list)
    for image in data.get("images", []):
        try:
            role = "train" if image["split"] == "restval" else image["split"]
            folder = image_root / image.get("filepath", "")
            example = Example(
                image_id=str(image.get("cocoid", image.get("imgid", image["filename"]))),
                path=folder / image["filename"],
                captions=tuple(s["raw"] for s in image["sentences"]),
            )
        except (KeyError, TypeError) as exc:
            raise DatasetError(f"{split_file}: bad image entry {str(image)[:200]}") from exc
        splits[role].append(example)
    return dict(splits)


def load_dataset(data_dir: Path, split_file: Path | None = None) -> dict[str, list[Example]]:
    """Splits of a dataset folder: `annotations/captions_*.json` plus images, or a split file.

    Images of split S are looked up in `images/S/`, `S/` (COCO's train2014/) and `images/`.
    """
    data_dir = Path(data_dir)
    if split_file is not None:
        return load_karpathy(Path(split_file), data_dir)
    files = sorted(data_dir.glob(formats.ANNOTATIONS_GLOB))
    if not files:
        raise DatasetError(f"{data_dir}: no annotations/captions_*.json (COCO captions format)")
    splits: dict[str, list[Example]] = defaultdict(list)
    for path in files:
        name = path.stem.removeprefix("captions_")
        splits[split_role(name)] += load_coco_captions(path, _image_dir(data_dir, name))
    return dict(splits)


def check_images(examples: list[Example]) -> None:
    """Raise DatasetError naming the examples whose image file is missing."""
    missing = [str(e.path) for e in examples if not e.path.is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} image files are missing, e.g. {missing[:5]}")


def _image_dir(data_dir: Path, split: str) -> Path:
    folders = (data_dir / folder for folder in formats.image_folders(split))
    return next((folder for folder in folders if folder.is_dir()), data_dir)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object at the top level")
    return data
