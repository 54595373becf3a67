"""The webhook sender's retry policy and the parsing around it (no servers needed)."""

from __future__ import annotations

import socket
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from core.netguard import Guard
from core.settings import DEFAULT_SCHEDULE, Settings, SettingsError, from_env, to_env
from store.tables import Delivery
from worker.webhooks import Sender, parse_retry_after, post

LOOPBACK = Guard.from_allow("127.0.0.1/32")  # the test's receiver is the one private address

KEY = Fernet.generate_key().decode()
SPEC_SCHEDULE_S = [0, 5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 14 * 3600, 20 * 3600,
                   24 * 3600]  # fmt: skip


def sender(rng: float, schedule=DEFAULT_SCHEDULE, jitter=0.1) -> Sender:
    # A key of its own: the embedded default would write ./secret.key
    settings = Settings(
        Path("."),
        "sqlite://",
        "filesystem://",
        None,
        secret_keys=KEY,
        webhook_schedule=schedule,
        webhook_jitter=jitter,
    )
    return Sender(settings, db=None, broker=None, rng=lambda: rng)


def delivery(step: int) -> Delivery:
    return Delivery(id=uuid.uuid4(), step=step)


def test_the_default_schedule_is_the_specifications():
    assert list(DEFAULT_SCHEDULE) == SPEC_SCHEDULE_S
    assert from_env({}).webhook_schedule == DEFAULT_SCHEDULE
    assert from_env(to_env(from_env({}))).webhook_schedule == DEFAULT_SCHEDULE


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("0,5s,5m,30m,2h", (0, 5, 300, 1800, 7200)),
        ("0, 250ms, 1.5", (0, 0.25, 1.5)),
    ],
)
def test_the_schedule_setting_takes_units(raw, seconds):
    assert from_env({"WEBHOOK_SCHEDULE": raw}).webhook_schedule == seconds


@pytest.mark.parametrize("raw", ["5x", "soon", "0,-5s"])
def test_a_bad_schedule_is_refused_at_start_up(raw):
    with pytest.raises(SettingsError, match="WEBHOOK_SCHEDULE"):
        from_env({"WEBHOOK_SCHEDULE": raw})


def test_each_retry_waits_the_next_delay_of_the_schedule_within_the_jitter():
    low, high, middle = sender(0.0), sender(1.0), sender(0.5)
    for step in range(len(DEFAULT_SCHEDULE) - 1):  # after attempt step + 1 failed
        nominal = DEFAULT_SCHEDULE[step + 1]
        assert middle.retry_delay(delivery(step), None) == pytest.approx(nominal)
        assert low.retry_delay(delivery(step), None) == pytest.approx(nominal * 0.9)
        assert high.retry_delay(delivery(step), None) == pytest.approx(nominal * 1.1)


def test_the_last_failure_in_the_schedule_gives_up():
    assert sender(0.5).retry_delay(delivery(len(DEFAULT_SCHEDULE) - 1), None) is None
    assert sender(0.5, schedule=(0.0,)).retry_delay(delivery(0), None) is None


def test_retry_after_lengthens_a_delay_but_never_past_the_longest():
    policy = sender(0.5)
    assert policy.retry_delay(delivery(0), 60) == 60  # 5 s in the schedule
    assert policy.retry_delay(delivery(0), 1) == pytest.approx(5)  # never shorter
    assert policy.retry_delay(delivery(0), 10**9) == max(DEFAULT_SCHEDULE)


def test_retry_after_reads_seconds_and_http_dates():
    now = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120") == 120
    assert parse_retry_after("Sat, 21 Nov 2026 12:01:30 GMT", now) == 90
    assert parse_retry_after("Sat, 21 Nov 2026 11:00:00 GMT", now) == 0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_a_garbled_or_refused_answer_is_a_logged_failure_not_a_crash():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def answer_garbage() -> None:
            connection, _ = server.accept()
            with connection:
                connection.recv(65536)
                connection.sendall(b"this is not HTTP\r\n\r\n")

        thread = threading.Thread(target=answer_garbage)
        thread.start()
        record, retry_after = post(f"http://127.0.0.1:{port}/", {}, b"{}", 5, LOOPBACK)
        thread.join()
    assert record.status_code is None and "BadStatusLine" in record.error
    assert retry_after is None
    refused, _ = post(f"http://127.0.0.1:{port}/", {}, b"{}", 5, LOOPBACK)  # nothing listens now
    assert refused.status_code is None and "Connection" in refused.error
