"""Tests for dataset archives: validation, safe extraction and packing (no servers needed)."""

from __future__ import annotations

import io
import json
import stat
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from core.archives import (
    DatasetError,
    DatasetSummary,
    extract_archive,
    inspect_archive,
    pack_dataset,
)
from model.data import check_images, load_dataset
from model.shapes import write_shapes_dataset
from tests.helpers import tar_folder, write_dataset


def edit_json(root: Path, split: str, edit: Callable[[dict], None]) -> None:
    path = root / "annotations" / f"captions_{split}.json"
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))


def zip_with_extra(folder: Path, out: Path, name: str, data: bytes = b"x", mode: int = 0) -> Path:
    """The packed folder plus one raw member, written as given (pack_dataset would refuse it)."""
    pack_dataset(folder, out)
    with zipfile.ZipFile(out, "a") as archive:
        info = zipfile.ZipInfo(name)
        info.external_attr = mode << 16
        archive.writestr(info, data)
    return out


def tar_with_link(folder: Path, out: Path, kind: bytes) -> Path:
    tar_folder(folder, out, "w")
    with tarfile.open(out, "a") as archive:
        info = tarfile.TarInfo("images/train/link.png")
        info.type, info.linkname = kind, "/etc/passwd"
        archive.addfile(info)
    return out


def problems_of(path: Path, **limits: int) -> list[str]:
    with pytest.raises(DatasetError) as caught:
        inspect_archive(path, **limits)
    return caught.value.problems


def test_valid_zip_counts(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "set", {"train": 3, "val": 2, "test": 1})
    archive = pack_dataset(folder, tmp_path / "set.zip")
    summary = inspect_archive(archive)
    assert summary == DatasetSummary(
        format="zip",
        splits={
            "train": {"images": 3, "captions": 3},
            "val": {"images": 2, "captions": 2},
            "test": {"images": 1, "captions": 1},
        },
        images=6,
        captions=6,
        unpacked_bytes=summary.unpacked_bytes,
    )
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert summary.unpacked_bytes == sum(p.stat().st_size for p in files)


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_valid_tar_detected_by_content(tmp_path: Path, mode: str) -> None:
    folder = write_dataset(tmp_path / "set")
    archive = tar_folder(folder, tmp_path / "upload.bin", mode)  # the name says nothing
    summary = inspect_archive(archive)
    assert summary.format == "tar"
    assert summary.splits == {
        "train": {"images": 3, "captions": 3},
        "val": {"images": 2, "captions": 2},
    }


@pytest.mark.parametrize("arcname", ["myset", "./myset", "."])
def test_single_top_level_folder_or_dot_prefix(tmp_path: Path, arcname: str) -> None:
    folder = write_dataset(tmp_path / "set")
    archive = tar_folder(folder, tmp_path / "set.tar.gz", arcname=arcname)
    assert inspect_archive(archive).images == 5
    root = extract_archive(archive, tmp_path / "out")
    expected = tmp_path / "out" / "myset" if "myset" in arcname else tmp_path / "out"
    assert root == expected and (root / "annotations" / "captions_val.json").is_file()


def test_round_trip_with_shapes_generator(tmp_path: Path) -> None:
    folder = write_shapes_dataset(tmp_path / "shapes", 10, seed=3, val_fraction=0.3)
    archive = pack_dataset(folder, tmp_path / "shapes.zip")
    summary = inspect_archive(archive)
    assert summary.splits == {
        "train": {"images": 7, "captions": 7},
        "val": {"images": 3, "captions": 3},
    }
    root = extract_archive(archive, tmp_path / "out")
    assert root == tmp_path / "out"
    splits = load_dataset(root)
    for role, counts in summary.splits.items():
        assert len(splits[role]) == counts["images"]
        assert sum(len(e.captions) for e in splits[role]) == counts["captions"]
        check_images(splits[role])
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_pack_skips_its_own_output_and_follows_layout(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "set")
    archive = pack_dataset(folder, folder / "set.zip")  # inside the folder it packs
    with zipfile.ZipFile(archive) as packed:
        names = packed.namelist()
    assert "set.zip" not in names and "annotations/captions_train.json" in names
    assert inspect_archive(archive).captions == 5
    with pytest.raises(DatasetError, match="no annotations/ folder"):
        pack_dataset(tmp_path, tmp_path / "x.zip")


def test_coco_style_folders_and_uncaptioned_images(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "set", {"train2014": 2, "val2014": 2, "test2014": 1})
    for split in ("train2014", "val2014", "test2014"):  # COCO keeps images in <split>/
        (folder / "images" / split).rename(folder / split)
    (folder / "images").rmdir()
    edit_json(folder, "test2014", lambda doc: doc.update(annotations=[]))  # COCO test: none
    summary = inspect_archive(pack_dataset(folder, tmp_path / "coco.zip"))
    assert summary.splits["train"] == {"images": 2, "captions": 2}
    assert summary.splits["test"] == {"images": 0, "captions": 0}
    assert summary.images == 4


