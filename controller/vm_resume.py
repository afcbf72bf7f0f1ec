"""Resume VMs paused on an I/O error when their storage recovers: the runtime side.

:class:`controller.monitoring.MonitorRuntime` calls :meth:`Resumer.trigger` from its scheduler thread
when a monitor enters Healthy; that only enqueues. The :class:`Resumer`'s own thread (VDSM runs each
domain-state subscriber in a thread of its own, so emitting never blocks) then, per recovery:

1. asks libvirt afresh which domains are paused (:meth:`VmSource.list_paused`); when libvirt cannot
   answer (away, or not connected yet right after start-up) the batch is tried again later
   (:data:`RETRY_SECONDS`, :data:`RETRIES`),
2. takes the monitors as they are *now* (``monitors()``, from the runtime: target, state, opt-out),
3. lets :func:`reconcilers.vm_resume.plan` decide,
4. resumes each chosen VM (bounded libvirt calls; the state is checked again in the same call), notes
   every try in the :class:`reconcilers.vm_resume.AttemptLog` and counts it in
   ``hoststorage_vm_resumes_total{result}`` (``resumed``, ``failed``, ``skipped``: no longer paused on an
   I/O error when its turn came),
5. hands a :class:`ResumeBatch` to ``on_batch`` when the batch touched or held any VM (the agent posts
   it as an Event on the DomainMonitor; ``hoststorage monitor`` prints it). ``on_batch`` runs in the
   resumer's thread and may block briefly (an API call), never for long.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol

import prometheus_client

from hostlib import errors
from hostlib.libvirt_domains import NotPausedOnIOError, VmRecord
from reconcilers import vm_resume as policy

log = logging.getLogger(__name__)

RESULTS = ("resumed", "failed", "skipped")
RETRY_SECONDS = 5.0
RETRIES = 24
"""A batch whose paused VMs cannot be listed (libvirtd away, or not connected yet at start-up) is tried
again every RETRY_SECONDS, up to RETRIES times (two minutes), then given up with an error in the log."""


class VmSource(Protocol):
    """What the resumer needs of :class:`hostlib.libvirt_domains.DomainTracker`."""

    def start(self) -> None: ...

    def stop(self, timeout: float = 5.0) -> None: ...

    def records(self) -> list[VmRecord]: ...

    def list_paused(self) -> list[VmRecord]: ...

    def resume(self, uuid: str) -> None: ...

    def add_change_listener(self, listener: Callable[[], None]) -> None: ...


@dataclasses.dataclass(frozen=True)
class ResumeBatch:
    """The outcome of one recovery's resume batch (for an Event and a log line)."""

    monitor: str
    recovery: int
    started: float
    """Wall-clock time the batch started."""
    seconds: float
    resumed: tuple[str, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()
    """(VM, error message)."""
    skipped: tuple[tuple[str, str], ...] = ()
    """(VM, why): no longer paused on an I/O error when its turn came."""
    held: tuple[tuple[str, str, str], ...] = ()
    """(VM, reason, message): paused on the target but left paused (see :class:`policy.Hold`)."""

    @property
    def empty(self) -> bool:
        return not (self.resumed or self.failed or self.skipped or self.held)

    def event(self) -> tuple[str, str, str]:
        """(type, reason, message) of the Event about this batch, the message bounded."""
        parts = []
        if self.resumed:
            parts.append(f"resumed {len(self.resumed)} VM(s) paused on an I/O error: "
                         f"{policy.listed(list(self.resumed))}")
        if self.failed:
            parts.append(f"failed to resume {len(self.failed)}: "
                         + policy.listed([f"{n} ({e})" for n, e in self.failed], 3))
        if self.held:
            parts.append(f"left {len(self.held)} paused: "
                         + policy.listed([f"{n} ({r}: {m})" for n, r, m in self.held], 3))
        if self.skipped:
            parts.append(f"{len(self.skipped)} no longer paused on an I/O error: "
                         + policy.listed([n for n, _ in self.skipped]))
        message = f"storage Healthy again; {'; '.join(parts)}"
        if self.failed:
            return "Warning", "VMResumeFailed", message
        if self.resumed:
            return "Normal", "VMsResumed", message
        if self.held:
            return "Warning", "VMsLeftPaused", message
        return "Normal", "NothingToResume", message


BatchCallback = Callable[[ResumeBatch], None]


class Metrics:
    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        self.resumes = prometheus_client.Counter(
            "hoststorage_vm_resumes", "Resumes of VMs paused on an I/O error, by result (resumed, failed, "
            "skipped: no longer paused on an I/O error when its turn came).", ["result"], registry=registry,
        )
        self.results = {r: self.resumes.labels(r) for r in RESULTS}
        self.batch_seconds = prometheus_client.Histogram(
            "hoststorage_vm_resume_batch_seconds", "Duration of one resume batch (listing, decision, "
            "resumes).", buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120), registry=registry,
        )


