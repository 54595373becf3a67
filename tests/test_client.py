"""The light client (`captioner_client`, httpx and numpy only) against a real API and inference
worker whose model is the stand-in: typed jobs, batches, attention, cancel, retries after a 429
with one Idempotency-Key, problem errors, webhook signatures, and nothing heavy imported."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from captioner.processes import api_server
from captioner_client import (
    ApiError,
    Batch,
    CaptionerError,
    Client,
    Job,
    RetryPolicy,
    ServerUnreachable,
    WebhookVerificationError,
    verify_webhook,
)
from core.signatures import signed_headers
from harness.http import free_port
from harness.stack import Stack, admin_key
from tests.helpers import STANDIN_WORDS, png, standin_stack, tar_folder, write_dataset

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 1  # requests a second for the rate limit test
HEAVY = ["tensorflow", "keras", "celery", "sqlalchemy", "boto3", "flask", "pydantic", "core",
         "api", "store", "worker", "model", "captioner"]  # fmt: skip


@pytest.fixture(scope="module")
def stack(random_bundle, tmp_path_factory) -> Iterator[Stack]:
    """This module's service."""
    with standin_stack(random_bundle, tmp_path_factory.mktemp("client")) as running:
        yield running


@pytest.fixture(scope="module")
def api(stack) -> Iterator[Client]:
    """The light client on the stack, with its admin key."""
    with Client(stack.client.base_url, stack.api_key) as client:
        yield client