def _not_an_archive(folder: Path, out: Path) -> Path:
    out.write_bytes(b"just some text, not an archive\n" * 20)
    return out


def _drop_val(folder: Path, out: Path) -> Path:
    (folder / "annotations" / "captions_val.json").unlink()
    return pack_dataset(folder, out)


def _bad_json(folder: Path, out: Path) -> Path:
    (folder / "annotations" / "captions_train.json").write_text('{"images": [}')
    return pack_dataset(folder, out)


def _edit(split: str, edit: Callable[[dict], None]) -> Callable[[Path, Path], Path]:
    def make(folder: Path, out: Path) -> Path:
        edit_json(folder, split, edit)
        return pack_dataset(folder, out)

    return make


def _garbage_image(folder: Path, out: Path) -> Path:
    (folder / "images" / "train" / "1.png").write_bytes(b"\x00garbage" * 10)
    return pack_dataset(folder, out)


def _missing_image(folder: Path, out: Path) -> Path:
    (folder / "images" / "train" / "2.png").unlink()
    return pack_dataset(folder, out)


def _extra_split(folder: Path, out: Path) -> Path:
    (folder / "annotations" / "captions_extra.json").write_text('{"images": [], "annotations": []}')
    return pack_dataset(folder, out)


MALFORMED = {
    "not an archive": (_not_an_archive, "upload is neither a zip nor a tar archive"),
    "path traversal": (
        lambda f, o: zip_with_extra(f, o, "../evil"),
        'member "../evil" contains ".."',
    ),
    "absolute path": (
        lambda f, o: zip_with_extra(f, o, "/etc/cron.d/evil"),
        'member "/etc/cron.d/evil" is an absolute path',
    ),
    "backslash": (
        lambda f, o: zip_with_extra(f, o, "..\\evil"),
        'member "..\\\\evil" contains a backslash',
    ),
    "zip symlink": (
        lambda f, o: zip_with_extra(f, o, "images/x.png", b"/etc", stat.S_IFLNK | 0o777),
        'member "images/x.png" is a link or special file',
    ),
    "tar symlink": (
        lambda f, o: tar_with_link(f, o, tarfile.SYMTYPE),
        'member "images/train/link.png" is a symbolic link',
    ),
    "tar hard link": (
        lambda f, o: tar_with_link(f, o, tarfile.LNKTYPE),
        'member "images/train/link.png" is a hard link',
    ),
    "missing val split": (_drop_val, "no val split: add annotations/captions_val.json"),
    "invalid JSON": (
        _bad_json,
        "annotations/captions_train.json: invalid JSON: Expecting value: line 1 column 13",
    ),
    "empty caption": (
        _edit("train", lambda doc: doc["annotations"][1].update(caption="  ")),
        'annotations/captions_train.json: annotations[1] (id 101): "caption" must be a non-empty',
    ),
    "unknown image_id": (
        _edit("val", lambda doc: doc["annotations"][0].update(image_id=99)),
        "annotations/captions_val.json: annotations[0] (id 103): image_id 99 is not an image of "
        "this file",
    ),
    "missing file_name": (
        _edit("train", lambda doc: doc["images"][0].pop("file_name")),
        'annotations/captions_train.json: images[0] (id 0): needs a "file_name"',
    ),
    "duplicate image id": (
        _edit("train", lambda doc: doc["images"][2].update(id=1)),
        "annotations/captions_train.json: images[2] (id 1): duplicate id, also images[1]",
    ),
    "unsafe file_name": (
        _edit("train", lambda doc: doc["images"][0].update(file_name="../../0.png")),
        'images[0] (id 0): file_name "../../0.png" contains ".."',
    ),
    "image missing from archive": (
        _missing_image,
        'annotations/captions_train.json: images[2] (id 2): file_name "2.png" is not in the '
        "archive under images/train/",
    ),
    "not an image": (
        _garbage_image,
        "images/train/1.png: the data is not an image in a supported format",
    ),
    "no captioned val images": (
        _edit("val", lambda doc: doc.update(annotations=[])),
        "the val split has no captioned images",
    ),
    "split name": (
        _extra_split,
        "annotations/captions_extra.json: the name must contain train, val or test",
    ),
}


