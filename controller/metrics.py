"""Prometheus metrics of the agent and the controller, on their own registry.

Volatile numbers belong here, not in status (DESIGN.md "Status model": steady state makes zero API
writes). One registry per process keeps tests that build several agents from sharing counters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import prometheus_client


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

    def watch_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))

    def serve(self, port: int, addr: str = "0.0.0.0") -> Any:  # noqa: S104 - probes come from the kubelet
        """Serve /metrics on ``port``; returns the server (``shutdown()``) or None when port is 0."""
        if not port:
            return None
        server, _thread = prometheus_client.start_http_server(port, addr=addr, registry=self.registry)
        return server

    def render(self) -> bytes:
        data: bytes = prometheus_client.generate_latest(self.registry)
        return data
