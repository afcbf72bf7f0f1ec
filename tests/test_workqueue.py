"""The agent's level-triggered work queue: merging, per-key serialization, bounded concurrency, retry."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from controller import workqueue


def wait_for(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


@pytest.fixture
def queues() -> Iterator[list[workqueue.WorkQueue]]:
    made: list[workqueue.WorkQueue] = []
    yield made
    for q in made:
        q.shutdown(5)


def test_duplicate_adds_merge(queues: list[workqueue.WorkQueue]) -> None:
    gate = threading.Event()
    runs: list[str] = []

    def handler(key: str) -> bool:
        gate.wait(5)
        runs.append(key)
        return False

    q = workqueue.WorkQueue(handler, workers=1)
    queues.append(q)
    q.add("blocker")
    wait_for(lambda: q.in_flight() != [])
    for _ in range(10):
        q.add("k")
    assert q.depth() == 1
    gate.set()
    wait_for(q.idle)
    assert runs == ["blocker", "k"]


def test_one_key_never_runs_twice_at_once(queues: list[workqueue.WorkQueue]) -> None:
    active = 0
    peak = 0
    lock = threading.Lock()
    count = 0

    def handler(key: str) -> bool:
        nonlocal active, peak, count
        with lock:
            active += 1
            peak = max(peak, active)
            count += 1
        time.sleep(0.05)
        with lock:
            active -= 1
        return False

    q = workqueue.WorkQueue(handler, workers=4)
    queues.append(q)
    q.add("k")
    wait_for(lambda: q.in_flight() != [])
    q.add("k")  # while running: exactly one more run afterwards
    q.add("k")
    wait_for(q.idle)
    assert peak == 1
    assert count == 2


def test_concurrency_is_bounded(queues: list[workqueue.WorkQueue]) -> None:
    active = 0
    peak = 0
    lock = threading.Lock()

    def handler(key: int) -> bool:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.05)
        with lock:
            active -= 1
        return False

    q = workqueue.WorkQueue(handler, workers=3)
    queues.append(q)
    for i in range(12):
        q.add(i)
    wait_for(q.idle)
    assert peak == 3
    assert q.processed == 12


def test_retry_backs_off_then_resets(queues: list[workqueue.WorkQueue]) -> None:
    times: list[float] = []

    def handler(key: str) -> bool:
        times.append(time.monotonic())
        return len(times) < 4  # fail three times, then succeed

    q = workqueue.WorkQueue(handler, workers=1, backoff_base=0.05, backoff_max=0.15)
    queues.append(q)
    q.add("k")
    wait_for(lambda: len(times) == 4 and q.idle())
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 0.045 and gaps[1] >= 0.095 and gaps[2] >= 0.145
    assert gaps[2] < 0.5  # capped
    assert q.failures("k") == 0


def test_exceptions_are_retried(queues: list[workqueue.WorkQueue]) -> None:
    calls = 0

    def handler(key: str) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return False

    q = workqueue.WorkQueue(handler, workers=1, backoff_base=0.01)
    queues.append(q)
    q.add("k")
    wait_for(lambda: calls == 2 and q.idle())


def test_delayed_add_waits_and_earlier_add_wins(queues: list[workqueue.WorkQueue]) -> None:
    runs: list[float] = []
    q = workqueue.WorkQueue(lambda key: runs.append(time.monotonic()) is not None, workers=1)
    queues.append(q)
    start = time.monotonic()
    q.add("k", delay=0.2)
    assert q.depth() == 1
    time.sleep(0.05)
    assert runs == []
    q.add("k", delay=0.0)
    wait_for(lambda: bool(runs))
    assert runs[0] - start < 0.15


def test_shutdown_waits_for_in_flight_within_bound(queues: list[workqueue.WorkQueue]) -> None:
    done = threading.Event()

    def handler(key: str) -> bool:
        time.sleep(0.1)
        done.set()
        return False

    q = workqueue.WorkQueue(handler, workers=1)
    q.add("k")
    wait_for(lambda: q.in_flight() != [])
    assert q.shutdown(2.0)
    assert done.is_set()
    q.add("late")  # ignored after shutdown
    assert q.depth() == 0


def test_dump_lists_waiting_running_and_retrying(queues: list[workqueue.WorkQueue]) -> None:
    gate = threading.Event()
    q = workqueue.WorkQueue(lambda key: not gate.wait(5), workers=1)
    queues.append(q)
    q.add("a")
    wait_for(lambda: q.in_flight() != [])
    q.add("b", delay=30)
    dump = q.dump()
    assert [k for k, _ in dump["running"]] == ["'a'"]
    assert [k for k, _ in dump["waiting"]] == ["'b'"]
    gate.set()
