"""Uploaded COCO-format caption datasets (zip or tar): checked without trust, then unpacked.

Used by the API and by training workers (the standard library, and `core.images` for the
images). Checks run cheapest first and nothing is written until all pass: headers (count, total
size, safe names, no links; no data read), then every annotation entry, then every referenced
image verified from the archive. Problems are collected, not raised one by one, so a single
upload reports everything to fix. The layout (`core.formats`) is the one `model.data` reads.
"""

from __future__ import annotations

import json
import lzma
import os
import re
import shutil
import stat
import tarfile
import uuid
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from core.errors import DatasetError, ImageError
from core.formats import ANNOTATIONS_PATTERN, image_folders, split_role
from core.images import MAX_PIXELS, verify_image

MAX_MEMBERS = 200_000
MAX_UNPACKED_BYTES = 20 * 2**30
_CAP = 200  # problems kept per kind; past this, scanning that kind stops
_ANNOTATIONS = re.compile(ANNOTATIONS_PATTERN)
# zipfile inflates bzip2 and lzma members without an output bound (a bomb); deflate is bounded.
_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
_DAMAGED = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError)
_PRECOMPRESSED = {".png", ".jpg", ".jpeg", ".gif", ".webp"}  # deflating these wastes CPU


@dataclass(frozen=True)
class DatasetSummary:
    """What a valid archive holds."""

    format: str  # "zip" or "tar"
    splits: dict[str, dict[str, int]]  # role → {"images": captioned images, "captions": n}
    images: int  # captioned images over all splits
    captions: int
    unpacked_bytes: int  # sum of member sizes from the headers


@dataclass(frozen=True)
class _Member:
    name: str  # normalised: "/"-separated, no "" or "." parts, no trailing "/"
    size: int
    is_dir: bool
    info: Any  # the zipfile.ZipInfo or tarfile.TarInfo that reads the data
    refusal: str | None = None  # why the header alone rules it out


