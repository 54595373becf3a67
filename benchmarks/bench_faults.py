"""Faults at their goals' sizes, on the production stack: the blob store away for a minute under
32 clients, submissions while Redis is away, and a worker killed holding messages.

Prints one JSON object. Run from the repository root (Postgres and Redis running):
`python benchmarks/bench_faults.py [--clients 32] [--outage-s 60] [--phase-s 20]`.

The stack is `harness.stack.gated_stack`: the API as the Dockerfile runs it (gunicorn with its
config's workers), an inference worker serving a stand-in model (`--standin-ms` a batch), and
beat, with production's lease and sweep interval (`--lease-s`, `--sweep-s`); Postgres, Redis
and the S3 endpoint each behind a gate, every image an object. Clients are closed-loop: each
posts one image, waits for the answer, and posts the next; after a 503 it waits `Retry-After`.

- `blob_store`: clients run `--warm-s`, the S3 endpoint is cut off for `--outage-s`, and they
  go on `--warm-s` after its return. Answers by status, refusals without `Retry-After`, the
  accepted jobs by final status, and `recovered_s`, from the store's return to the last
  accepted job's `finished_at`, also in sweep intervals (`sweeps`), and `orphan_images`:
  images without their job two sweeps later. Goals: no 500, every refusal a 503 with
  `Retry-After`, no accepted job failed, all succeeded within 2 sweeps, no orphan.
- `redis`: clients run `--phase-s` with Redis up, then `--phase-s` with it cut off: each
  phase's submission p50 and p99 (ms) and `p99_ratio` (away / up; goal: at most 2), and the
  accepted jobs by final status once Redis is back.
- `worker_kill`: a second inference worker whose stand-in batch takes `--victim-ms` joins and
  the first is stopped (SIGSTOP); `--kill-jobs` single images are posted at once, so the
  second worker receives their messages (as many as its prefetch takes) and claims two
  batches; a second later it is SIGKILLed and the first resumes. Every job not ended at the
  kill is followed until it ends: `reclaimed_s` is the latest claim after the kill
  (`started_at`), and `leases` that over the lease (goal: at most 2); `held` counts the jobs
  the killed worker had claimed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.bench_control_plane import machine, tiny_bundle  # noqa: E402
from captioner.processes import start_worker, stop, wait_ready  # noqa: E402
from harness.stack import GatedStack, gated_stack  # noqa: E402
from store.tables import TERMINAL, Job  # noqa: E402

VICTIM = "inference@victim"


def png(n: int) -> bytes:
    """A small PNG, different for each `n`."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (48 + n % 32, 40), (n % 256, 90, 160)).save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class Answers:
    """What closed-loop clients got: (sent at, seconds, status) each, ids accepted, refusals
    without Retry-After."""

    calls: list[tuple[float, float, int]] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    bare_refusals: int = 0

    def statuses(self) -> dict[str, int]:
        return {str(s): n for s, n in sorted(Counter(s for _, _, s in self.calls).items())}

    def latencies_ms(self, start: float, end: float) -> list[float]:
        return sorted(took * 1000 for sent, took, _ in self.calls if start <= sent < end)


def clients(stack: GatedStack, n: int, seconds: float, answers: Answers) -> threading.Thread:
    """Start `n` closed-loop clients for `seconds` (in a thread that joins them)."""
    end = time.monotonic() + seconds

    def one(i: int) -> None:
        headers = {"Authorization": f"Bearer {stack.key}"}
        with httpx.Client(base_url=stack.url, headers=headers, timeout=60) as http:
            k = 0
            while time.monotonic() < end:
                k += 1
                sent = time.monotonic()
                files = {"image": ("a.png", png(i * 1000 + k), "image/png")}
                answer = http.post("/v1/jobs", files=files)
                answers.calls.append((sent, time.monotonic() - sent, answer.status_code))
                if answer.status_code == 202:
                    answers.accepted.append(answer.json()["id"])
                    continue
                wait = answer.headers.get("Retry-After")
                answers.bare_refusals += wait is None
                time.sleep(min(float(wait or 1), max(end - time.monotonic(), 0)))

    def run() -> None:
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(one, range(n)))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def blob_store(stack: GatedStack, args: argparse.Namespace) -> dict:
    """The S3 endpoint cut off for `--outage-s` under the clients."""
    answers = Answers()
    load = clients(stack, args.clients, 2 * args.warm_s + args.outage_s, answers)
    time.sleep(args.warm_s)
    stack.gates["blob_store"].close()
    time.sleep(args.outage_s)
    stack.gates["blob_store"].open()
    back = time.time()
    load.join()
    statuses, last = stack.ended(answers.accepted, 10 * args.sweep_s + 60)
    recovered = max(last.timestamp() - back, 0.0) if last else None
    left = orphans(stack, time.monotonic() + 2 * args.sweep_s + 5)
    return {
        "outage_s": args.outage_s,
        "answers": answers.statuses(),
        "refusals_without_retry_after": answers.bare_refusals,
        "accepted": len(answers.accepted),
        "jobs": dict(statuses),
        "recovered_s": round(recovered, 1) if recovered is not None else None,
        "sweeps": round(recovered / args.sweep_s, 2) if recovered is not None else None,
        "orphan_images": left,
    }


