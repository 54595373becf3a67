"""The micro-batcher: full batches under load, a lone job at once, errors reach every job."""

from __future__ import annotations

import threading
import time

import pytest

from worker.batcher import MicroBatcher, Slots


class Recorder:
    """A batch function that remembers each batch and can be held closed."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[tuple[object, list[int]]] = []
        self.delay = delay

    def __call__(self, key, items):
        time.sleep(self.delay)
        self.batches.append((key, list(items)))
        return [item * 10 for item in items]


def submit_from_threads(batcher: MicroBatcher, keys_items, prepare_s: float = 0.0):
    """Each item from its own thread, announced with `expecting()` like a worker's job thread."""
    results = {}

    def job(key, item):
        with batcher.expecting():
            time.sleep(prepare_s)
            future = batcher.submit(key, item)
        results[item] = future.result(timeout=10)

    threads = [threading.Thread(target=job, args=pair) for pair in keys_items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_every_item_gets_its_own_output():
    run = Recorder()
    batcher = MicroBatcher(run, max_size=4, max_wait_s=0.5)
    results = submit_from_threads(batcher, [("a", i) for i in range(10)])
    batcher.stop()
    assert results == {i: i * 10 for i in range(10)}
    assert all(len(items) <= 4 for _, items in run.batches)
    assert sorted(i for _, items in run.batches for i in items) == list(range(10))


def test_items_gather_into_full_batches_while_the_model_is_busy():
    run = Recorder(delay=0.2)
    batcher = MicroBatcher(run, max_size=8, max_wait_s=1.0)
    submit_from_threads(batcher, [("a", i) for i in range(17)], prepare_s=0.01)
    batcher.stop()
    sizes = [len(items) for _, items in run.batches]
    assert max(sizes) == 8 and sum(sizes) == 17


def test_a_lone_item_runs_without_waiting_for_max_wait():
    run = Recorder()
    batcher = MicroBatcher(run, max_size=32, max_wait_s=5.0)
    started = time.monotonic()
    assert batcher.submit("a", 1).result(timeout=10) == 10
    assert time.monotonic() - started < 1.0
    batcher.stop()


def test_a_batch_waits_for_announced_items_but_not_past_max_wait():
    run = Recorder()
    batcher = MicroBatcher(run, max_size=32, max_wait_s=0.3)
    with batcher.expecting():  # announced, never submitted
        started = time.monotonic()
        future = batcher.submit("a", 1)
        assert future.result(timeout=10) == 10
        waited = time.monotonic() - started
    batcher.stop()
    assert 0.25 <= waited < 2.0


def test_items_with_different_keys_never_share_a_batch():
    run = Recorder(delay=0.05)
    batcher = MicroBatcher(run, max_size=8, max_wait_s=0.2)
    submit_from_threads(batcher, [(("beam", i % 2), i) for i in range(12)])
    batcher.stop()
    for key, items in run.batches:
        assert {i % 2 for i in items} == {key[1]}


def test_a_failing_batch_fails_each_of_its_items_and_the_batcher_goes_on():
    calls = []

    def run(key, items):
        calls.append(list(items))
        if len(calls) == 1:
            raise MemoryError("out of GPU memory")
        return items

    batcher = MicroBatcher(run, max_size=4, max_wait_s=0.01)
    with pytest.raises(MemoryError):
        batcher.submit("a", 1).result(timeout=10)
    assert batcher.submit("a", 2).result(timeout=10) == 2
    batcher.stop()


def test_stop_runs_what_is_queued_and_refuses_more():
    run = Recorder(delay=0.1)
    batcher = MicroBatcher(run, max_size=2, max_wait_s=0.01)
    futures = [batcher.submit("a", i) for i in range(5)]
    batcher.stop()
    assert [f.result(timeout=10) for f in futures] == [0, 10, 20, 30, 40]
    with pytest.raises(RuntimeError):
        batcher.submit("a", 9)


def test_slots_let_a_worker_hold_only_what_it_will_start_soon():
    slots, order = Slots(4), []

    def take(name: str, count: int, hold_s: float) -> None:
        with slots.taking(count):
            order.append(f"{name} in")
            time.sleep(hold_s)
        order.append(f"{name} out")

    first = threading.Thread(target=take, args=("first", 3, 0.3))
    first.start()
    time.sleep(0.05)
    take("second", 3, 0)  # waits: 3 + 3 is over the capacity
    first.join()
    assert order == ["first in", "first out", "second in", "second out"]
    with slots.taking(10):  # a chunk larger than the capacity takes all of it
        assert slots._free == 0
