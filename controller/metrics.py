"""Prometheus metrics of the agent and the controller, on their own registry.

Volatile numbers belong here, not in status (DESIGN.md "Status model": steady state makes zero API
writes). One registry per process keeps tests that build several agents from sharing counters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import prometheus_client

if TYPE_CHECKING:
    from hostlib import preflight


PARENT_STATES = ("selected", "ready", "failed", "pending")
"""``hoststorage_parent_nodes{state}``: the controller's roll-up counts of one parent."""


class Metrics:
    def __init__(self, component: str) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        ns = "hoststorage"
        self.reconciles = prometheus_client.Counter(
            f"{ns}_reconciles", "Reconciles and teardowns by kind and result.",
            ["kind", "result"], registry=self.registry)
        self.duration = prometheus_client.Histogram(
            f"{ns}_reconcile_seconds", "Time one reconcile or teardown took, by kind.", ["kind"],
            registry=self.registry, buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.repairs = prometheus_client.Counter(
            f"{ns}_repairs", "Drift repairs: host state restored on a resync without a spec change.",
            ["kind"], registry=self.registry)
        self.status_writes = prometheus_client.Counter(
            f"{ns}_status_writes", "API writes made (creates, status patches, deletes), by verb.",
            ["verb"], registry=self.registry)
        self.queue_depth = prometheus_client.Gauge(
            f"{ns}_queue_depth", "Keys waiting in the work queue.", registry=self.registry)
        self.connected = prometheus_client.Gauge(
            f"{ns}_ready_objects", "Objects Ready on this node (connections Connected, ...), by kind.",
            ["kind"], registry=self.registry)
        self.info = prometheus_client.Info(f"{ns}_build", "Component and node.", registry=self.registry)
        self.info.info({"component": component})
        # Agent: readiness, the preflight, and each object's result on this node.
        self.agent_ready = prometheus_client.Gauge(
            f"{ns}_agent_ready", "1 once the agent finished its initial refresh (what /readyz says), else 0.",
            registry=self.registry)
        self.preflight = prometheus_client.Gauge(
            f"{ns}_preflight_supported", "1 when this node has the client a connection type needs, else 0.",
            ["type"], registry=self.registry)
        self.objects = prometheus_client.Gauge(
            f"{ns}_object_ready", "Each object on this node: 1 Ready, 0 not; phase is its current phase.",
            ["kind", "name", "phase"], registry=self.registry)
        self._object_labels: dict[tuple[str, str], tuple[str, bool]] = {}
        # Controller: each parent's roll-up.
        self.parent_nodes = prometheus_client.Gauge(
            f"{ns}_parent_nodes", "Per parent, its selected nodes and how many are ready, failed or pending "
            "(not reported, or neither ready nor failed).", ["kind", "name", "state"], registry=self.registry)

    def watch_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))

    def watch_ready(self, ready: Callable[[], bool]) -> None:
        self.agent_ready.set_function(lambda: float(ready()))

    def observe_preflight(self, report: preflight.Report) -> None:
        for conn_type, support in report.types.items():
            self.preflight.labels(conn_type).set(1 if support.supported else 0)

    def observe_objects(
        self, kinds: Iterable[str], last: Mapping[tuple[str, str], Mapping[str, Any]]
    ) -> None:
        """Set ``hoststorage_ready_objects`` per kind and ``hoststorage_object_ready`` per object from the
        agent's last result of each (kind, name); series of objects no longer there, or of a phase they
        left, go. Called after every reconcile: only what changed touches a series."""
        counts = dict.fromkeys(kinds, 0)
        seen = self._object_labels
        current: dict[tuple[str, str], tuple[str, bool]] = {}
        for key, result in list(last.items()):
            ready = bool(result.get("ready"))
            counts[key[0]] = counts.get(key[0], 0) + ready
            now = (str(result.get("phase") or "Unknown"), ready)
            current[key] = now
            old = seen.get(key)
            if old == now:
                continue
            if old is not None and old[0] != now[0]:
                with contextlib.suppress(KeyError):
                    self.objects.remove(key[0], key[1], old[0])
            self.objects.labels(key[0], key[1], now[0]).set(1 if ready else 0)
        for key, (phase, _) in seen.items():
            if key not in current:
                with contextlib.suppress(KeyError):
                    self.objects.remove(key[0], key[1], phase)
        self._object_labels = current
        for kind, n in counts.items():
            self.connected.labels(kind).set(n)

    def observe_parent(self, kind: str, name: str, status: Mapping[str, Any]) -> None:
        """The controller's roll-up of one parent (:func:`controller.rollup.rollup`'s status)."""
        selected, ready, failed = (int(status.get(k) or 0) for k in ("selected", "ready", "failed"))
        values = {"selected": selected, "ready": ready, "failed": failed,
                  "pending": max(0, selected - ready - failed)}
        for state in PARENT_STATES:
            self.parent_nodes.labels(kind, name, state).set(values[state])

    def forget_parent(self, kind: str, name: str) -> None:
        for state in PARENT_STATES:
            with contextlib.suppress(KeyError):
                self.parent_nodes.remove(kind, name, state)

    def serve(self, port: int, addr: str = "0.0.0.0") -> Any:  # noqa: S104 - probes come from the kubelet
        """Serve /metrics on ``port``; returns the server (``shutdown()``) or None when port is 0."""
        if not port:
            return None
        server, _thread = prometheus_client.start_http_server(port, addr=addr, registry=self.registry)
        return server

    def render(self) -> bytes:
        data: bytes = prometheus_client.generate_latest(self.registry)
        return data
