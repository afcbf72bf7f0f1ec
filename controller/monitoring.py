"""The long-running DomainMonitor runtime shared by ``hoststorage monitor`` and the agent.

One scheduler thread drives every monitor on this node: it fires each monitor's check on a fixed
schedule (``intervalSeconds``), hands it to a :class:`hostlib.checker.Checker` (whose helper process does
all storage I/O), reads the answers with ``selectors``, runs the pure state machine of
:mod:`reconcilers.domain_monitor`, updates the Prometheus metrics, and calls ``on_report`` when a status
write is due: at once on a transition or threshold crossing, numbers alone at most once per
``reportIntervalSeconds``. Steady state with nothing changing calls nobody.

Never blocks: the thread waits only on pipes to helper processes, never on storage. At most one check per
monitor is outstanding; a check still running ``timeoutSeconds`` after it was sent reports ``Read timeout``
once, then "blocked for N s" at every later tick; its late answer is dropped. Public methods are safe to
call from other threads (the agent's event loop, API handlers): they only take a short lock.

``on_report(name, status, transition)`` runs in the scheduler thread; it must only hand the status over
(enqueue a write, print a line), never do I/O that can block.

VMs paused on an I/O error (VDSM's ``contEIOVms``): given ``vms`` (a
:class:`hostlib.libvirt_domains.DomainTracker`), every monitor's status carries the VMs paused on an I/O
error with a disk on its target (``pausedVMs`` in the detail block, a change is reported at once) and
the gauge ``hoststorage_monitor_paused_vms``; and each entry of a monitor into Healthy whose
``resumePausedVMs`` is on hands a :class:`reconcilers.vm_resume.Recovery` to a
:class:`controller.vm_resume.Resumer`, whose own thread resumes the VMs the policy picks and calls
``on_resume(batch)`` with the :class:`controller.vm_resume.ResumeBatch`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import heapq
import logging
import math
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import prometheus_client

from controller import vm_resume
from hostlib import checker, errors, libvirt_domains, libvirt_pools
from reconcilers import domain_monitor as dmon
from reconcilers import status as status_mod
from reconcilers import storage_pool
from reconcilers import vm_resume as resume_policy

log = logging.getLogger(__name__)

ReportCallback = Callable[[str, dmon.MonitorStatus, bool], None]
"""(monitor name, its status, whether it is a transition) -> None; runs in the scheduler thread."""

# The scheduler's heartbeat when nothing is due (set/remove/stop wake it at once through the backend).
MAX_WAIT = 1.0
JITTER_SAMPLES = 100_000
START_SPREAD = 10.0
SLOT = 0.5
TICK_SLACK = 0.05
READ_DELAY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclasses.dataclass(frozen=True)
class MonitorConfig:
    """What the runtime needs of one monitor: its first request and its schedule and thresholds."""

    name: str
    request: checker.CheckRequest
    interval: float = dmon.DEFAULT_INTERVAL
    timeout: float = dmon.DEFAULT_INTERVAL
    thresholds: dmon.Thresholds = dataclasses.field(default_factory=dmon.Thresholds)
    report_interval: float = dmon.DEFAULT_REPORT_INTERVAL
    resume_paused_vms: bool = True

    @classmethod
    def from_spec(cls, spec: dmon.Spec, request: checker.CheckRequest) -> MonitorConfig:
        return cls(spec.name, request, float(spec.interval), float(spec.timeout), spec.thresholds,
                   float(spec.report_interval), spec.resume_paused_vms)


@dataclasses.dataclass
class _Monitor:
    config: MonitorConfig
    request: checker.CheckRequest
    epoch: int
    next_tick: float
    status: dmon.MonitorStatus = dataclasses.field(default_factory=dmon.MonitorStatus)
    reported: dmon.MonitorStatus | None = None
    reported_at: float | None = None
    sent_at: float | None = None
    timed_out: bool = False
    checks: int = 0
    children: Any = None
    """This monitor's metric children (labels() resolved once: it costs more than the check)."""
    recoveries: int = 0
    """Entries into Healthy (each one is a resume batch when resumePausedVMs is on)."""


