"""The embedded broker: messages written by one process are read whole by a fast-polling other,
and everything it writes stays in its folder."""

from __future__ import annotations

import multiprocessing

from kombu import Connection

from core.broker import filesystem_options
from core.fstransport import Transport

MESSAGES = 400


def connection(folder) -> Connection:
    options = filesystem_options(folder, polling_interval=0.0005)
    return Connection("filesystem://", transport=Transport, transport_options=options)


def produce(folder) -> None:
    payload = "x" * 200_000  # large bodies widen the window a non-atomic write leaves open
    with connection(folder) as conn:
        queue = conn.SimpleQueue("inference")
        for i in range(MESSAGES):
            queue.put({"i": i, "body": payload})
        queue.close()


def test_a_fast_consumer_never_sees_a_partial_message(tmp_path, monkeypatch):
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # kombu's default control folder is ./control
    producer = multiprocessing.get_context("spawn").Process(target=produce, args=(tmp_path,))
    producer.start()
    seen = []
    with connection(tmp_path) as conn:
        queue = conn.SimpleQueue("inference")
        while len(seen) < MESSAGES:
            message = queue.get(timeout=60)
            assert len(message.payload["body"]) == 200_000
            seen.append(message.payload["i"])
            message.ack()
        queue.close()
    producer.join(timeout=60)
    assert sorted(seen) == list(range(MESSAGES))
    assert list(workdir.iterdir()) == []  # nothing written outside the broker's folder
