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

from controller import monitoring
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


Factory = Callable[[Callable[[str], None], prometheus_client.CollectorRegistry], Runtime]
"""(enqueue a name, the agent's metrics registry) -> a Runtime (not started)."""


class Monitors:
    """Every DomainMonitor of this node on :class:`controller.monitoring.MonitorRuntime`."""

    def __init__(self, enqueue: Callable[[str], None], metrics: prometheus_client.CollectorRegistry) -> None:
        self._enqueue = enqueue
        self._lock = threading.Lock()
        self._due: set[str] = set()
        self.runtime = monitoring.MonitorRuntime(on_report=self._on_report, registry=metrics)

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
        result = monitoring.ensure(self.runtime, spec, host)
        current = self.runtime.status(spec.name)
        if current is not None:
            monitoring.record_probe(host, spec, current)
        return result

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