@pytest.mark.parametrize("make, expected", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_archives(tmp_path: Path, make: Callable, expected: str) -> None:
    archive = make(write_dataset(tmp_path / "set"), tmp_path / "upload")
    problems = problems_of(archive)
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize(
    "limits, expected",
    [
        ({"max_members": 5}, "the archive has more than 5 members"),
        ({"max_unpacked_bytes": 500}, "the archive unpacks to more than 500 bytes"),
        ({"max_image_pixels": 40}, "images/train/0.png: 8×6 pixels is over the limit of 40"),
    ],
)
def test_limits(tmp_path: Path, limits: dict[str, int], expected: str) -> None:
    archive = pack_dataset(write_dataset(tmp_path / "set"), tmp_path / "set.zip")
    assert expected in problems_of(archive, **limits)
    inspect_archive(archive)  # the defaults accept it


def test_all_problems_reported_together(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "set")
    (folder / "images" / "train" / "0.png").write_bytes(b"not a png")
    (folder / "images" / "train" / "2.png").unlink()
    edit_json(folder, "val", lambda doc: doc["annotations"][1].update(caption=""))
    with pytest.raises(DatasetError) as caught:
        inspect_archive(pack_dataset(folder, tmp_path / "set.zip"))
    problems = caught.value.problems
    assert len(problems) == 3, problems
    assert "images/train/0.png: the data is not an image in a supported format" in problems[2]
    assert 'file_name "2.png" is not in the archive' in problems[0]
    assert "annotations[1] (id 104)" in problems[1]
    assert str(caught.value).startswith("3 problems: annotations/captions_train.json: images[2]")


def test_summary_and_cap_on_many_problems(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "set")
    bad = [{"image_id": 0, "caption": ""} for _ in range(250)]
    edit_json(folder, "train", lambda doc: doc["annotations"].extend(bad))
    with pytest.raises(DatasetError) as caught:
        inspect_archive(pack_dataset(folder, tmp_path / "set.zip"))
    problems = caught.value.problems
    assert len(problems) == 201 and problems[-1] == "… stopped checking entries after 200 problems"
    assert str(caught.value).startswith("201 problems: ")
    assert str(caught.value).endswith("; … and 181 more")
    assert "\n" not in str(caught.value)


def test_header_problems_stop_before_data_is_read(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "set")
    (folder / "annotations" / "captions_train.json").write_text("not json")
    archive = zip_with_extra(folder, tmp_path / "set.zip", "../evil")
    assert problems_of(archive) == ['member "../evil" contains ".."']


def test_damaged_archives(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "set")
    whole = tar_folder(folder, tmp_path / "set.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DatasetError, match=r"^cut.tar.gz: the archive is damaged \("):
        inspect_archive(tmp_path / "cut.tar.gz")
    packed = pack_dataset(folder, tmp_path / "set.zip")
    with zipfile.ZipFile(packed) as archive:  # flip a byte inside the stored 0.png
        info = archive.getinfo("images/train/0.png")
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data = bytearray(packed.read_bytes())
    data[start + info.compress_size // 2] ^= 0xFF
    packed.write_bytes(bytes(data))
    problems = problems_of(packed)
    assert len(problems) == 1, problems
    assert problems[0].startswith("images/train/0.png: the image could not be decoded"), problems


def test_zip_methods_without_a_bounded_inflate_are_refused(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "set")
    packed = tmp_path / "set.zip"
    with zipfile.ZipFile(packed, "w", zipfile.ZIP_BZIP2) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            archive.write(path, path.relative_to(folder).as_posix())
    problems = problems_of(packed)
    assert len(problems) == 7
    assert problems[0].endswith("is encrypted or not compressed with deflate (unsupported)")


def test_failed_extract_leaves_nothing(tmp_path: Path) -> None:
    archive = _missing_image(write_dataset(tmp_path / "set"), tmp_path / "set.zip")
    with pytest.raises(DatasetError, match="is not in the archive"):
        extract_archive(archive, tmp_path / "out" / "dataset")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set", "set.zip"]


def test_extract_refuses_a_non_empty_dest(tmp_path: Path) -> None:
    archive = pack_dataset(write_dataset(tmp_path / "set"), tmp_path / "set.zip")
    (tmp_path / "out").mkdir()
    assert extract_archive(archive, tmp_path / "out") == tmp_path / "out"  # empty: fine
    with pytest.raises(FileExistsError):
        extract_archive(archive, tmp_path / "out")


def test_extract_writes_only_regular_files(tmp_path: Path) -> None:
    archive = tar_folder(write_dataset(tmp_path / "set"), tmp_path / "set.tar")
    root = extract_archive(archive, tmp_path / "out")
    paths = list(root.rglob("*"))
    assert not any(p.is_symlink() for p in paths)
    assert {p.name for p in paths if p.is_file()} >= {"captions_train.json", "0.png", "2.png"}
    with Image.open(io.BytesIO((root / "images" / "val" / "1.png").read_bytes())) as image:
        assert image.size == (8, 6)
