"""A level-triggered work queue: keys, not events, with per-key serialization and retry.

Watch events, resync ticks and host events only say "look at this key again"; the worker then reads the
latest desired state and the real host (DESIGN.md "The agent inside"). So the queue stores keys, merges
duplicates, never runs one key on two workers at once (VDSM's resource manager), bounds concurrency
(its task manager), and re-queues a key with exponential backoff when the handler asks to retry.

Handlers are blocking (they mount, call iscsiadm, talk to libvirt): they run in the queue's own worker
threads, never on an asyncio loop. ``add`` is cheap and thread-safe so asyncio callbacks may call it.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

logger = logging.getLogger(__name__)

Handler = Callable[[Any], bool]
"""Runs one key; returns True when the key should be retried with backoff."""

STUCK_SECONDS = 300.0
"""A key due this long ago and still not started means every worker is stuck in a handler: a handler
runs a few host commands of at most ``command_timeout`` (60 s) each and bounded libvirt calls, so five
minutes is well past any healthy run. :meth:`WorkQueue.healthy` then fails liveness."""


@dataclasses.dataclass
class _State:
    queued_at: float | None = None
    running: bool = False
    dirty: bool = False
    failures: int = 0
    started: float = 0.0


class WorkQueue:
    """Run ``handler(key)`` for every added key on at most ``workers`` threads, one run per key at a time."""

    def __init__(
        self,
        handler: Handler,
        *,
        workers: int = 4,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        name: str = "work",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._handler = handler
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._clock = clock
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Hashable]] = []
        self._seq = itertools.count()
        self._states: dict[Hashable, _State] = {}
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._worker, name=f"{name}-{i}", daemon=True) for i in range(workers)
        ]
        self.processed = 0
        for thread in self._threads:
            thread.start()

    def add(self, key: Hashable, *, delay: float = 0.0) -> None:
        """Ask for ``key`` to be processed (again) no earlier than ``delay`` seconds from now.

        A key already waiting keeps the earlier of the two times; a key being processed is run once
        more after the current run (its state may have changed during it).
        """
        with self._cond:
            if self._stopping:
                return
            state = self._states.setdefault(key, _State())
            if state.running and delay <= 0:
                state.dirty = True
                return
            when = self._clock() + max(delay, 0.0)
            if state.queued_at is not None and state.queued_at <= when:
                return
            state.queued_at = when
            heapq.heappush(self._heap, (when, next(self._seq), key))
            self._cond.notify()

    def depth(self) -> int:
        """Keys waiting (not running)."""
        with self._cond:
            return sum(1 for s in self._states.values() if s.queued_at is not None)

    def in_flight(self) -> list[tuple[Hashable, float]]:
        """Keys running now and for how many seconds."""
        now = self._clock()
        with self._cond:
            return [(k, now - s.started) for k, s in self._states.items() if s.running]

    def failures(self, key: Hashable) -> int:
        with self._cond:
            state = self._states.get(key)
            return state.failures if state else 0

    def forget(self, key: Hashable) -> None:
        """Drop the retry count of a key that is gone for good."""
        with self._cond:
            state = self._states.get(key)
            if state is not None and not state.running and state.queued_at is None:
                del self._states[key]

    def idle(self) -> bool:
        with self._cond:
            return all(s.queued_at is None and not s.running for s in self._states.values())

    def healthy(self, max_lag: float = STUCK_SECONDS) -> tuple[bool, str]:
        """The queue's heartbeat for /healthz: every worker thread alive, and no key waiting past its time
        for more than ``max_lag`` seconds (only when every worker is stuck). (ok, why not)."""
        with self._cond:
            if self._stopping:
                return True, ""
            dead = [t.name for t in self._threads if not t.is_alive()]
            if dead:
                return False, f"work queue threads died: {', '.join(dead)}"
            now = self._clock()
            late = [
                now - s.queued_at for s in self._states.values() if s.queued_at is not None and not s.running
            ]
        worst = max(late, default=0.0)
        if worst > max_lag:
            return False, f"a key has waited {worst:.0f} s for a worker: every worker is stuck"
        return True, ""

    def dump(self) -> dict[str, Any]:
        """The queue for a SIGUSR1 state dump."""
        now = self._clock()
        with self._cond:
            return {
                "waiting": sorted(
                    (repr(k), round(s.queued_at - now, 1)) for k, s in self._states.items()
                    if s.queued_at is not None
                ),
                "running": sorted((repr(k), round(now - s.started, 1))
                                  for k, s in self._states.items() if s.running),
                "retrying": sorted((repr(k), s.failures) for k, s in self._states.items() if s.failures),
            }

    def shutdown(self, timeout: float) -> bool:
        """Stop taking keys; wait up to ``timeout`` for running handlers. True when all finished."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = self._clock() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - self._clock()))
        return not any(t.is_alive() for t in self._threads)

    def _next(self) -> Hashable | None:
        with self._cond:
            while not self._stopping:
                now = self._clock()
                while self._heap:
                    when, _, key = self._heap[0]
                    state = self._states.get(key)
                    if state is None or state.queued_at != when:
                        heapq.heappop(self._heap)  # superseded by an earlier add
                        continue
                    if state.running:
                        # Another worker has it; run it again after that run.
                        heapq.heappop(self._heap)
                        state.queued_at = None
                        state.dirty = True
                        continue
                    if when > now:
                        break
                    heapq.heappop(self._heap)
                    state.queued_at = None
                    state.running = True
                    state.started = now
                    return key
                timeout = (self._heap[0][0] - now) if self._heap else None
                self._cond.wait(timeout)
            return None

    def _worker(self) -> None:
        while True:
            key = self._next()
            if key is None:
                return
            retry = True
            try:
                retry = self._handler(key)
            except Exception:
                logger.exception("work item %r failed; retrying with backoff", key)
            self._finish(key, retry)

    def _finish(self, key: Hashable, retry: bool) -> None:
        with self._cond:
            self.processed += 1
            state = self._states[key]
            state.running = False
            if retry:
                state.failures += 1
                delay = min(self._backoff_max, self._backoff_base * 2 ** (state.failures - 1))
            else:
                state.failures = 0
                delay = 0.0
            if state.dirty or retry:
                state.dirty = False
                when = self._clock() + (0.0 if not retry else delay)
                if state.queued_at is None or state.queued_at > when:
                    state.queued_at = when
                    heapq.heappush(self._heap, (when, next(self._seq), key))
            self._cond.notify_all()