class Metrics:
    """The monitor metrics (per monitor), registered in ``registry``."""

    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        self.read_delay = prometheus_client.Histogram(
            "hoststorage_monitor_read_delay_seconds", "Time of the 4 KiB direct-I/O read of each check.",
            ["monitor"], buckets=READ_DELAY_BUCKETS, registry=registry,
        )
        self.valid = prometheus_client.Gauge(
            "hoststorage_monitor_valid", "1 when the domain is Healthy or Degraded, 0 when Invalid, NaN when "
            "no check has finished yet.", ["monitor"], registry=registry,
        )
        self.last_check = prometheus_client.Gauge(
            "hoststorage_monitor_last_check_timestamp_seconds", "Wall-clock time of the last check result.",
            ["monitor"], registry=registry,
        )
        self.blocked = prometheus_client.Gauge(
            "hoststorage_monitor_blocked_seconds", "How long the running check has been blocked (0 if none).",
            ["monitor"], registry=registry,
        )
        self.threshold = prometheus_client.Gauge(
            "hoststorage_monitor_read_delay_threshold_seconds",
            "The monitor's readDelayWarningSeconds: a slower read makes it Degraded.", ["monitor"],
            registry=registry,
        )
        self.checks = prometheus_client.Counter(
            "hoststorage_monitor_checks", "Check outcomes on this node.", ["result"], registry=registry,
        )
        self.outcomes = {kind: self.checks.labels(str(kind)) for kind in dmon.OutcomeKind}
        self.paused_vms = prometheus_client.Gauge(
            "hoststorage_monitor_paused_vms",
            "VMs paused on an I/O error with a disk on the monitor's target.", ["monitor"], registry=registry,
        )

    def children(self, name: str) -> tuple[Any, Any, Any, Any, Any]:
        return (self.read_delay.labels(name), self.valid.labels(name), self.last_check.labels(name),
                self.blocked.labels(name), self.paused_vms.labels(name))

    def forget(self, name: str) -> None:
        metrics = (
            self.read_delay, self.valid, self.last_check, self.blocked, self.threshold, self.paused_vms
        )
        for metric in metrics:
            with contextlib.suppress(KeyError):
                metric.remove(name)


