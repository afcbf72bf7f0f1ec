"""Runtimes: what drives a kind on a node beside reconcile, for kinds whose registry row names one.

A DomainMonitor is not made true once and left: its checks run on a schedule for as long as it exists.
So the agent hands monitors to a :class:`Runtime` instead of calling ``reconcile`` on them, and the
runtime tells the agent (``enqueue``) when a status write is due. Which kinds have a runtime is the
registry's ``runtime`` field; the agent holds no per-kind code.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

import prometheus_client

from controller import events, monitoring, vm_resume
from reconcilers import domain_monitor as dmon
from reconcilers import host as host_mod
from reconcilers import status


class Runtime(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def ensure(self, spec: Any, host: host_mod.Host) -> status.NodeResult:
        """Start or update the schedule of ``spec``; the current result (no I/O on the storage)."""
        ...

    def forget(self, name: str) -> None:
        """Stop the schedule of ``name`` (before its teardown)."""
        ...

    def report_due(self, name: str) -> bool:
        """Whether a status write of ``name`` is due (and mark it taken): a transition, a threshold, or
        the report interval. When not, moving numbers alone are not written."""
        ...

    def healthy(self) -> bool:
        """The runtime's own heartbeat (for /healthz)."""
        ...

    def snapshot(self) -> dict[str, Any]: ...


Notify = Callable[[str, events.Event], None]
"""(object name, Event) -> post that Event about the object; a runtime's own news (a resume batch)."""

Factory = Callable[
    [Callable[[str], None], prometheus_client.CollectorRegistry, host_mod.Host, Notify], Runtime
]
"""(enqueue a name, the agent's metrics registry, this node's host, post an Event) -> a Runtime (not
started)."""


class Monitors:
    """Every DomainMonitor of this node on :class:`controller.monitoring.MonitorRuntime`."""

    def __init__(
        self,
        enqueue: Callable[[str], None],
        metrics: prometheus_client.CollectorRegistry,
        host: host_mod.Host,
        notify: Notify,
    ) -> None:
        self._enqueue = enqueue
        self._notify = notify
        self._lock = threading.Lock()
        self._due: set[str] = set()
        # VMs paused on an I/O error are resumed when their storage turns Healthy (VDSM's contEIOVms),
        # through this node's one libvirt connection; a host without one has no VMs to resume.
        vms = monitoring.tracker_for(host) if host.pools is not None else None
        self.runtime = monitoring.MonitorRuntime(
            on_report=self._on_report, registry=metrics, vms=vms, on_resume=self._on_resume
        )

    def _on_resume(self, batch: vm_resume.ResumeBatch) -> None:
        # The resumer thread: one Event on the DomainMonitor per batch.
        event_type, reason, message = batch.event()
        self._notify(batch.monitor, events.Event(event_type, reason, message))

    def _on_report(self, name: str, st: dmon.MonitorStatus, transition: bool) -> None:
        # The scheduler thread: only record and enqueue.
        with self._lock:
            self._due.add(name)
        self._enqueue(name)

    def start(self) -> None:
        self.runtime.start()

    def stop(self) -> None:
        self.runtime.stop()

    def ensure(self, spec: dmon.Spec, host: host_mod.Host) -> status.NodeResult:
        # First what the running schedule found (a probe file it created): a target that cannot be
        # resolved now stops the schedule, and its status with it.
        self._record_probe(spec, host)
        result = monitoring.ensure(self.runtime, spec, host)
        self._record_probe(spec, host)
        return result

    def _record_probe(self, spec: dmon.Spec, host: host_mod.Host) -> None:
        current = self.runtime.status(spec.name)
        if current is not None:
            monitoring.record_probe(host, spec, current)

    def forget(self, name: str) -> None:
        self.runtime.remove(name)

    def report_due(self, name: str) -> bool:
        with self._lock:
            due = name in self._due
            self._due.discard(name)
        return due

    def healthy(self) -> bool:
        return self.runtime.healthy()

    def snapshot(self) -> dict[str, Any]:
        return dict(self.runtime.snapshot())
