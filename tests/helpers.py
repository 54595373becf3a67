"""What the test modules share besides fixtures (those are in conftest.py): images, the
inference queue's contents, migrated databases, jobs made through the store, dataset folders,
the stand-in service, and tables of cases. Not a test module: no test module imports another,
they import this (conftest registers it for pytest's assertion rewriting)."""

from __future__ import annotations

import base64
import io
import json
import os
import tarfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from PIL import Image

from harness.stack import Stack, fresh_postgres, running_stack

# Images


def settings_free_env() -> dict[str, str]:
    """This process's environment without any of the service's settings: what a command started
    as a new user would start it sees."""
    from core.settings import KNOWN

    return {
        name: value
        for name, value in os.environ.items()
        if name not in KNOWN and not name.startswith(("CAPTIONER_", "AWS_", "S3_"))
    }


def png(size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A small solid-colour PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    """Standard base64 text, as JSON submissions carry images."""
    return base64.b64encode(data).decode()


def tiff() -> bytes:
    """A small TIFF (a format the service takes)."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "TIFF")
    return buffer.getvalue()


def ico() -> bytes:
    """A small Windows icon: an image, but not in a format the service takes."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, "ICO")
    return buffer.getvalue()


# The inference queue


def queued_messages(connection) -> list[list[str]]:
    """The chunks of job ids waiting on the inference queue (Celery messages, oldest first)."""
    messages = [json.loads(raw) for raw in reversed(connection.lrange("inference", 0, -1))]
    return [json.loads(base64.b64decode(m["body"]))[0][0] for m in messages]


def queued_ids(connection) -> list[str]:
    """Job ids waiting on the inference queue, oldest first."""
    return [job_id for chunk in queued_messages(connection) for job_id in chunk]


# The store


def stored_image(app, job_id: str) -> tuple[str, bytes | None]:
    """Where a job's image lies: (its blob key, the bytes its row keeps)."""
    from sqlalchemy.orm import undefer

    from store.tables import Job

    with app.extensions["captioner"].db.session() as session:
        job = session.get(Job, uuid.UUID(job_id), options=[undefer(Job.image_data)])
        return job.image_key, job.image_data


@contextmanager
def migrated_database(kind: str, folder) -> Iterator:
    """A `store.db.Database` migrated to the newest schema: a fresh Postgres database
    (`kind="postgres"`) or a SQLite file in `folder`; disposed of afterwards."""
    from store.db import Database
    from store.migrate import upgrade

    url_context = (
        fresh_postgres() if kind == "postgres" else nullcontext(f"sqlite:///{folder / 'store.db'}")
    )
    with url_context as url:
        upgrade(url)
        database = Database(url)
        try:
            yield database
        finally:
            database.dispose()


def new_job(**changes):
    """A `store.jobs.NewJob` for a small PNG of owner "tenant", with `changes`."""
    from store.jobs import NewJob

    fields = dict(
        owner="tenant",
        image_key="images/x",
        image_bytes=10,
        image_format="PNG",
        image_width=4,
        image_height=3,
    )
    return NewJob(**(fields | changes))


OWNER = "tenant-a"  # the api_key fixture's tenant (conftest.py)
TOKENS = ["a", "red", "circle"]  # the caption of succeeded_job's jobs


def succeeded_job(
    app,
    attention: bytes | None,
    image: bytes | None = None,
    in_row: bool = True,
    image_in_row: bool = False,
    **limits,
) -> uuid.UUID:
    """A job of OWNER taken through create, claim and finish in the app's store, captioned
    TOKENS by "v1", its .npy `attention` in its row, or (as before migration 0005) in the blob
    store; `attention` None leaves it out. Its image is an object, or kept in its row. `limits`:
    the result's confidence and ood, if any."""
    from store import jobs
    from store.blob_keys import attention_key, image_key

    svc, job_id = app.extensions["captioner"], uuid.uuid4()
    if not image_in_row:
        svc.blobs.put(image_key(job_id), image or png(), "image/png")
    new = jobs.NewJob(
        owner=OWNER,
        image_key="" if image_in_row else image_key(job_id),
        image_data=image or png() if image_in_row else None,
        image_bytes=1,
        image_format="PNG",
        image_width=64,
        image_height=48,
        id=job_id,
    )
    with svc.db.session() as session:
        jobs.create_job(session, new)
    with svc.db.session() as session:
        claim = jobs.claim_jobs(session, [job_id], lease_seconds=60, max_attempts=3)
        result = jobs.JobResult(
            caption=" ".join(TOKENS),
            tokens=TOKENS,
            token_log_probs=[-0.1] * len(TOKENS),
            model_version="v1",
            attention=attention if in_row else None,
            attention_shape=[len(TOKENS), 64],
            predict_ms=1.0,
            batch_size=1,
            **limits,
        )
        assert jobs.finish_jobs(session, claim.token, {job_id: result}) == [job_id]
    if attention is not None and not in_row:
        svc.blobs.put(attention_key(job_id), attention)
    return job_id


# Datasets


def write_dataset(root: Path, sizes: dict[str, int] | None = None) -> Path:
    """A tiny COCO-format folder: `sizes[split]` 8×6 PNGs in images/<split>/, one caption each."""
    sizes = sizes or {"train": 3, "val": 2}
    (root / "annotations").mkdir(parents=True)
    next_id = 0
    for split, count in sizes.items():
        (root / "images" / split).mkdir(parents=True)
        images, captions = [], []
        for i in range(count):
            Image.new("RGB", (8, 6), (40 * i, 100, 200)).save(root / "images" / split / f"{i}.png")
            images.append({"id": next_id, "file_name": f"{i}.png", "width": 8, "height": 6})
            captions.append({"id": 100 + next_id, "image_id": next_id, "caption": f"picture {i}"})
            next_id += 1
        document = {"images": images, "annotations": captions}
        (root / "annotations" / f"captions_{split}.json").write_text(json.dumps(document))
    return root


def tar_folder(folder: Path, out: Path, mode: str = "w:gz", arcname: str = "") -> Path:
    """`folder`'s files in a tar archive at `out` (gzipped by default), under `arcname`."""
    with tarfile.open(out, mode) as archive:
        for path in sorted(folder.rglob("*")):
            archive.add(path, str(Path(arcname) / path.relative_to(folder)), recursive=False)
    return out


# The stand-in service

STANDIN_WORDS = ("a", "stand-in", "caption")  # what model.standin says of every image


@contextmanager
def standin_stack(random_bundle, folder: Path) -> Iterator[Stack]:
    """The API and one inference worker serving the stand-in model (10 ms a batch), with the
    untrained bundle registered as v1 (not promoted: the worker keeps serving the stand-in)."""
    from model.bundle import save_bundle
    from worker.bundles import import_bundle

    bundle = save_bundle(random_bundle, folder / "bundle")
    with running_stack(
        folder,
        workers=["inference"],
        model_bundle=bundle,
        batch_max_size=1,
        bench_standin_model_ms=10,
    ) as stack:
        import_bundle(stack.db, stack.blobs, bundle, promote=False)
        yield stack


# The SSRF guard

BLOCKED = [  # (URL, what the refusal says): every spelling of an address the guard refuses
    ("http://127.0.0.1/", "loopback"),
    ("http://localhost/", "loopback name"),
    ("http://10.0.0.1/", "private"),
    ("http://172.16.0.1/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://100.64.0.1/", "carrier-grade NAT"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://[::1]/", "loopback"),
    ("http://[fc00::1]/", "unique-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[::ffff:127.0.0.1]/", "IPv4-mapped"),
    ("http://[::ffff:0:a00:1]/", "IPv4-translated"),
    ("http://[64:ff9b::a00:1]/", "NAT64"),
    ("http://2130706433/", "loopback"),
    ("http://0177.0.0.1/", "loopback"),
    ("http://0x7f.1/", "loopback"),
    ("http://127.1/", "loopback"),
    ("http://224.0.0.1/", "multicast"),
    ("http://240.0.0.1/", "reserved"),
    ("https://sub.localhost:8443/", "loopback name"),
]


# The fuzz tests' one exception (test_api_fuzz, test_stateful_fuzz). Where a request can match
# the schema and still be wrong, "valid data is accepted" cannot hold: the content is checked
# beyond what JSON Schema says. Every other check runs everywhere.
CONTENT_CHECKED = {
    "POST /v1/jobs": "the image must decode; URLs must pass the SSRF guard",
    "POST /v1/batches": "the images must decode; URLs must pass the SSRF guard",
    "GET /v1/jobs": "a cursor must be one the API issued",
    "POST /v1/datasets": "the archive must be a COCO-format zip or tar",
    "POST /v1/training-runs": "base_version and an uploaded dataset's id must exist; the webhook "
    "must pass the SSRF guard",
}