class MonitorRuntime:
    """Every DomainMonitor of this node on one scheduler thread. See the module docstring."""

    def __init__(
        self,
        *,
        on_report: ReportCallback | None = None,
        backend: checker.CheckBackend | None = None,
        registry: prometheus_client.CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        vms: vm_resume.VmSource | None = None,
        on_resume: vm_resume.BatchCallback | None = None,
    ) -> None:
        self._on_report = on_report
        self._clock = clock
        self._wall = wall
        self._backend: checker.CheckBackend = backend if backend is not None else checker.Checker(clock=clock)
        self.registry = registry if registry is not None else prometheus_client.CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self._lock = threading.Lock()
        self._monitors: dict[str, _Monitor] = {}
        self._commands: collections.deque[tuple[str, Any]] = collections.deque()
        self._heap: list[tuple[float, int, str, int, str]] = []  # (when, seq, name, epoch, what)
        self._seq = 0
        self._epoch = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.jitter: collections.deque[float] = collections.deque(maxlen=JITTER_SAMPLES)
        """Seconds each check was sent after its scheduled time (for the bench and the tests)."""
        self.last_loop = clock()
        """Monotonic time of the scheduler's last iteration: a liveness signal for /healthz."""
        self.vms = vms
        self.resumer: vm_resume.Resumer | None = None
        if vms is not None:
            self.resumer = vm_resume.Resumer(vms, self.monitor_views, registry=self.registry,
                                             on_batch=on_resume, wall=wall, clock=clock)
            vms.add_change_listener(self._vms_changed)

    # -- public, any thread --------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        if self.vms is not None and self.resumer is not None:
            self.vms.start()
            self.resumer.start()
        self._thread = threading.Thread(target=self._run, name="domain-monitor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the schedule and retire the helpers (never waiting on a stuck one)."""
        self._stop.set()
        self._backend.wakeup()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self.vms is not None and self.resumer is not None:
            self.resumer.stop(timeout)
            self.vms.stop(timeout)
        self._backend.close()

    def set(self, config: MonitorConfig) -> None:
        """Add a monitor or replace its configuration (its status is kept while it checks the same thing)."""
        with self._lock:
            self._commands.append(("set", config))
        self._backend.wakeup()

    def remove(self, name: str) -> None:
        with self._lock:
            self._commands.append(("remove", name))
        self._backend.wakeup()

    def status(self, name: str) -> dmon.MonitorStatus | None:
        with self._lock:
            m = self._monitors.get(name)
            return m.status if m is not None else None

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """A state dump (SIGUSR1): every monitor's status and whether a check is outstanding."""
        now = self._clock()
        with self._lock:
            return {
                name: {
                    **m.status.detail(),
                    "checkRunningSeconds": round(now - m.sent_at, 3) if m.sent_at is not None else None,
                    "checks": m.checks,
                }
                for name, m in self._monitors.items()
            }

    def monitor_views(self) -> dict[str, resume_policy.MonitorView]:
        """Every monitor's target, state and opt-out as they are now (for the resume policy)."""
        with self._lock:
            return {
                name: resume_policy.MonitorView(name, m.config.request.target, str(m.status.state),
                                                m.config.resume_paused_vms)
                for name, m in self._monitors.items()
            }

    def _vms_changed(self) -> None:
        with self._lock:
            self._commands.append(("vms", None))
        self._backend.wakeup()

    def healthy(self, max_lag: float = 5.0) -> bool:
        """The scheduler thread is alive and looping (it never waits longer than MAX_WAIT)."""
        alive = self._thread is not None and self._thread.is_alive()
        return alive and self._clock() - self.last_loop < max_lag

    def backend_stats(self) -> dict[str, int]:
        return self._backend.stats()

    # -- the scheduler thread ------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._iteration()
            except Exception:
                # A bug here must not silently end monitoring of every domain of the node.
                log.exception("domain monitor scheduler iteration failed; continuing")
                time.sleep(MAX_WAIT)

    def _iteration(self) -> None:
        self.last_loop = now = self._clock()
        self._apply_commands(now)
        while self._heap and self._heap[0][0] <= now:
            when, _, name, epoch, what = heapq.heappop(self._heap)
            m = self._monitors.get(name)
            if m is None or m.epoch != epoch:
                continue
            if what == "tick":
                self._tick(m, when, now)
            else:
                self._deadline(m, now)
            now = self._clock()
        wait = MAX_WAIT if not self._heap else min(MAX_WAIT, max(0.0, self._heap[0][0] - now))
        for key, result in self._backend.wait(wait):
            m = self._monitors.get(str(key))
            if m is not None:
                self._result(m, result)

    def _push(self, when: float, m: _Monitor, what: str) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, m.config.name, m.epoch, what))

    def _apply_commands(self, now: float) -> None:
        with self._lock:
            commands = list(self._commands)
            self._commands.clear()
        paused_dirty = False
        for verb, arg in commands:
            if verb == "set":
                self._set(arg, now)
                paused_dirty = True
            elif verb == "vms":
                paused_dirty = True
            else:
                self._remove(arg)
        if paused_dirty:
            self._update_paused()

    def _set(self, config: MonitorConfig, now: float) -> None:
        self._epoch += 1
        old = self._monitors.get(config.name)
        m = _Monitor(config, config.request, self._epoch, now)
        if old is not None:
            # The same check: the same first request, or the one the runtime already follows (the agent's
            # next reconcile hands over the probe file recorded after the first check). Only a check of
            # something else starts again from Unknown.
            if config.request in (old.config.request, old.request):
                m.request, m.status, m.reported, m.reported_at = (
                    old.request, old.status, old.reported, old.reported_at)
                m.sent_at, m.timed_out, m.checks = old.sent_at, old.timed_out, old.checks
            else:
                self._forget_check(config.name)
            if old.config == config:
                return
        with self._lock:
            self._monitors[config.name] = m
        first = math.ceil(now / SLOT) * SLOT  # an update checks at the next slot
        m.children = old.children if old is not None else self.metrics.children(config.name)
        self.metrics.threshold.labels(config.name).set(config.thresholds.read_delay_warning)
        if old is None:
            m.children[1].set(math.nan)
            # Spread new monitors over the first interval in slots: a thousand added at once (start-up)
            # must not fire in one burst every interval forever after, and the monitors of one slot go
            # to the helper in one write.
            # Slots sit on a fixed grid of the clock, so monitors added at different moments still share
            # them (whole-second intervals keep them there).
            slots = max(1, int(min(config.interval, START_SPREAD) / SLOT))
            first += SLOT * (zlib.crc32(config.name.encode()) % slots)
        m.next_tick = first
        self._push(first, m, "tick")

    def _update_paused(self) -> None:
        """Put the VMs paused on an I/O error into each monitor's status (reported when it changed)."""
        if self.vms is None:
            return
        records = self.vms.records()
        for m in list(self._monitors.values()):
            paused = resume_policy.paused_on(m.config.request.target, records)
            names = tuple(vm.name for vm in paused[: resume_policy.MAX_LISTED])
            if (m.status.paused_vms, m.status.paused_vm_count) == (names, len(paused)):
                continue
            after = dataclasses.replace(m.status, paused_vms=names, paused_vm_count=len(paused))
            with self._lock:
                m.status = after
            m.children[4].set(len(paused))
            if m.checks:
                # Before the first check there is nothing to report yet; the first result carries it.
                self._report(m, after, dmon.is_transition(m.reported, after), self._wall())

    def _remove(self, name: str) -> None:
        with self._lock:
            m = self._monitors.pop(name, None)
        if m is not None:
            self._forget_check(name)
            self.metrics.forget(name)

    def _forget_check(self, name: str) -> None:
        forget = getattr(self._backend, "forget", None)
        if forget is not None:
            forget(name)

    def _tick(self, m: _Monitor, due: float, now: float) -> None:
        interval = m.config.interval
        # A fixed schedule: the next tick is one interval after this one was due, not after "now".
        nxt = due + interval
        if nxt <= now:
            nxt = now + interval - ((now - due) % interval)
        m.next_tick = nxt
        self._push(nxt, m, "tick")
        sent = self._backend.outstanding(m.config.name)
        if sent is None:
            if self._backend.submit(m.config.name, m.request, timeout=m.config.timeout):
                self.jitter.append(now - due)
                m.sent_at, m.timed_out = now, False
                if m.config.timeout < m.config.interval:
                    self._push(now + m.config.timeout, m, "deadline")
                # Else the next tick is the deadline: one wake-up per slot instead of two.
            else:
                # Not knowing is not healthy: a check that cannot start counts as a failed one, so the
                # monitor does not keep showing its last good state while the node's helpers are stuck.
                log.warning("DomainMonitor/%s: check refused (helpers exhausted)", m.config.name)
                self._apply(
                    m,
                    dmon.Outcome(
                        dmon.OutcomeKind.ERROR,
                        reason=dmon.Reason.CHECK_REFUSED,
                        message="check not started: every check helper of this node is stuck on hung storage",
                    ),
                )
            return
        elapsed = now - sent
        # The check was sent a little after its tick was due; at the tick one timeout later it counts.
        if elapsed < m.config.timeout - TICK_SLACK:
            return
        kind = dmon.OutcomeKind.BLOCKED if m.timed_out else dmon.OutcomeKind.TIMEOUT
        if kind is dmon.OutcomeKind.BLOCKED:
            log.warning("DomainMonitor/%s: check blocked for %.0f s", m.config.name, elapsed)
        m.timed_out = True
        self._apply(m, dmon.Outcome(kind, blocked_seconds=elapsed, message="Read timeout"))

    def _deadline(self, m: _Monitor, now: float) -> None:
        sent = self._backend.outstanding(m.config.name)
        if sent is None or m.timed_out or now - sent < m.config.timeout - 1e-6:
            return
        m.timed_out = True
        log.warning("DomainMonitor/%s: Read timeout after %.1f s", m.config.name, now - sent)
        outcome = dmon.Outcome(dmon.OutcomeKind.TIMEOUT, blocked_seconds=now - sent, message="Read timeout")
        self._apply(m, outcome)

    def _result(self, m: _Monitor, result: checker.CheckResult) -> None:
        m.sent_at = None
        if m.timed_out:
            # Late: the timeout was already reported; the next tick checks afresh.
            m.timed_out = False
            m.children[3].set(0)
            return
        outcome = dmon.outcome_from_result(result)
        if result.read_delay is not None and result.ok:
            m.children[0].observe(result.read_delay)
        if outcome.kind is dmon.OutcomeKind.OK:
            m.request = dmon.followup_request(m.request, result)
        self._apply(m, outcome)

    def _apply(self, m: _Monitor, outcome: dmon.Outcome) -> None:
        wall = self._wall()
        before = m.status
        after = dmon.next_status(before, outcome, m.config.thresholds, wall)
        m.checks += 1
        with self._lock:
            m.status = after
        name = m.config.name
        self.metrics.outcomes[outcome.kind].inc()
        _, valid, last_check, blocked, _ = m.children
        valid.set(1 if after.valid else 0)
        last_check.set(wall)
        blocked.set(outcome.blocked_seconds)
        transition = dmon.is_transition(m.reported, after)
        if transition:
            log.info("DomainMonitor/%s: %s (%s): %s", name, after.state, after.reason, after.message)
        if after.state is dmon.State.HEALTHY and before.state is not dmon.State.HEALTHY:
            m.recoveries += 1
            if self.resumer is not None and m.config.resume_paused_vms:
                self.resumer.trigger(resume_policy.Recovery(name, m.recoveries, wall))
        self._report(m, after, transition, wall)

    def _report(self, m: _Monitor, after: dmon.MonitorStatus, transition: bool, wall: float) -> None:
        name = m.config.name
        if not dmon.report_due(m.reported, m.reported_at, after, wall, m.config.report_interval):
            return
        m.reported, m.reported_at = after, wall
        if self._on_report is not None:
            try:
                self._on_report(name, after, transition)
            except Exception:
                log.exception("DomainMonitor/%s: report callback failed", name)