class Recording(httpx.HTTPTransport):
    """A real transport that keeps every request it sent and the status it got back."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[httpx.Request, int]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.sent.append((request, response.status_code))
        return response


def test_a_path_and_bytes_each_become_a_typed_job_with_its_caption(api, tmp_path):
    path = tmp_path / "red.png"
    path.write_bytes(png())
    queued = api.submit(path)
    assert isinstance(queued, Job) and queued.raw["id"] == queued.id
    held = api.submit(png((40, 30), (0, 90, 200)), wait=20, max_length=2)  # Prefer: wait=20
    assert held.status == "succeeded" and held.caption.words == STANDIN_WORDS[:2]
    job = api.wait(queued, timeout=30)
    assert job.done and job.status == "succeeded" and job.id == queued.id
    assert job.caption.words == STANDIN_WORDS and job.caption.caption == " ".join(STANDIN_WORDS)
    assert job.caption.model_version and len(job.caption.log_probs) == 3
    # The stand-in says nothing of its captions' limits: through worker, store and API, nulls
    assert (job.caption.confidence, job.caption.ood, job.warnings) == (None, None, ())
    assert api.job(job.id) == job and api.job(job.id).raw["result"]["tokens"] == list(STANDIN_WORDS)


def test_a_folder_goes_as_one_batch_and_wait_all_reports_progress(api, tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(png((30 + i, 20)))
    (tmp_path / "notes.txt").write_text("not an image")
    batch = api.submit_batch(tmp_path, beam_size=1)
    assert isinstance(batch, Batch) and batch.size == 3 and len(batch.jobs) == 3
    seen: list[tuple[int, int]] = []
    jobs = api.wait_all(batch, timeout=30, progress=lambda done, total: seen.append((done, total)))
    assert [job.id for job in jobs] == [job.id for job in batch.jobs]
    assert {job.status for job in jobs} == {"succeeded"} and seen[-1] == (3, 3)
    assert api.batch(batch).done


def test_wait_all_draws_a_progress_bar_on_stderr(api, capsys):
    jobs = [api.submit(png((20 + i, 20))) for i in range(2)]
    assert all(job.done for job in api.wait_all(jobs, timeout=30))
    assert "2/2" in capsys.readouterr().err.rsplit("\r", 1)[-1]


def test_attention_is_a_grid_of_weights_per_word_and_a_png(api):
    job = api.submit(png(), wait=20)
    weights = api.attention(job)
    assert weights.shape == (3, 8, 8)  # (words, rows, columns)
    assert np.allclose(weights.astype(np.float32).sum(axis=(1, 2)), 1.0, atol=1e-2)
    assert api.attention_png(job.id).startswith(b"\x89PNG\r\n\x1a\n")


def test_a_queued_job_is_canceled_and_an_ended_one_is_a_409(api, stack):
    stack.celery.control.cancel_consumer("inference", destination=["inference@stack"], reply=True)
    try:
        queued = api.submit(png())
        canceled = api.cancel(queued)
    finally:
        stack.celery.control.add_consumer("inference", destination=["inference@stack"], reply=True)
    assert canceled.status == "canceled" and api.wait(queued, 5).status == "canceled"
    with pytest.raises(ApiError) as refused:
        api.cancel(api.submit(png(), wait=20))
    assert refused.value.status == 409 and refused.value.code == "not_cancelable"


def test_wait_is_held_by_the_api_rather_than_polling(stack):
    stack.celery.control.cancel_consumer("inference", destination=["inference@stack"], reply=True)
    recording = Recording()
    with Client(stack.client.base_url, stack.api_key, transport=recording) as client:
        try:
            job = client.submit(png())
            threading.Timer(
                1.0,
                stack.celery.control.add_consumer,
                args=["inference"],
                kwargs={"destination": ["inference@stack"]},
            ).start()
            assert client.wait(job, 30).status == "succeeded"
        finally:
            stack.celery.control.add_consumer(
                "inference", destination=["inference@stack"], reply=True
            )
    reads = [request for request, _ in recording.sent if request.method == "GET"]
    assert len(reads) <= 2 and reads[0].headers["Prefer"].startswith("wait=")  # not 20 polls


def test_a_correction_is_typed_and_listed(api):
    job = api.submit(png((33, 21)), wait=20)
    correction = api.correct(job, "a blue square")
    assert (correction.job_id, correction.caption) == (job.id, "a blue square")
    assert correction.model_caption == " ".join(STANDIN_WORDS)
    assert api.corrections()[0] == correction


def test_jobs_pages_newest_first_with_a_cursor(api):
    submitted = [api.submit(png((20, 20 + i))).id for i in range(3)]
    first = api.jobs(limit=2)
    assert [job.id for job in first.jobs] == submitted[:0:-1] and first.next_cursor
    after = api.jobs(limit=2, cursor=first.next_cursor)
    assert after.jobs[0].id == submitted[0]
    api.wait_all(submitted, timeout=30, progress=False)
    assert all(job.status == "succeeded" for job in api.jobs(status="succeeded").jobs)


@pytest.fixture(scope="module")
def limited(stack) -> Iterator[str]:
    """A second API process on the stack allowing LIMIT requests a second per key."""
    with api_server(stack.settings.with_overrides(rate_limit=f"{LIMIT}/second")) as url:
        yield url


def test_a_429_is_retried_after_retry_after_with_one_idempotency_key(stack, limited):
    recording = Recording()
    key = admin_key(stack.db, "limited")
    with Client(limited, key, transport=recording, retry=RetryPolicy(max_wait_s=3)) as api:
        started = time.monotonic()
        jobs = [api.submit(png((20, 20 + i))) for i in range(3)]  # 1 a second: some refused
        assert time.monotonic() - started < 8
        assert {job.id for job in api.jobs().jobs} == {job.id for job in jobs}  # each made once
    tries: dict[str, list[int]] = {}
    for request, status in recording.sent:
        if request.method == "POST":
            tries.setdefault(request.headers["Idempotency-Key"], []).append(status)
    assert len(tries) == 3  # a key per job, the same for each of its tries
    assert all(statuses[-1] == 202 and set(statuses[:-1]) <= {429} for statuses in tries.values())
    assert any(429 in statuses for statuses in tries.values())


def test_connection_errors_are_retried_then_raised():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(url, "k", retry=RetryPolicy(attempts=3, backoff_s=0.01)) as api:
        started = time.monotonic()
        with pytest.raises(ServerUnreachable) as error:
            api.job("00000000-0000-0000-0000-000000000000")
        assert time.monotonic() - started >= 0.03  # two pauses: 0.01 s, then 0.02 s
    assert error.value.url == url and isinstance(error.value.__cause__, httpx.ConnectError)


def test_a_server_that_is_down_is_said_so_within_a_second_naming_its_url():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(url, "k") as api:  # the default retry policy
        started = time.monotonic()
        with pytest.raises(CaptionerError) as error:
            api.submit(png())
        assert time.monotonic() - started < 2
    assert isinstance(error.value, ServerUnreachable)
    assert f"no captioner API answers at {url}" in str(error.value)
    assert "`captioner up`" in str(error.value) and "`make up`" in str(error.value)


@pytest.mark.parametrize(
    ("call", "status", "code"),
    [
        (lambda api: api.submit(b"not an image"), 415, "not_an_image"),
        (lambda api: api.submit(png(), beam_size=99), 400, "invalid_option"),
        (lambda api: api.jobs(limit=1000), 400, "invalid_limit"),
        (lambda api: api.job("00000000-0000-0000-0000-000000000000"), 404, "job_not_found"),
        (lambda api: api.start_run(shapes=5), 400, "invalid_dataset"),
    ],
)
def test_error_answers_raise_api_error_with_the_problems_code(api, call, status, code):
    with pytest.raises(ApiError) as error:
        call(api)
    assert (error.value.status, error.value.code) == (status, code)
    assert error.value.detail and error.value.problem["status"] == status


def test_no_key_is_a_401_that_names_the_three_ways_to_give_one(stack, monkeypatch, tmp_path):
    monkeypatch.delenv("CAPTIONER_API_KEY", raising=False)
    monkeypatch.setenv("CAPTIONER_DATA_DIR", str(tmp_path))  # no api-key file there
    with Client(stack.client.base_url) as api, pytest.raises(ApiError) as error:
        api.models()
    message = str(error.value)
    assert error.value.status == 401 and message.startswith("401 unauthorized: no API key")
    for way in ("Client(api_key=KEY)", "--api-key", "CAPTIONER_API_KEY", "Authorization: Bearer"):
        assert way in message
    assert "data/service/api-key" in message and str(tmp_path / "api-key") in message
    for way in ("--api-key", "CAPTIONER_API_KEY", "'Authorization: Bearer KEY'", "api-key file"):
        assert way in error.value.detail  # the API's own answer says it too


def test_a_bad_key_is_a_401_api_error(stack):
    with Client(stack.client.base_url, "not-a-key") as api, pytest.raises(ApiError) as error:
        api.models()
    assert error.value.status == 401


def test_a_training_run_starts_queued_and_is_canceled_without_a_trainer(api):
    run = api.start_run(shapes=20, hyperparameters={"epochs": 1}, promotion="never")
    assert run.status == "queued" and run.raw["hyperparameters"]["epochs"] == 1
    updates = []
    canceled = api.cancel_run(run)
    assert canceled.status == "canceled" and api.watch_run(run, updates.append).done
    assert [update.status for update in updates] == ["canceled"]
    assert run.id in {r.id for r in api.runs()}


def test_an_uploaded_dataset_is_listed_and_a_run_can_train_on_it(api, tmp_path):
    archive = tar_folder(write_dataset(tmp_path / "set"), tmp_path / "set.tar.gz")
    dataset = api.upload_dataset(archive, name="tiny")
    assert (dataset.name, dataset.format, dataset.images, dataset.captions) == ("tiny", "tar", 5, 5)
    assert dataset.id in {d.id for d in api.datasets()}
    run = api.start_run(dataset, promotion="never")
    assert run.raw["dataset"] == {"type": "upload", "id": dataset.id, "name": "tiny"}
    assert api.cancel_run(run.id).status == "canceled"


def test_models_lists_the_registered_version(api):
    (model,) = api.models()
    assert model.version == "v1" and not model.active and model.raw["urls"]["promote"]
    assert (model.calibration_error, model.ood_threshold) == (None, None)  # an older bundle


def test_a_webhook_signed_by_the_service_verifies(api):
    secret = api.request("GET", "/v1/webhooks/secret")["secret"]
    body = b'{"type": "job.completed"}'
    headers = signed_headers([secret], "msg_1", body)
    verify_webhook(secret, headers, body)
    Client.verify_webhook(secret, {k.upper(): v for k, v in headers.items()}, body)
    for tampered, at in [(body + b" ", None), (body, time.time() + 301)]:
        with pytest.raises(WebhookVerificationError):
            verify_webhook(secret, headers, tampered, now=at)


BLOCKER = """
import sys
HEAVY = {heavy!r}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError(f"{{name}} is not for the light client")
sys.meta_path.insert(0, Block())
import captioner_client, captioner_client.cli
captioner_client.cli.add_commands
print(sorted(m for m in sys.modules if m.split(".")[0] in HEAVY))
"""


def test_the_client_imports_without_the_services_packages():
    code = BLOCKER.format(heavy=HEAVY)
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT / "client",
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_light_distribution_depends_on_httpx_and_numpy_only():
    project = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~\[; ]", dep, maxsplit=1)[0] for dep in project["dependencies"]}
    assert names == {"httpx", "numpy"} and not project.get("optional-dependencies")
    assert project["name"] == "captioner-client" and project["requires-python"] == ">=3.11"
    assert project["scripts"]["captioner-client"] == "captioner_client.cli:main"
