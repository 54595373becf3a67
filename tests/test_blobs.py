"""Blob stores: the same behaviour from a local directory and from S3 (a real moto server)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.settings import Settings
from harness.http import free_port
from harness.stack import ACCESS_KEY, REGION, SECRET_KEY, moto_s3_server
from store.blobs import (
    BlobNotFound,
    BlobStore,
    BlobStoreError,
    LocalBlobStore,
    S3BlobStore,
    download_dir,
    open_blob_store,
    upload_dir,
)

BINARY = bytes(range(256)) * 40 + b"\x00\xff\r\n"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """One moto server for the module; each test gets its own bucket."""
    with moto_s3_server() as url:
        yield url


def s3_store(endpoint: str, bucket: str | None = None, **options) -> S3BlobStore:
    """A store on the moto server, with a fresh bucket name unless one is given."""
    return S3BlobStore(
        bucket or f"test-{uuid.uuid4().hex[:12]}",
        endpoint_url=endpoint,
        region=REGION,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        **options,
    )


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> BlobStore:
    """A fresh, empty store of each kind (S3 lists two keys a page, to exercise pagination)."""
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    s3 = s3_store(request.getfixturevalue("s3_endpoint"), page_size=2)
    s3.ensure_bucket()
    return s3


def test_stores_satisfy_the_protocol(store):
    assert isinstance(store, BlobStore)


def test_put_get_round_trip_binary(store):
    store.put("images/abc", BINARY, "image/png")
    assert store.get("images/abc") == BINARY


def test_empty_blob(store):
    store.put("empty", b"")
    assert store.get("empty") == b""
    assert store.exists("empty")


def test_get_missing_raises_blob_not_found(store):
    with pytest.raises(BlobNotFound) as caught:
        store.get("images/missing")
    assert isinstance(caught.value, KeyError)
    assert caught.value.key == "images/missing"


def test_exists(store):
    assert not store.exists("images/abc")
    store.put("images/abc", b"x")
    assert store.exists("images/abc")
    assert not store.exists("images")  # a prefix of other keys is not a blob


def test_delete_is_idempotent(store):
    store.put("images/abc", b"x")
    store.delete("images/abc")
    assert not store.exists("images/abc")
    store.delete("images/abc")
    store.delete("never/written")
    with pytest.raises(BlobNotFound):
        store.get("images/abc")


def test_overwrite_replaces(store):
    store.put("k", b"first version, longer")
    store.put("k", b"second")
    assert store.get("k") == b"second"


def test_list_by_prefix_sorted(store):
    keys = ["images/b", "images/a", "images/sub/c", "imagesX/d", "other/e"]
    for key in keys:
        store.put(key, key.encode())
    assert store.list("images/") == ["images/a", "images/b", "images/sub/c"]
    assert store.list("images") == ["images/a", "images/b", "images/sub/c", "imagesX/d"]
    assert store.list("images/s") == ["images/sub/c"]
    assert store.list("") == sorted(keys)
    assert store.list("nothing/") == []


def test_list_many_keys(store):
    keys = [f"many/{i:03d}" for i in range(11)]
    for key in reversed(keys):
        store.put(key, b"")
    assert store.list("many/") == keys


@pytest.mark.parametrize("key", ["../x", "a/../b", "/abs", "a\\b", "", "a//b", ".hidden", "a/."])
def test_unsafe_keys_refused(store, key):
    with pytest.raises(ValueError):
        store.put(key, b"x")
    with pytest.raises(ValueError):
        store.get(key)


def test_unsafe_prefix_refused(store):
    with pytest.raises(ValueError):
        store.list("../")


def test_check_passes(store):
    store.check()


def make_bundle(root: Path) -> Path:
    """A small bundle-like directory: two files at the top and one nested."""
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"vocab_size": 30}')
    (root / "decoder.weights.h5").write_bytes(BINARY)
    (root / "extra").mkdir()
    (root / "extra" / "notes.txt").write_text("nested")
    return root


def read_tree(root: Path) -> dict[str, bytes]:
    """Every file under `root`, by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_upload_download_dir_round_trip(store, tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    keys = upload_dir(store, bundle, "models/v1")
    assert keys == [
        "models/v1/config.json",
        "models/v1/decoder.weights.h5",
        "models/v1/extra/notes.txt",
    ]
    store.put("models/v10/config.json", b"another version")
    out = download_dir(store, "models/v1/", tmp_path / "cache" / "v1")
    assert out == tmp_path / "cache" / "v1"
    assert read_tree(out) == read_tree(bundle)
    assert [p.name for p in out.parent.iterdir()] == ["v1"]  # no staging directory left behind


def test_download_dir_missing_prefix(store, tmp_path):
    with pytest.raises(BlobNotFound):
        download_dir(store, "models/none", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_download_dir_refuses_non_empty_target(store, tmp_path):
    upload_dir(store, make_bundle(tmp_path / "bundle"), "models/v2")
    target = tmp_path / "target"
    target.mkdir()
    download_dir(store, "models/v2", target)  # an empty directory is fine
    with pytest.raises(FileExistsError):
        download_dir(store, "models/v2", target)


def test_upload_dir_refuses_empty_or_missing_dir(store, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError):
        upload_dir(store, tmp_path / "empty", "models/v3")
    with pytest.raises(NotADirectoryError):
        upload_dir(store, tmp_path / "absent", "models/v3")


# S3 only


def test_s3_pagination_makes_several_requests(s3_endpoint):
    s3 = s3_store(s3_endpoint, page_size=3)
    s3.ensure_bucket()
    for i in range(7):
        s3.put(f"p/{i}", b"")
    calls = []
    s3._client.meta.events.register("after-call.s3.ListObjectsV2", lambda **_: calls.append(1))
    assert s3.list("p/") == [f"p/{i}" for i in range(7)]
    assert len(calls) == 3


def test_s3_keeps_content_type(s3_endpoint):
    s3 = s3_store(s3_endpoint)
    s3.ensure_bucket()
    s3.put("images/a", b"\x89PNG", "image/png")
    head = s3._client.head_object(Bucket=s3.bucket, Key="images/a")
    assert head["ContentType"] == "image/png"


def test_put_file_streams_a_file_in_and_round_trips(store, tmp_path):
    path = tmp_path / "archive.zip"
    data = BINARY * 1000 + bytes(9 << 20)  # ~19 MiB: three parts of a multipart upload on S3
    path.write_bytes(data)
    store.put_file("datasets/a", path, "application/zip")
    assert store.get("datasets/a") == data
    assert store.list("datasets/") == ["datasets/a"]


def test_s3_put_file_keeps_content_type_and_fails_as_a_store_error(s3_endpoint, tmp_path):
    path = tmp_path / "archive.tar"
    path.write_bytes(BINARY)
    s3 = s3_store(s3_endpoint)
    s3.ensure_bucket()
    s3.put_file("datasets/b", path, "application/tar")
    head = s3._client.head_object(Bucket=s3.bucket, Key="datasets/b")
    assert head["ContentType"] == "application/tar"
    with pytest.raises(BlobStoreError, match="no-such-bucket"):
        s3_store(s3_endpoint, bucket="no-such-bucket").put_file("datasets/b", path)


def test_s3_ensure_bucket_is_idempotent(s3_endpoint):
    s3 = s3_store(s3_endpoint)
    s3.ensure_bucket()
    s3.ensure_bucket()
    s3.check()


def test_s3_check_missing_bucket_names_it(s3_endpoint):
    s3 = s3_store(s3_endpoint, bucket="no-such-bucket")
    with pytest.raises(BlobStoreError, match="no-such-bucket") as caught:
        s3.check()
    assert s3_endpoint in str(caught.value)


def test_s3_get_from_missing_bucket_is_a_store_error(s3_endpoint):
    s3 = s3_store(s3_endpoint, bucket="no-such-bucket")
    with pytest.raises(BlobStoreError, match="no-such-bucket"):
        s3.get("images/a")


def test_s3_unreachable_endpoint_fails_fast():
    s3 = s3_store(f"http://127.0.0.1:{free_port()}", bucket="anything")
    started = time.monotonic()
    with pytest.raises(BlobStoreError, match="anything"):
        s3.check()
    with pytest.raises(BlobStoreError):
        s3.get("images/a")  # the main client retries, but boundedly
    assert time.monotonic() - started < 10


# Local only


def test_local_refuses_escaping_keys(tmp_path):
    local = LocalBlobStore(tmp_path / "blobs")
    with pytest.raises(ValueError):
        local.put("../x", b"escaped")
    assert not (tmp_path / "x").exists()


def test_local_write_leaves_no_temp_files(tmp_path):
    local = LocalBlobStore(tmp_path / "blobs")
    local.put("images/a", b"one")
    local.put("images/a", b"two")
    assert [p.name for p in (tmp_path / "blobs" / "images").iterdir()] == ["a"]


def test_local_check_fails_when_root_is_a_file(tmp_path):
    (tmp_path / "blobs").write_text("not a directory")
    with pytest.raises(BlobStoreError):
        LocalBlobStore(tmp_path / "blobs").check()


# Settings


def settings(tmp_path: Path, **changes) -> Settings:
    """Embedded-mode settings under `tmp_path`, with some fields replaced."""
    base = Settings(
        data_dir=tmp_path, database_url="sqlite://", broker_url="memory://", s3_bucket=None
    )
    return base.with_overrides(**changes)


def test_open_blob_store_local_by_default(tmp_path):
    opened = open_blob_store(settings(tmp_path))
    assert isinstance(opened, LocalBlobStore)
    assert opened.root == tmp_path / "blobs"


def test_open_blob_store_s3_when_bucket_set(tmp_path, s3_endpoint):
    opened = open_blob_store(
        settings(
            tmp_path,
            s3_bucket="from-settings",
            s3_endpoint_url=s3_endpoint,
            s3_access_key=ACCESS_KEY,
            s3_secret_key=SECRET_KEY,
        )
    )
    assert isinstance(opened, S3BlobStore)
    opened.ensure_bucket()
    opened.put("k", b"v")
    assert opened.get("k") == b"v"
