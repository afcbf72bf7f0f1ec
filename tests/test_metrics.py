"""The metrics the alerts and the dashboard read (controller/metrics.py): series appear, change label
and disappear with the objects they describe. The exposition is parsed with prometheus_client's own
parser, the way a scrape would see it."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from controller import metrics
from hostlib import preflight


def samples(m: metrics.Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def key(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def test_object_series_follow_phase_and_removal() -> None:
    m = metrics.Metrics("agent")
    kinds = ["StorageConnection", "DomainMonitor"]
    last = {("StorageConnection", "a"): {"phase": "Pending", "ready": False},
            ("DomainMonitor", "m"): {"phase": "Healthy", "ready": True}}  # fmt: skip
    m.observe_objects(kinds, last)
    assert samples(m, "hoststorage_object_ready") == {
        key(kind="StorageConnection", name="a", phase="Pending"): 0.0,
        key(kind="DomainMonitor", name="m", phase="Healthy"): 1.0,
    }
    last[("StorageConnection", "a")] = {"phase": "Connected", "ready": True}
    del last[("DomainMonitor", "m")]
    m.observe_objects(kinds, last)
    # The old phase's series goes (an alert on phase="Pending" must resolve), so does a torn-down object.
    connected = key(kind="StorageConnection", name="a", phase="Connected")
    assert samples(m, "hoststorage_object_ready") == {connected: 1.0}
    assert samples(m, "hoststorage_ready_objects") == {
        key(kind="StorageConnection"): 1.0, key(kind="DomainMonitor"): 0.0}  # fmt: skip


def test_parent_counts_and_forgetting() -> None:
    m = metrics.Metrics("controller")
    m.observe_parent("StorageConnection", "nfs", {"selected": 5, "ready": 2, "failed": 1})
    got = samples(m, "hoststorage_parent_nodes")
    assert got == {key(kind="StorageConnection", name="nfs", state=s): v
                   for s, v in {"selected": 5, "ready": 2, "failed": 1, "pending": 2}.items()}  # fmt: skip
    m.forget_parent("StorageConnection", "nfs")
    assert samples(m, "hoststorage_parent_nodes") == {}


def test_readiness_and_preflight() -> None:
    m = metrics.Metrics("agent")
    ready = [False]
    m.watch_ready(lambda: ready[0])
    assert samples(m, "hoststorage_agent_ready") == {(): 0.0}
    ready[0] = True
    assert samples(m, "hoststorage_agent_ready") == {(): 1.0}
    report = preflight.Report(
        types={"nfs": preflight.TypeSupport("nfs", True, "mount.nfs"),
               "iscsi": preflight.TypeSupport("iscsi", False, "no iscsiadm")},
        helpers={}, filesystems=(), libvirt_socket=None, host_scope=False)  # fmt: skip
    m.observe_preflight(report)
    assert samples(m, "hoststorage_preflight_supported") == {key(type="nfs"): 1.0, key(type="iscsi"): 0.0}
