"""Each dependency cut off under load and brought back, with the outcome counted.

The production stack (the API as the Dockerfile runs it, one inference worker with a stand-in
model, a webhooks worker, beat) reaches Postgres, Redis, the S3 endpoint and a webhook receiver
through gates (`harness.gate`). Client threads submit single images, each job's end to be told
to the receiver, each client waiting for the previous answer, while one dependency is cut off
for a few seconds. Afterwards: no answer was a 500, every refused submission was a 503 with
Retry-After, every accepted job ends `succeeded` and is told once (one event; a message is sent
again only when the receiver's cut left its answer unknown), and no image blob is left without
its job once the sweeper has run (but for a commit cut off after Postgres made it: see the
test).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from contextlib import ExitStack
from urllib.parse import urlsplit

import httpx
import pytest

from captioner.processes import start_worker, stop, wait_ready
from harness.gate import Gate
from harness.receiver import receiver
from harness.stack import gated_stack
from tests.helpers import png

CLIENTS = 6
OUTAGE_S = 5.0
LOAD_S = OUTAGE_S + 5  # the outage starts after 3 s of load
LEASE_S = 6  # short leases: a job claimed before a cut is taken again soon after it
SWEEP_S = 2.0
SCHEDULE = "0,1s,2s,4s,8s,16s"  # webhook attempts: past the cut off receiver's OUTAGE_S


def load(url: str, key: str, gate: Gate, webhook: str) -> tuple[list[str], Counter, list[dict]]:
    """CLIENTS threads submitting one image at a time for LOAD_S, each job's end told to
    `webhook`, the gate closed for OUTAGE_S from the third second: the ids accepted, the
    answers' statuses, the refusals' bodies."""
    accepted: list[str] = []
    statuses: Counter = Counter()
    refusals: list[dict] = []
    end = time.monotonic() + LOAD_S

    def client(n: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
            i = 0
            while time.monotonic() < end:
                i += 1
                files = {"image": ("a.png", png((40 + n, 30 + i % 20)), "image/png")}
                data = {"webhook": webhook, "webhook_events": "completed"}
                answer = http.post("/v1/jobs", files=files, data=data, timeout=30)
                statuses[answer.status_code] += 1
                if answer.status_code == 202:
                    accepted.append(answer.json()["id"])
                else:
                    wait = answer.headers.get("Retry-After")
                    refusals.append(answer.json() | {"retry_after": wait})

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    gate.close()
    time.sleep(OUTAGE_S)
    gate.open()
    for thread in threads:
        thread.join()
    return accepted, statuses, refusals


@pytest.fixture(scope="module")
def stack(random_bundle_dir, tmp_path_factory):
    """One gated stack for the module, with a webhooks worker and a receiver behind a gate of
    its own (`gates["receiver"]`): each test cuts off another dependency."""
    folder = tmp_path_factory.mktemp("faults-stack")
    with ExitStack() as stack:
        running = stack.enter_context(
            gated_stack(
                folder,
                random_bundle_dir,
                job_lease_seconds=LEASE_S,
                sweep_interval_s=SWEEP_S,
                webhook_schedule=SCHEDULE,
                webhook_timeout_s=5,  # a claim whose commit's answer is lost waits 20 s
            )
        )
        receiving = stack.enter_context(receiver())
        running.gates["receiver"] = stack.enter_context(Gate(urlsplit(receiving.base).port))
        sender = start_worker(
            running.settings, folder / "webhooks.log", "webhooks@faults", "webhooks"
        )
        stack.callback(stop, [sender])
        wait_ready(sender, folder / "webhooks.log")
        yield running, receiving


def told(receiving, path: str, count: int) -> tuple[dict[str, set[str]], int]:
    """What `path` was told, once `count` messages arrived and a sweep more passed (a
    duplicate would come then): each job's webhook-ids, and how many messages came again."""
    receiving.wait(path, count, timeout=60)
    time.sleep(SWEEP_S + 1)
    messages = receiving.received(path)
    ids: dict[str, set[str]] = defaultdict(set)
    for message in messages:
        ids[json.loads(message.body)["data"]["id"]].add(message.headers["webhook-id"])
    return ids, len(messages) - len({m.headers["webhook-id"] for m in messages})


def until_settled(count, least: int, timeout: float) -> int:
    """`count()` once it is within [least, 0], or at the timeout."""
    deadline = time.monotonic() + timeout
    while not least <= (value := count()) <= 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    return value


@pytest.mark.parametrize("dependency", ["blob_store", "redis", "postgres", "receiver"])
def test_a_dependency_cut_off_under_load_loses_nothing(dependency, stack):
    stack, receiving = stack
    before = stack.orphan_images()  # earlier tests'
    webhook = stack.gates["receiver"].through(receiving.url(f"/{dependency}"))
    accepted, statuses, refusals = load(stack.url, stack.key, stack.gates[dependency], webhook)
    outcome, _ = stack.ended(accepted, 60 + 4 * LEASE_S)
    events, again = told(receiving, f"/{dependency}", len(accepted))
    print(f"{dependency} away {OUTAGE_S:g} s: answers {dict(statuses)}, jobs {dict(outcome)}")
    assert accepted and statuses[500] == 0, (statuses, refusals[:3])
    assert set(statuses) <= {202, 503}, statuses
    assert all(r["status"] == 503 and int(r["retry_after"]) > 0 for r in refusals), refusals[:3]
    assert outcome == Counter({"succeeded": len(accepted)}), outcome
    assert set(accepted) <= set(events), "a job's end was not told"
    assert all(len(ids) == 1 for ids in events.values()), "a job's end was told as two events"
    # A message the receiver took as its cut reset the connection looks failed to the sender,
    # which sends it again, with the same webhook-id (receivers deduplicate on it): at most
    # one per delivery in flight at the cut, and none when the receiver stays up.
    assert again <= (CLIENTS if dependency == "receiver" else 0), f"{again} messages came twice"
    # A PUT cut off after the store took its bytes is refused yet leaves its image: the sweeper
    # deletes it once the store is back (a stray blob). A commit cut off after Postgres made it
    # is refused and its image deleted, so that job fails `image_missing`: at most one per
    # client in flight at the cut (fewer images than jobs).
    least = -CLIENTS if dependency == "postgres" else 0
    left = until_settled(lambda: stack.orphan_images() - before, least, 3 * SWEEP_S)
    assert least <= left <= 0, f"{left} images without their job (< 0: the reverse)"