class _Problems(list[str]):
    """Problems found so far, capped per kind so that a broken archive stays readable."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def add(self, kind: str, text: str) -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= _CAP:
            self.append(text)
        elif self.counts[kind] == _CAP + 1:
            self.append(f"… stopped checking {kind} after {_CAP} problems")

    def full(self, kind: str) -> bool:
        return self.counts[kind] > _CAP


class _Archive:
    """An open zip or tar whose headers passed the safety checks, and its dataset layout."""

    def __init__(
        self, handle: zipfile.ZipFile | tarfile.TarFile, max_members: int, max_bytes: int
    ) -> None:
        self.handle = handle
        self.format = "zip" if isinstance(handle, zipfile.ZipFile) else "tar"
        self.members = _check_headers(_headers(handle), max_members, max_bytes)
        folders = {p for m in self.members for p in _parents(m.name)}
        folders |= {m.name for m in self.members if m.is_dir}
        tops = {m.name.split("/")[0] for m in self.members}
        # A single top-level folder (as "zip -r set.zip set/" makes) is the root, unless it
        # is annotations/ itself.
        top = next(iter(tops)) if len(tops) == 1 else ""
        self.root = top + "/" if top in folders and top != "annotations" else ""
        self.folders = {f.removeprefix(self.root) for f in folders if f.startswith(self.root)}
        self.files = {  # by path under the root, in archive order so tar streams read forward
            m.name.removeprefix(self.root): m
            for m in self.members
            if not m.is_dir and m.name.startswith(self.root)
        }

    def open(self, member: _Member) -> IO[bytes]:
        if isinstance(self.handle, zipfile.ZipFile):
            return self.handle.open(member.info)
        stream = self.handle.extractfile(member.info)
        assert stream is not None  # only regular files get this far
        return stream


def inspect_archive(
    path: Path,
    max_members: int = MAX_MEMBERS,
    max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
    max_image_pixels: int = MAX_PIXELS,
) -> DatasetSummary:
    """Validate a dataset archive without extracting it; DatasetError names every bad entry."""
    with _open_archive(Path(path), max_members, max_unpacked_bytes) as archive:
        return _inspect(archive, max_image_pixels)


def extract_archive(
    path: Path,
    dest: Path,
    max_members: int = MAX_MEMBERS,
    max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
    max_image_pixels: int = MAX_PIXELS,
) -> Path:
    """Validate, then unpack safely into `dest`; returns the dataset root (holding annotations/)."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} already exists and is not an empty folder")
    with _open_archive(Path(path), max_members, max_unpacked_bytes) as archive:
        _inspect(archive, max_image_pixels)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Unpack next to dest, then rename: readers never see half a dataset, failures leave none.
        staging = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.partial")
        staging.mkdir()
        try:
            _write_members(archive, staging)
            staging.replace(dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return dest / archive.root


def pack_dataset(folder: Path, out: Path) -> Path:
    """Zip a dataset folder (annotations/ and the images) into `out`, for uploading."""
    folder, out = Path(folder), Path(out)
    if not (folder / "annotations").is_dir():
        raise DatasetError(f"{folder}: no annotations/ folder (COCO captions format)")
    partial = out.with_name(f".{out.name}.partial")
    skip = {out.resolve(), partial.resolve()}  # out may be inside folder
    try:
        with zipfile.ZipFile(partial, "w", strict_timestamps=False) as archive:
            # Links are followed: images/ is often a link to a shared disk, and the zip should
            # hold the content, never the link.
            for directory, subdirs, names in os.walk(folder, followlinks=True):
                subdirs.sort()
                for file in (Path(directory) / name for name in sorted(names)):
                    if file.resolve() not in skip:
                        stored = file.suffix.lower() in _PRECOMPRESSED
                        method = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
                        archive.write(
                            file, file.relative_to(folder).as_posix(), compress_type=method
                        )
        partial.replace(out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return out


@contextmanager
def _open_archive(path: Path, max_members: int, max_bytes: int) -> Iterator[_Archive]:
    # Content, not the file name, decides: uploads arrive under temporary names.
    # Tar first: a tar whose last member is a zip file also passes zipfile.is_zipfile.
    handle: zipfile.ZipFile | tarfile.TarFile
    try:
        if tarfile.is_tarfile(path):
            handle = tarfile.open(path, "r:*")
        elif zipfile.is_zipfile(path):
            handle = zipfile.ZipFile(path)
        else:
            raise DatasetError(f"{path.name} is neither a zip nor a tar archive")
        with handle:
            try:
                archive = _Archive(handle, max_members, max_bytes)
            except OSError as exc:  # gzip and bz2 report a bad stream as OSError
                raise DatasetError(f"{path.name}: the archive is damaged ({exc})") from exc
            yield archive
    # Not OSError here: during extraction that is the disk's fault, not the upload's.
    except _DAMAGED as exc:
        raise DatasetError(f"{path.name}: the archive is damaged ({exc})") from exc


def _headers(handle: zipfile.ZipFile | tarfile.TarFile) -> Iterator[_Member]:
    """Members as named in the archive, each with why it is refused (or None), from headers only."""
    only = "(only regular files and folders are allowed)"
    if isinstance(handle, zipfile.ZipFile):
        for info in handle.infolist():
            mode = info.external_attr >> 16  # Unix mode; its type bits are often 0
            refusal = None
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                refusal = f"is a link or special file {only}"
            elif info.flag_bits & 0x1 or info.compress_type not in _ZIP_METHODS:
                refusal = "is encrypted or not compressed with deflate (unsupported)"
            yield _Member(info.filename, info.file_size, info.is_dir(), info, refusal)
        return
    for info in handle:  # lazily, so that a huge member list stops at max_members
        kind = "symbolic link" if info.issym() else "hard link" if info.islnk() else "device"
        refusal = None if info.isreg() or info.isdir() else f"is a {kind} {only}"
        yield _Member(info.name, info.size, info.isdir(), info, refusal)


def _check_headers(headers: Iterable[_Member], max_members: int, max_bytes: int) -> list[_Member]:
    """Members with safe normalised names, or DatasetError before any data is read."""
    members: list[_Member] = []
    problems = _Problems()
    total = 0
    for count, raw in enumerate(headers, 1):
        total += raw.size
        if count > max_members:
            raise DatasetError(f"the archive has more than {max_members:,} members")
        if total > max_bytes:
            raise DatasetError(f"the archive unpacks to more than {max_bytes:,} bytes")
        if why := raw.refusal or _unsafe(raw.name):
            problems.add("members", f"member {_quote(raw.name)} {why}")
        elif _normalise(raw.name) or not raw.is_dir:  # "./" is the root itself
            members.append(replace(raw, name=_normalise(raw.name)))
    files = Counter(m.name for m in members if not m.is_dir)
    folders = {p for m in members for p in _parents(m.name)}
    for name, count in files.items():
        if count > 1:
            problems.add("members", f"member {_quote(name)} appears {count} times")
        elif name in folders or not name:
            problems.add("members", f"member {_quote(name)} is a file where a folder is needed")
    if problems:
        raise DatasetError(problems)
    return members


def _inspect(archive: _Archive, max_pixels: int) -> DatasetSummary:
    problems = _Problems()
    names = {p: m.group(1) for p in sorted(archive.files) if (m := _ANNOTATIONS.fullmatch(p))}
    if not names:
        raise DatasetError(
            "no annotations/captions_<split>.json files (COCO captions format), "
            "e.g. annotations/captions_train.json and annotations/captions_val.json"
        )
    splits: dict[str, dict[str, int]] = {}
    roles: set[str] = set()
    wanted: set[str] = set()
    for path, name in names.items():
        role = split_role(name)
        if role is None:
            problems.add("annotations", f"{path}: the name must contain train, val or test")
        counts = _check_annotations(archive, path, _image_dir(archive.folders, name), problems)
        if role is not None:
            roles.add(role)
        if counts is not None:
            wanted |= counts[2]
            if role is not None:
                split = splits.setdefault(role, {"images": 0, "captions": 0})
                split["images"] += counts[0]
                split["captions"] += counts[1]
    _check_splits(roles, splits, problems)
    # Archive order, so that a compressed tar is read forwards once instead of rewound per image.
    for path in (p for p in archive.files if p in wanted and not problems.full("images")):
        if why := _image_problem(archive, archive.files[path], max_pixels):
            problems.add("images", f"{path}: {why}")
    if problems:
        raise DatasetError(problems)
    return DatasetSummary(
        format=archive.format,
        splits=splits,
        images=sum(s["images"] for s in splits.values()),
        captions=sum(s["captions"] for s in splits.values()),
        unpacked_bytes=sum(m.size for m in archive.members),
    )


def _check_splits(roles: set[str], splits: dict[str, dict[str, int]], problems: _Problems) -> None:
    # Training fits on train and picks checkpoints on val: both must hold captioned images.
    for role in ("train", "val"):
        if role not in roles:
            problems.add("splits", f"no {role} split: add annotations/captions_{role}.json")
        elif splits.get(role, {}).get("images") == 0 and not problems.full("entries"):
            problems.add("splits", f"the {role} split has no captioned images")


def _check_annotations(
    archive: _Archive, path: str, image_dir: str, problems: _Problems
) -> tuple[int, int, set[str]] | None:
    """(captioned images, captions, image files) of one captions file, or None if unreadable."""
    try:
        with archive.open(archive.files[path]) as stream:
            document = json.loads(stream.read())
    except ValueError as exc:  # JSONDecodeError names the line and column; also bad UTF-8
        problems.add("annotations", f"{path}: invalid JSON: {exc}")
        return None
    except (*_DAMAGED, OSError) as exc:
        problems.add("annotations", f"{path}: cannot be read from the archive ({exc})")
        return None
    if not isinstance(document, dict):
        document = {}  # reported below as missing lists
    images, annotations = document.get("images"), document.get("annotations")
    if not isinstance(images, list) or not isinstance(annotations, list):
        problems.add("annotations", f'{path}: needs "images" and "annotations" lists (COCO format)')
        return None
    ids, files = _check_image_entries(path, images, image_dir, archive.files, problems)
    counts = _count_captions(path, annotations, ids, problems)
    return sum(1 for i in ids if counts[i]), sum(counts.values()), files


def _check_image_entries(
    path: str, entries: list[Any], image_dir: str, files: dict[str, _Member], problems: _Problems
) -> tuple[set[int | str], set[str]]:
    """Ids of the image entries and the archive files they name; a problem for each bad one."""
    seen: dict[int | str, int] = {}
    wanted: set[str] = set()
    for index, entry in enumerate(entries):
        if problems.full("entries"):
            break
        where = f"{path}: images[{index}]"
        if not isinstance(entry, dict) or not _is_id(image_id := entry.get("id")):
            problems.add("entries", f'{where}: needs to be an object with an "id" (int or string)')
            continue
        where += f" (id {_quote(image_id)})"
        if image_id in seen:
            problems.add("entries", f"{where}: duplicate id, also images[{seen[image_id]}]")
            continue
        seen[image_id] = index  # known even if its file is bad: no knock-on caption problems
        name = entry.get("file_name")
        under = image_dir or "the dataset root"
        if not isinstance(name, str) or not name:
            problems.add("entries", f'{where}: needs a "file_name" (a relative path)')
        elif why := _unsafe(name):
            problems.add("entries", f"{where}: file_name {_quote(name)} {why}")
        elif image_dir + _normalise(name) not in files:
            problems.add(
                "entries", f"{where}: file_name {_quote(name)} is not in the archive under {under}"
            )
        else:
            wanted.add(image_dir + _normalise(name))
    return set(seen), wanted


def _count_captions(
    path: str, entries: list[Any], ids: set[int | str], problems: _Problems
) -> Counter[int | str]:
    """Valid captions per image id; a problem for each bad annotation entry."""
    counts: Counter[int | str] = Counter()
    for index, entry in enumerate(entries):
        if problems.full("entries"):
            break
        where = f"{path}: annotations[{index}]"
        if not isinstance(entry, dict):
            problems.add("entries", f"{where}: not a JSON object")
            continue
        if "id" in entry:
            where += f" (id {_quote(entry['id'])})"
        image_id, caption = entry.get("image_id"), entry.get("caption")
        known = _is_id(image_id) and image_id in ids
        if not known:
            problems.add(
                "entries", f"{where}: image_id {_quote(image_id)} is not an image of this file"
            )
        if not isinstance(caption, str) or not caption.strip():
            problems.add("entries", f'{where}: "caption" must be a non-empty string')
        elif known:
            counts[image_id] += 1
    return counts


def _image_problem(archive: _Archive, member: _Member, max_pixels: int) -> str | None:
    """Why a member is not a usable image, or None; streams it, reading what verify() needs."""
    try:
        with archive.open(member) as stream:
            verify_image(stream, max_pixels)
    except ImageError as exc:
        return exc.message
    return None


def _write_members(archive: _Archive, staging: Path) -> None:
    # Only folders and regular files are created, at checked names, in a fresh folder, with
    # O_EXCL ("x"), so nothing can follow or replace a link.
    for member in archive.members:
        target = staging / member.name
        if member.is_dir:
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(member) as source, open(target, "xb") as sink:
            shutil.copyfileobj(source, sink, 2**20)


def _image_dir(folders: set[str], split: str) -> str:
    return next((f"{folder}/" for folder in image_folders(split) if folder in folders), "")


def _unsafe(name: str) -> str | None:
    """Why a member or file name could land outside the destination folder, or None."""
    if "\x00" in name:
        return "contains a NUL byte"
    if "\\" in name:
        return "contains a backslash"
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        return "is an absolute path"
    if ".." in name.split("/"):
        return 'contains ".."'
    return None


def _normalise(name: str) -> str:
    return "/".join(part for part in name.split("/") if part not in ("", "."))


def _parents(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _is_id(value: Any) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool)  # True == 1 in a set


def _quote(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:77] + "…"
