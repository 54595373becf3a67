"""Blob storage: one interface over an S3 bucket (AWS, MinIO, moto) and a local directory.

Keys are slash-separated relative paths such as `images/ab12…` or `models/v3/config.json`.
Both stores accept and refuse the same keys, so code that works in the embedded mode (local
directory) behaves the same against S3.
"""

from __future__ import annotations

import mimetypes
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, runtime_checkable

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from core.errors import BlobNotFound, BlobStoreError

if TYPE_CHECKING:
    from core.settings import Settings

DEFAULT_CONTENT_TYPE = "application/octet-stream"
COPY_CHUNK = 1 << 20
# 8 MiB parts, at most 4 in flight: a large upload holds about 32 MiB, not the whole file.
UPLOAD = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=4)
_MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_NO_BUCKET_CODES = frozenset({"NoSuchBucket", "NotFound", "404"})
_REFUSED_CODES = frozenset(
    {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}
)


@runtime_checkable
class BlobStore(Protocol):
    """What the API and the workers need from a blob store."""

    def put(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        """Store `data` under `key`, replacing any previous blob."""
        ...

    def put_file(self, key: str, path: Path, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        """Store the file at `path` under `key`, streamed: never whole in memory."""
        ...

    def get(self, key: str) -> bytes:
        """The blob under `key`; raises BlobNotFound when there is none."""
        ...

    def exists(self, key: str) -> bool:
        """Whether a blob is stored under `key`."""
        ...

    def delete(self, key: str) -> None:
        """Remove the blob under `key`; nothing happens when there is none."""
        ...

    def check(self) -> None:
        """Raise BlobStoreError unless the store is reachable and usable (for /readyz)."""
        ...

    # Last in the class so that `list[str]` annotations above still mean the builtin.
    def list(self, prefix: str) -> list[str]:
        """Every key that starts with `prefix`, sorted."""
        ...


def validate_key(key: str) -> str:
    """Return `key` unchanged, or raise ValueError when it is not a safe relative key."""
    if not isinstance(key, str) or not key:
        raise ValueError("a blob key must be a non-empty string")
    if "\\" in key or "\x00" in key or key.startswith("/"):
        raise ValueError(f"blob key {key!r}: no backslashes, NUL bytes or leading slash")
    for part in key.split("/"):
        # Leading dots cover "." and ".." and keep the local store's temp files out of key space.
        if not part or part.startswith("."):
            raise ValueError(f"blob key {key!r}: empty segment or segment starting with '.'")
    return key


def _validate_prefix(prefix: str) -> str:
    # A prefix may be empty or end in "/" or part of a name, but must not escape the root.
    if prefix and prefix != "/":
        validate_key(prefix.removesuffix("/"))
    return "" if prefix == "/" else prefix


class LocalBlobStore:
    """Blobs as files under a root directory; writes are atomic (temp file, then os.replace)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).absolute()

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def put(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        """Write `data` to the key's file atomically (`content_type` is not kept locally)."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(path, data)
        except OSError as error:
            raise BlobStoreError(f"cannot write {key!r} under {self.root}: {error}") from error

    def put_file(self, key: str, path: Path, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        """Copy the file at `path` to the key's file atomically, a chunk at a time."""
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "rb") as source:
                _atomic_write(target, source)
        except OSError as error:
            raise BlobStoreError(f"cannot write {key!r} under {self.root}: {error}") from error

    def get(self, key: str) -> bytes:
        """The key's file contents; raises BlobNotFound when there is no such file."""
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BlobNotFound(key) from None
        except OSError as error:
            raise BlobStoreError(f"cannot read {key!r} under {self.root}: {error}") from error

    def exists(self, key: str) -> bool:
        """Whether the key's file exists (a directory of other keys is not a blob)."""
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        """Remove the key's file if present (empty directories are left for concurrent puts)."""
        try:
            self._path(key).unlink(missing_ok=True)
        except (IsADirectoryError, NotADirectoryError):
            pass  # the key names a directory of other keys, or lies under a file: not a blob

    def check(self) -> None:
        """Raise BlobStoreError unless the root directory exists (or can be made), writable."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BlobStoreError(f"cannot create blob directory {self.root}: {error}") from error
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise BlobStoreError(f"blob directory {self.root} is not writable")

    def list(self, prefix: str) -> list[str]:
        """Every key that starts with `prefix`, sorted; temp and hidden files are skipped."""
        prefix = _validate_prefix(prefix)
        # Walk only the deepest directory the prefix names in full, then filter by name.
        start = self.root.joinpath(*prefix.rpartition("/")[0].split("/"))
        keys = [key for key in _walk_keys(self.root, start) if key.startswith(prefix)]
        return sorted(keys)


def _atomic_write(path: Path, data: bytes | BinaryIO) -> None:
    # A dot-name is never a valid key, so readers and list() never see a half-written blob.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            if isinstance(data, bytes):
                handle.write(data)
            else:
                shutil.copyfileobj(data, handle, COPY_CHUNK)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _walk_keys(root: Path, start: Path) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(start):
        dirnames[:] = [name for name in dirnames if not name.startswith(".")]
        relative = Path(dirpath).relative_to(root).as_posix()
        base = "" if relative == "." else f"{relative}/"
        yield from (base + name for name in filenames if not name.startswith("."))


class S3BlobStore:
    """Blobs as objects in one S3 bucket, through a boto3 client with bounded timeouts."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_attempts: int = 3,
        page_size: int = 1000,
    ) -> None:
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.region = region
        self.page_size = page_size
        # None falls back to boto3's chain (environment, instance role), as AWS deployments expect.
        session = boto3.session.Session(
            aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name=region
        )
        main = _client_config(endpoint_url, connect_timeout, read_timeout, max_attempts)
        # /readyz must answer promptly: the probe client makes one attempt with short timeouts.
        probe = _client_config(endpoint_url, min(connect_timeout, 2.0), 5.0, 1)
        self._client = session.client("s3", endpoint_url=endpoint_url, config=main)
        self._probe = session.client("s3", endpoint_url=endpoint_url, config=probe)

    @classmethod
    def from_settings(cls, settings: Settings) -> S3BlobStore:
        """The bucket, endpoint, region and credentials named by `settings`."""
        if not settings.s3_bucket:
            raise ValueError("settings.s3_bucket is not set")
        return cls(
            settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
        )

    def __repr__(self) -> str:
        return f"S3BlobStore({self.bucket!r}, endpoint_url={self.endpoint_url!r})"

    @property
    def where(self) -> str:
        """The bucket and endpoint, as error messages name them."""
        endpoint = self.endpoint_url or f"AWS S3 ({self.region})"
        return f"bucket {self.bucket!r} at {endpoint}"

    @contextmanager
    def _errors(self, action: str, key: str | None = None) -> Iterator[None]:
        # Callers see BlobNotFound or BlobStoreError, never a botocore exception.
        try:
            yield
        except ClientError as error:
            code = _error_code(error)
            if key is not None and code in _MISSING_CODES:
                raise BlobNotFound(key) from None
            raise BlobStoreError(f"{action} failed on {self.where}: {_describe(error)}") from error
        except BotoCoreError as error:
            raise BlobStoreError(f"{action} failed on {self.where}: {error}") from error

    def put(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        """Upload `data` as one object (fine for images and bundle files; S3 caps it at 5 GB)."""
        validate_key(key)
        with self._errors(f"put {key!r}"):
            self._client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType=content_type
            )

    def put_file(self, key: str, path: Path, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        """Upload the file at `path`, in parts above `UPLOAD.multipart_threshold` (S3's one
        PUT stops at 5 GB); a few parts in memory at a time."""
        validate_key(key)
        with self._errors(f"put {key!r}"):
            try:
                self._client.upload_file(
                    str(path),
                    self.bucket,
                    key,
                    Config=UPLOAD,
                    ExtraArgs={"ContentType": content_type},
                )
            except S3UploadFailedError as error:  # the failed part's ClientError, as text
                raise BlobStoreError(f"put {key!r} failed on {self.where}: {error}") from error

    def get(self, key: str) -> bytes:
        """The object's bytes; raises BlobNotFound when there is no such object."""
        validate_key(key)
        with self._errors(f"get {key!r}", key=key):
            response = self._client.get_object(Bucket=self.bucket, Key=key)
            with response["Body"] as body:
                return body.read()

    def exists(self, key: str) -> bool:
        """Whether the object exists (a HEAD request)."""
        validate_key(key)
        try:
            with self._errors(f"head {key!r}", key=key):
                self._client.head_object(Bucket=self.bucket, Key=key)
        except BlobNotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        """Delete the object; S3 itself treats deleting a missing key as success."""
        validate_key(key)
        with self._errors(f"delete {key!r}"):
            self._client.delete_object(Bucket=self.bucket, Key=key)

    def check(self) -> None:
        """Raise BlobStoreError (naming bucket and endpoint) unless the bucket can be reached."""
        try:
            self._probe.head_bucket(Bucket=self.bucket)
        except ClientError as error:
            raise BlobStoreError(_bucket_problem(self.where, error)) from error
        except BotoCoreError as error:
            raise BlobStoreError(f"cannot reach {self.where}: {error}") from error

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (embedded, dev and test set-ups)."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as error:
            if _error_code(error) not in _NO_BUCKET_CODES:
                raise BlobStoreError(_bucket_problem(self.where, error)) from error
        except BotoCoreError as error:
            raise BlobStoreError(f"cannot reach {self.where}: {error}") from error
        self._create_bucket()

    def _create_bucket(self) -> None:
        # us-east-1 rejects an explicit LocationConstraint; every other region requires one.
        extra = {}
        if self.region != "us-east-1":
            extra["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._client.create_bucket(Bucket=self.bucket, **extra)
        except ClientError as error:
            if _error_code(error) != "BucketAlreadyOwnedByYou":  # lost a race: still fine
                raise BlobStoreError(f"cannot create {self.where}: {_describe(error)}") from error
        except BotoCoreError as error:
            raise BlobStoreError(f"cannot reach {self.where}: {error}") from error

    def list(self, prefix: str) -> list[str]:
        """Every key that starts with `prefix`, sorted, across all result pages."""
        prefix = _validate_prefix(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": self.page_size}
        )
        with self._errors(f"list {prefix!r}"):
            keys = [item["Key"] for page in pages for item in page.get("Contents", ())]
        return sorted(keys)


def _client_config(
    endpoint_url: str | None, connect_timeout: float, read_timeout: float, attempts: int
) -> Config:
    options: dict = {}
    if endpoint_url:
        # MinIO and moto serve buckets as paths, and many S3 look-alikes reject the
        # CRC checksums that recent botocore sends by default.
        options["s3"] = {"addressing_style": "path"}
        options["request_checksum_calculation"] = "when_required"
        options["response_checksum_validation"] = "when_required"
    return Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"mode": "standard", "total_max_attempts": attempts},
        **options,
    )


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _describe(error: ClientError) -> str:
    details = error.response.get("Error", {})
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    message = details.get("Message") or ""
    return f"{details.get('Code') or status} {message}".strip()


def _bucket_problem(where: str, error: ClientError) -> str:
    code = _error_code(error)
    if code in _NO_BUCKET_CODES:
        return f"{where} does not exist"
    if code in _REFUSED_CODES:
        return f"access to {where} refused (check the credentials): {_describe(error)}"
    return f"{where} is not usable: {_describe(error)}"


def open_blob_store(settings: Settings) -> BlobStore:
    """S3 when `settings.s3_bucket` is set, else a local store under `data_dir/blobs`."""
    if settings.s3_bucket:
        return S3BlobStore.from_settings(settings)
    return LocalBlobStore(settings.data_dir / "blobs")


def _dir_prefix(prefix: str) -> str:
    # "models/v1" must not also match "models/v10/…".
    prefix = _validate_prefix(prefix)
    return prefix if not prefix or prefix.endswith("/") else f"{prefix}/"


def upload_dir(store: BlobStore, local_dir: Path, prefix: str) -> list[str]:
    """Copy every file under `local_dir` to `prefix/<relative path>`; returns the keys written."""
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise NotADirectoryError(f"{local_dir} is not a directory")
    prefix = _dir_prefix(prefix)
    files = sorted(path for path in local_dir.rglob("*") if path.is_file())
    if not files:
        raise ValueError(f"{local_dir} holds no files to upload")
    keys = []
    for path in files:
        key = validate_key(prefix + path.relative_to(local_dir).as_posix())
        content_type = mimetypes.guess_type(path.name)[0] or DEFAULT_CONTENT_TYPE
        store.put(key, path.read_bytes(), content_type)
        keys.append(key)
    return keys


def download_dir(store: BlobStore, prefix: str, local_dir: Path) -> Path:
    """Copy every blob under `prefix` into `local_dir`, which appears complete or not at all."""
    local_dir = Path(local_dir)
    prefix = _dir_prefix(prefix)
    if local_dir.is_dir() and any(local_dir.iterdir()):
        raise FileExistsError(f"{local_dir} already exists and is not empty")
    keys = store.list(prefix)
    if not keys:
        raise BlobNotFound(prefix)
    local_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = local_dir.with_name(f".{local_dir.name}.{secrets.token_hex(6)}.partial")
    try:
        for key in keys:
            _download_one(store, key, staging, key[len(prefix) :])
        _publish(staging, local_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return local_dir


def _download_one(store: BlobStore, key: str, staging: Path, relative: str) -> None:
    if relative.endswith("/"):
        return  # a "folder" marker object that some S3 tools create: nothing to copy
    # Keys written by other tools are checked too, so none can land outside the staging dir.
    target = staging.joinpath(*validate_key(relative).split("/"))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(store.get(key))


def _publish(staging: Path, local_dir: Path) -> None:
    # rename(2) may replace an empty directory. If a concurrent download of the same prefix
    # got there first, its copy is as good as ours (bundles are immutable per version).
    try:
        os.replace(staging, local_dir)
    except OSError:
        if not (local_dir.is_dir() and any(local_dir.iterdir())):
            raise