def orphans(stack: GatedStack, until: float) -> int:
    """Images without their job, once none is left (the sweeper deleted the strays) or at
    `until` (time.monotonic)."""
    while (left := stack.orphan_images()) > 0 and time.monotonic() < until:
        time.sleep(1)
    return left


def redis(stack: GatedStack, args: argparse.Namespace) -> dict:
    """Submissions' latency with Redis up, then away."""
    answers = Answers()
    load = clients(stack, args.clients, 2 * args.phase_s, answers)
    start = time.monotonic()
    time.sleep(args.phase_s)
    stack.gates["redis"].close()
    cut = time.monotonic()
    load.join()
    stack.gates["redis"].open()
    statuses, _ = stack.ended(answers.accepted, 10 * args.sweep_s + 60)
    up, away = answers.latencies_ms(start, cut), answers.latencies_ms(cut, cut + args.phase_s)
    return {
        "phase_s": args.phase_s,
        "answers": answers.statuses(),
        "up": summary(up),
        "away": summary(away),
        "p99_ratio": round(quantile(away, 0.99) / quantile(up, 0.99), 2) if up and away else None,
        "jobs": dict(statuses),
    }


def summary(latencies: list[float]) -> dict:
    """Count, p50 and p99 of latencies in ms."""
    return {
        "submits": len(latencies),
        "p50_ms": round(quantile(latencies, 0.5), 1) if latencies else None,
        "p99_ms": round(quantile(latencies, 0.99), 1) if latencies else None,
    }


def quantile(values: list[float], q: float) -> float:
    """The q-quantile of sorted `values` (inclusive method; the value itself for one)."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def worker_kill(stack: GatedStack, args: argparse.Namespace, folder: Path) -> dict:
    """A slow second worker SIGKILLed a second after a burst of submissions, the first one
    stopped (SIGSTOP) meanwhile so that the burst is the killed worker's, and resumed at the
    kill, as a surviving replica would be."""
    settings = stack.settings.with_overrides(bench_standin_model_ms=args.victim_ms)
    victim = start_worker(settings, folder / "victim.log", VICTIM)
    try:
        wait_ready(victim, folder / "victim.log")
        stack.worker.send_signal(signal.SIGSTOP)
        with ThreadPoolExecutor(16) as pool:
            ids = list(pool.map(lambda i: submit(stack, i), range(args.kill_jobs)))
        time.sleep(1)
        victim.send_signal(signal.SIGKILL)
        killed = datetime.datetime.now(datetime.UTC)
        with stack.db.session() as session:
            rows = session.execute(select(Job.id, Job.status, Job.worker).where(in_(ids))).all()
    finally:
        stack.worker.send_signal(signal.SIGCONT)
        stop([victim])
    pending = [str(job_id) for job_id, status, _ in rows if status not in TERMINAL]
    held = sum(status == "running" and worker == VICTIM for _, status, worker in rows)
    statuses, _ = stack.ended(pending, 4 * args.lease_s + 60)
    with stack.db.session() as session:
        claims = session.scalars(select(Job.started_at).where(in_(pending))).all()
    latest = max(((at - killed).total_seconds() for at in claims if at), default=0.0)
    return {
        "jobs": args.kill_jobs,
        "pending_at_kill": len(pending),
        "held": held,
        "ended": dict(statuses),
        "reclaimed_s": round(latest, 1),
        "leases": round(latest / args.lease_s, 2),
    }


def in_(ids: list[str]):
    return Job.id.in_([uuid.UUID(i) for i in ids])


def submit(stack: GatedStack, i: int) -> str:
    """Post one image; its job's id."""
    answer = httpx.post(
        f"{stack.url}/v1/jobs",
        files={"image": ("a.png", png(i), "image/png")},
        headers={"Authorization": f"Bearer {stack.key}"},
        timeout=60,
    )
    answer.raise_for_status()
    return answer.json()["id"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--clients", type=int, default=32, help="closed-loop clients")
    add("--outage-s", type=float, default=60, help="how long the blob store is away")
    add("--warm-s", type=float, default=10, help="load before and after the blob store's outage")
    add("--phase-s", type=float, default=20, help="load with Redis up, then away")
    add("--lease-s", type=int, default=60, help="JOB_LEASE_SECONDS (production's)")
    add("--sweep-s", type=float, default=30, help="SWEEP_INTERVAL_S (production's)")
    add("--standin-ms", type=float, default=20, help="the stand-in model's batch time")
    add("--victim-ms", type=float, default=3000, help="the killed worker's batch time")
    add("--kill-jobs", type=int, default=160, help="images posted before the kill")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as folder:
        folder = Path(folder)
        settings = {
            "job_lease_seconds": args.lease_s,
            "sweep_interval_s": args.sweep_s,
            "bench_standin_model_ms": args.standin_ms,
        }
        bundle = tiny_bundle(folder / "bundle")
        with gated_stack(folder, bundle, api_workers=None, **settings) as stack:
            result = {
                "blob_store": blob_store(stack, args),
                "redis": redis(stack, args),
                "worker_kill": worker_kill(stack, args, folder),
            }
    result |= {"clients": args.clients, "lease_s": args.lease_s, "sweep_s": args.sweep_s}
    print(json.dumps(result | machine(load_before)))


if __name__ == "__main__":
    main()
