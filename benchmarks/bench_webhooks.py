"""Webhook delivery against bare HTTP POSTs to the same receiver, in one run on one machine.

Prints one JSON object. Run from the repository root (Postgres and Redis running):
`python benchmarks/bench_webhooks.py [--jobs 400]`.

- `raw_posts_per_s`: signed POSTs of a job-sized body straight to a loopback receiver from as
  many threads as the webhook worker has (`worker.webhooks.post`, no database, no queue).
- `deliveries_per_s`: jobs with a webhook are canceled through the API (no inference worker:
  the events cost no model time), each recording a delivery with the status change, while the
  webhook worker's consumer is paused; then it resumes and drains the backlog: claim, sign,
  POST and log each one. Rate over the middle 80% of arrivals at the receiver.
- `p50_ms`, `p95_ms`: one job at a time, from the cancel's HTTP answer to the message's
  arrival at the receiver.
- `duplicates`: webhook-ids that arrived more than once (0 expected with no failures).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from captioner.service import WEBHOOK_CONCURRENCY  # noqa: E402
from captioner_client import Client  # noqa: E402
from core.netguard import Guard  # noqa: E402
from core.signatures import new_secret, signed_headers  # noqa: E402
from harness.receiver import receiver  # noqa: E402
from harness.stack import running_stack  # noqa: E402
from worker.webhooks import post  # noqa: E402

WORKER = "webhooks@bench"


def png() -> bytes:
    """A small image to submit (its job is canceled, so any valid image will do)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def raw_posts_per_s(url: str, body: bytes, n: int) -> float:
    """Signed POSTs per second from WEBHOOK_CONCURRENCY threads."""
    secret = new_secret()

    def send(i: int) -> None:
        record, _ = post(
            url,
            signed_headers([secret], f"msg_raw{i}", body),
            body,
            15,
            Guard.from_allow("127.0.0.1/32"),
        )
        if record.error:
            raise RuntimeError(record.error)

    started = time.perf_counter()
    with ThreadPoolExecutor(WEBHOOK_CONCURRENCY) as pool:
        list(pool.map(send, range(n)))
    return n / (time.perf_counter() - started)


def cancel_all(client: Client, ids: list[str], threads: int) -> dict[str, float]:
    """Cancel the jobs; when each cancel answered (time.monotonic)."""

    def cancel(job_id: str) -> tuple[str, float]:
        client.request("POST", f"/v1/jobs/{job_id}/cancel")
        return job_id, time.monotonic()

    with ThreadPoolExecutor(threads) as pool:
        return dict(pool.map(cancel, ids))


def arrivals(sink, path: str, n: int) -> dict[str, float]:
    """Job id → first arrival time, once `n` messages came; also checks for repeats."""
    messages = sink.wait(path, n, timeout=600)
    first: dict[str, float] = {}
    for message in messages:
        first.setdefault(json.loads(message.body)["data"]["id"], message.at)
    return first


def pause(celery, consuming: bool) -> None:
    """Stop or restart the webhook worker's consumer (Celery remote control)."""
    control = celery.control.add_consumer if consuming else celery.control.cancel_consumer
    control("webhooks", destination=[WORKER], reply=True)


def run(args) -> dict:
    """Postgres, Redis, moto S3, a webhook worker, the API and a receiver: the figures."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        receiver() as sink,
        running_stack(Path(tmp), [("webhooks", WORKER)]) as stack,
    ):
        return measure(stack.client, sink, stack.celery, args)


def measure(client: Client, sink, celery, args) -> dict:
    image, url = png(), sink.script("/hook")

    def submit(_=None) -> str:
        return client.submit(image, webhook=url).id

    one = submit()
    body = json.dumps({"type": "job.completed", "data": client.job(one).raw}).encode()
    raw = raw_posts_per_s(sink.url("/raw"), body, args.jobs)

    low = []
    for _ in range(args.latency_jobs):
        job_id = submit()
        answered = cancel_all(client, [job_id], 1)[job_id]
        count = len(sink.received("/hook")) + 1
        low.append((arrivals(sink, "/hook", count)[job_id] - answered) * 1000)

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(submit, range(args.jobs)))
    done = len(sink.received("/hook"))
    pause(celery, consuming=False)
    cancel_all(client, ids, 8)
    pause(celery, consuming=True)
    arrived = arrivals(sink, "/hook", done + len(ids))
    times = sorted(arrived[job_id] for job_id in ids)
    cut = len(times) // 10
    webhook_ids = [m.headers["webhook-id"] for m in sink.received("/hook")]
    return {
        "deliveries_per_s": (len(times) - 1 - 2 * cut) / (times[-1 - cut] - times[cut]),
        "raw_posts_per_s": raw,
        "p50_ms": statistics.median(low),
        "p95_ms": statistics.quantiles(low, n=20)[-1],
        "duplicates": len(webhook_ids) - len(set(webhook_ids)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=400, help="deliveries in the backlog")
    parser.add_argument("--latency-jobs", type=int, default=40, help="deliveries one at a time")
    args = parser.parse_args()
    figures = run(args)
    result = {key: round(value, 2) for key, value in figures.items()}
    result["ratio"] = round(figures["deliveries_per_s"] / figures["raw_posts_per_s"], 3)
    result |= {
        "jobs": args.jobs,
        "sender_threads": WEBHOOK_CONCURRENCY,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": datetime.date.today().isoformat(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