def jitter_percentiles(samples: list[float] | collections.deque[float]) -> dict[str, float]:
    """p50/p99/max of schedule jitter in seconds (0 when there are no samples)."""
    data = sorted(samples)
    if not data:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0}
    return {
        "p50": data[len(data) // 2],
        "p99": data[min(len(data) - 1, int(len(data) * 0.99))],
        "max": data[-1],
    }


def ensure(runtime: MonitorRuntime, spec: dmon.Spec, host: Any) -> status_mod.NodeResult:
    """Agent/foreground mode: resolve the target, keep it InUse, and (re)start the monitor's schedule.

    Returns the current per-node result (``Unknown`` until the first check answers; the runtime's
    ``on_report`` carries every later change). Waiting and InvalidSpec stop a running schedule.
    """
    try:
        resolved = dmon.resolve_target(spec, host)
    except errors.HostStorageError as exc:
        runtime.remove(spec.name)
        return dmon.RESULTS.error(spec.name, exc)
    request = dmon.first_request(spec, resolved, host)
    dmon.record(host, spec, resolved, dmon.recorded_probe(host, spec.name))
    runtime.set(MonitorConfig.from_spec(spec, request))
    current = runtime.status(spec.name) or dmon.MonitorStatus()
    # The runtime keeps checking on its own schedule: an Invalid domain is not a reason to retry here.
    return dataclasses.replace(dmon.result_for_status(spec.name, current), retry=False)


def tracker_for(host: Any) -> libvirt_domains.DomainTracker:
    """The VM tracker on the node's one libvirt connection (the StoragePools' layer), not started."""

    def layer() -> libvirt_pools.PoolLayer:
        pools = storage_pool.layer_for(host)
        if not isinstance(pools, libvirt_pools.PoolLayer):
            raise errors.Unsupported("VM resume needs the node's libvirt layer; this host has another")
        return pools

    return libvirt_domains.DomainTracker(layer)


def record_probe(host: Any, spec: dmon.Spec, status: dmon.MonitorStatus) -> None:
    """Remember a probe file the helper created, so it is never created twice (and teardown removes it).

    Written against the target the monitor's ledger entry recorded, not a fresh resolve: the created
    file's ident must be kept even while the target cannot be resolved (a pool being restarted,
    libvirtd away), or the schedule stops, the ident is lost with it, and the teardown later leaves the
    file as not hoststorage's (the chaos soak found exactly that)."""
    if status.path_kind != "probe" or not status.path:
        return
    recorded = dmon.recorded_probe(host, spec.name)
    if recorded == status.path and status.probe_id in (None, dmon.recorded_probe_id(host, spec.name)):
        return
    entry = host.ledger.get(dmon.KIND, spec.name)
    target, root = (entry.resource.get("target"), entry.resource.get("root")) if entry else (None, None)
    if entry is None or not isinstance(target, str) or not isinstance(root, str):
        return
    dmon.record(host, spec, dmon.Resolved(target, root, entry.depends_on), status.path, status.probe_id)