class Resumer:
    """One thread that runs resume batches in order. See the module docstring."""

    def __init__(
        self,
        vms: VmSource,
        monitors: Callable[[], Mapping[str, policy.MonitorView]],
        *,
        registry: prometheus_client.CollectorRegistry,
        on_batch: BatchCallback | None = None,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self.vms = vms
        self.retry_seconds = retry_seconds
        self._monitors = monitors
        self._on_batch = on_batch
        self._wall = wall
        self._clock = clock
        self.metrics = Metrics(registry)
        self.attempts = policy.AttemptLog()
        self._lock = threading.Condition()
        self._queue: list[tuple[float, int, policy.Recovery]] = []
        """(due on the monotonic clock, tries so far, recovery), in the order they were queued."""
        self._stopping = False
        self._busy = False
        self._thread: threading.Thread | None = None
        self.batches: collections.deque[ResumeBatch] = collections.deque(maxlen=100)
        """The last batches (state dump, tests, the bench)."""

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="vm-resume", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def trigger(self, recovery: policy.Recovery) -> None:
        """Enqueue a batch for ``recovery`` (any thread; returns at once)."""
        self._enqueue(recovery, 0, 0.0)

    def _enqueue(self, recovery: policy.Recovery, tries: int, delay: float) -> None:
        with self._lock:
            self._queue.append((self._clock() + delay, tries, recovery))
            self._lock.notify()

    def idle(self) -> bool:
        with self._lock:
            return not self._queue and not self._busy

    def _next(self) -> tuple[int, policy.Recovery] | None:
        """The first due item (None when stopping); waits for one. Called with the lock held."""
        while not self._stopping:
            now = self._clock()
            for i, (due, tries, recovery) in enumerate(self._queue):
                if due <= now:
                    del self._queue[i]
                    return tries, recovery
            wait = min((due for due, _, _ in self._queue), default=now + 60.0) - now
            self._lock.wait(max(0.01, wait))
        return None

    def _run(self) -> None:
        while True:
            with self._lock:
                item = self._next()
                if item is None:
                    return
                tries, recovery = item
                self._busy = True
            try:
                self.run_batch(recovery, tries=tries)
            except Exception:
                log.exception("DomainMonitor/%s: resume batch failed", recovery.monitor)
            finally:
                with self._lock:
                    self._busy = False

    def run_batch(self, recovery: policy.Recovery, *, tries: int = 0) -> ResumeBatch | None:
        """One batch, in the calling thread (the resumer's own, or a test's); None when it was put back
        for later because libvirt could not list the paused VMs."""
        started, t0 = self._wall(), self._clock()
        try:
            paused = self.vms.list_paused()
        except errors.HostStorageError as exc:
            if tries < RETRIES:
                if tries == 0:
                    log.warning("DomainMonitor/%s: Healthy again, but the paused VMs cannot be listed "
                                "(%s); trying again every %g s", recovery.monitor, exc, self.retry_seconds)
                self._enqueue(recovery, tries + 1, self.retry_seconds)
                return None
            log.error("DomainMonitor/%s: the paused VMs could not be listed for %d tries; giving up on this "
                      "recovery: %s", recovery.monitor, tries + 1, exc)
            paused = []
        plan = policy.plan(paused, self._monitors(), recovery, self.attempts)
        if plan.skipped:
            log.debug("DomainMonitor/%s: no resume batch: %s", recovery.monitor, plan.skipped)
        resumed: list[str] = []
        failed: list[tuple[str, str]] = []
        skipped: list[tuple[str, str]] = []
        for vm in plan.resume:
            try:
                self.vms.resume(vm.uuid)
            except NotPausedOnIOError as exc:
                skipped.append((vm.name, exc.message))
                self.attempts.note(vm, recovery, True)
                self.metrics.results["skipped"].inc()
                continue
            except errors.HostStorageError as exc:
                log.warning("DomainMonitor/%s: cannot resume VM %s: %s", recovery.monitor, vm.name, exc)
                failed.append((vm.name, exc.message))
                self.attempts.note(vm, recovery, False)
                self.metrics.results["failed"].inc()
                continue
            log.info("DomainMonitor/%s: resumed VM %s (paused on an I/O error)", recovery.monitor, vm.name)
            resumed.append(vm.name)
            self.attempts.note(vm, recovery, True)
            self.metrics.results["resumed"].inc()
        for h in plan.held:
            log.info("DomainMonitor/%s: VM %s stays paused: %s: %s", recovery.monitor, h.vm.name, h.reason,
                     h.message)
        with_records = self.vms.records()
        self.attempts.prune(r.uuid for r in with_records)
        seconds = self._clock() - t0
        self.metrics.batch_seconds.observe(seconds)
        batch = ResumeBatch(
            recovery.monitor, recovery.seq, started, seconds, tuple(resumed), tuple(failed), tuple(skipped),
            tuple((h.vm.name, str(h.reason), h.message) for h in plan.held),
        )
        self.batches.append(batch)
        if not batch.empty and self._on_batch is not None:
            try:
                self._on_batch(batch)
            except Exception:
                log.exception("DomainMonitor/%s: resume batch callback failed", recovery.monitor)
        return batch
