"""The monitor runtime resumes VMs on recovery: real checks on a host path, VMs from an in-memory source.

The VM source here has the interface of hostlib.libvirt_domains.DomainTracker and keeps its VMs in a dict;
the real tracker with real guests is tests/test_vm_resume_host.py. The spec field is parsed here too.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import prometheus_client
import pytest
from fixtures_libvirt import wait_for

from controller import monitoring, vm_resume
from hostlib import checker, errors, libvirt_domains, libvirt_pools
from reconcilers import domain_monitor as dmon
from reconcilers import vm_resume as resume_policy


class MemoryVms:
    """A VmSource: VMs in a dict; resume() flips them to running, or fails when told to."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.vms: dict[str, libvirt_domains.VmRecord] = {}
        self.fail: set[str] = set()
        self.resumed: list[str] = []
        self.listeners: list[Callable[[], None]] = []
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self, timeout: float = 5.0) -> None:
        self.stopped = True

    def add_change_listener(self, listener: Callable[[], None]) -> None:
        self.listeners.append(listener)

    def put(self, record: libvirt_domains.VmRecord) -> None:
        with self.lock:
            self.vms[record.uuid] = record
        for listener in self.listeners:
            listener()

    def records(self) -> list[libvirt_domains.VmRecord]:
        with self.lock:
            return list(self.vms.values())

    def list_paused(self) -> list[libvirt_domains.VmRecord]:
        return [r for r in self.records() if r.state == "paused"]

    def resume(self, uuid: str) -> None:
        with self.lock:
            r = self.vms[uuid]
            if not r.paused_on_io_error:
                raise libvirt_domains.NotPausedOnIOError(f"{r.name} is {r.state}")
            if r.name in self.fail:
                raise libvirt_domains.ResumeFailed("libvirt resume: Requested operation is not valid")
            self.vms[uuid] = dataclasses.replace(r, state="running", paused_reason="", io_error="")
            self.resumed.append(r.name)
        for listener in self.listeners:
            listener()


def paused(name: str, *disks: str, reason: str = "ioerror") -> libvirt_domains.VmRecord:
    io_error = "eio" if reason == "ioerror" else ""
    return libvirt_domains.VmRecord(f"uuid-{name}", name, "paused", reason, io_error, disks, (), None, 1)



@dataclasses.dataclass
class Rig:
    rt: monitoring.MonitorRuntime
    vms: MemoryVms
    batches: list[vm_resume.ResumeBatch]
    reports: list[tuple[str, dmon.MonitorStatus, bool]]
    registry: prometheus_client.CollectorRegistry

    def state(self, name: str) -> str:
        st = self.rt.status(name)
        return str(st.state) if st else "none"

    def sample(self, metric: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(metric, labels)


@pytest.fixture
def rig() -> Iterator[Rig]:
    vms = MemoryVms()
    batches: list[vm_resume.ResumeBatch] = []
    reports: list[tuple[str, dmon.MonitorStatus, bool]] = []
    registry = prometheus_client.CollectorRegistry()
    rt = monitoring.MonitorRuntime(on_report=lambda n, st, t: reports.append((n, st, t)), registry=registry,
                                   vms=vms, on_resume=batches.append)
    rt.start()
    try:
        yield Rig(rt, vms, batches, reports, registry)
    finally:
        rt.stop()
    assert vms.started and vms.stopped


def config(name: str, target: pathlib.Path, **kw: Any) -> monitoring.MonitorConfig:
    request = checker.CheckRequest(target=str(target))
    return monitoring.MonitorConfig(name, request, interval=1, timeout=1, **kw)


def break_and_heal(rig: Rig, name: str, target: pathlib.Path) -> None:
    """Invalid (the probe file vanishes), then Healthy again (it is back)."""
    probe = target / checker.PROBE_NAME
    data = probe.read_bytes()
    os.unlink(probe)
    wait_for(lambda: rig.state(name) == "Invalid", 10, f"{name} Invalid")
    probe.write_bytes(data)
    wait_for(lambda: rig.state(name) == "Healthy", 10, f"{name} Healthy again")


def test_recovery_resumes_the_vm_once_lists_paused_vms_and_counts(rig: Rig, tmp_path: pathlib.Path) -> None:
    a = tmp_path / "a"
    a2 = tmp_path / "a2"
    a.mkdir()
    a2.mkdir()
    rig.vms.put(paused("v1", str(a / "v1.img")))
    rig.vms.put(paused("admin", str(a / "admin.img"), reason="user"))
    rig.vms.put(paused("neighbour", str(a2 / "n.img")))
    rig.rt.set(config("a", a))
    # Unknown -> Healthy at start-up is a recovery too: VMs that paused while nobody watched.
    wait_for(lambda: bool(rig.batches), 10, "the start-up batch")
    assert rig.vms.resumed == ["v1"]
    assert rig.batches[0].resumed == ("v1",) and rig.batches[0].monitor == "a"
    assert rig.sample("hoststorage_vm_resumes_total", result="resumed") == 1
    # It pauses again on an I/O error: the detail block and the gauge say so, reported at once.
    n = len(rig.reports)
    rig.vms.put(dataclasses.replace(paused("v1", str(a / "v1.img")), pause_seq=2))
    wait_for(lambda: (rig.rt.status("a") or dmon.MonitorStatus()).paused_vm_count == 1, 5, "pausedVMs")
    detail = (rig.rt.status("a") or dmon.MonitorStatus()).detail()
    assert detail["pausedVMs"] == {"count": 1, "names": ["v1"]}
    assert rig.sample("hoststorage_monitor_paused_vms", monitor="a") == 1
    wait_for(lambda: len(rig.reports) > n, 5, "a report of the paused VM")
    assert rig.reports[-1][1].paused_vms == ("v1",) and rig.reports[-1][2] is False
    # Healthy all along: no resume (VDSM resumes on a change of validity, not on every check).
    time.sleep(1.5)
    assert rig.vms.resumed == ["v1"]
    break_and_heal(rig, "a", a)
    wait_for(lambda: len(rig.batches) == 2, 5, "the recovery batch")
    assert rig.vms.resumed == ["v1", "v1"]
    # One batch per recovery, however many checks follow; the admin's VM and the neighbour stay paused.
    time.sleep(1.5)
    assert len(rig.batches) == 2
    assert rig.vms.vms["uuid-admin"].state == "paused"
    assert rig.vms.vms["uuid-neighbour"].state == "paused"
    wait_for(lambda: (rig.rt.status("a") or dmon.MonitorStatus()).paused_vm_count == 0, 5, "none paused")
    assert "pausedVMs" not in (rig.rt.status("a") or dmon.MonitorStatus()).detail()
    assert rig.sample("hoststorage_vm_resumes_total", result="resumed") == 2


def test_other_target_invalid_holds_until_it_recovers(rig: Rig, tmp_path: pathlib.Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    rig.rt.set(config("a", a))
    rig.rt.set(config("b", b))
    wait_for(lambda: rig.state("a") == rig.state("b") == "Healthy", 10, "both Healthy")
    rig.vms.put(paused("two", str(a / "x.img"), str(b / "y.img")))
    probe_b = b / checker.PROBE_NAME
    data_b = probe_b.read_bytes()
    os.unlink(probe_b)
    wait_for(lambda: rig.state("b") == "Invalid", 10, "b Invalid")
    break_and_heal(rig, "a", a)
    wait_for(lambda: any(x.monitor == "a" and x.held for x in rig.batches), 5, "a's batch")
    held = next(x for x in rig.batches if x.monitor == "a" and x.held).held
    assert held[0][:2] == ("two", "OtherTargetNotHealthy")
    assert rig.vms.resumed == []
    event_type, reason, _ = next(x for x in rig.batches if x.held).event()
    assert (event_type, reason) == ("Warning", "VMsLeftPaused")
    probe_b.write_bytes(data_b)
    wait_for(lambda: rig.vms.resumed == ["two"], 10, "resumed once b recovered")


def test_opt_out_and_failures(rig: Rig, tmp_path: pathlib.Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    rig.vms.put(paused("kept", str(a / "k.img")))
    rig.vms.put(paused("broken", str(b / "b.img")))
    rig.vms.fail.add("broken")
    rig.rt.set(config("a", a, resume_paused_vms=False))
    rig.rt.set(config("b", b))
    wait_for(lambda: any(x.monitor == "b" for x in rig.batches), 10, "b's batch")
    batch = next(x for x in rig.batches if x.monitor == "b")
    assert batch.failed == (("broken", "libvirt resume: Requested operation is not valid"),)
    assert batch.event()[:2] == ("Warning", "VMResumeFailed")
    assert rig.sample("hoststorage_vm_resumes_total", result="failed") == 1
    time.sleep(1.5)
    # The opted-out monitor never triggers a batch; the failed resume is not retried in the same recovery.
    assert [x.monitor for x in rig.batches] == ["b"]
    assert rig.vms.resumed == []
    assert rig.sample("hoststorage_vm_resumes_total", result="failed") == 1
    # The next recovery tries the failed one again.
    rig.vms.fail.clear()
    break_and_heal(rig, "b", b)
    wait_for(lambda: rig.vms.resumed == ["broken"], 5, "resumed on the next recovery")
    assert rig.vms.vms["uuid-kept"].state == "paused"


# --------------------------------------------------------------------------------------------- spec


def manifest(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "hoststorage.io/v1alpha1", "kind": "DomainMonitor", "metadata": {"name": "m"},
            "spec": {"target": {"hostPath": "/srv/x"}, **spec}}


def test_resume_paused_vms_defaults_on_and_can_be_turned_off() -> None:
    assert dmon.parse(manifest()).resume_paused_vms is True
    assert dmon.parse(manifest(resumePausedVMs=False)).resume_paused_vms is False
    spec = dmon.parse(manifest(resumePausedVMs=False))
    cfg = monitoring.MonitorConfig.from_spec(spec, checker.CheckRequest(target="/srv/x"))
    assert cfg.resume_paused_vms is False


# null is "not given" (the default), as the API server prunes a null of a non-nullable field.
@pytest.mark.parametrize("value", ["false", 0, 1, [True]])
def test_resume_paused_vms_must_be_a_boolean(value: object) -> None:
    with pytest.raises(errors.InvalidSpec, match=r"spec\.resumePausedVMs.*true or false"):
        dmon.parse(manifest(resumePausedVMs=value))


class FlakyVms(MemoryVms):
    """libvirt not answering for the first ``n`` listings (away, or not connected yet at start-up)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.listings = 0

    def list_paused(self) -> list[libvirt_domains.VmRecord]:
        self.listings += 1
        if self.listings <= self.n:
            raise libvirt_pools.LibvirtUnavailable("libvirt qemu:///system is not reachable")
        return super().list_paused()


def test_a_batch_libvirt_cannot_list_yet_is_tried_again_later() -> None:
    vms = FlakyVms(2)
    vms.put(paused("v", "/mnt/a/v.img"))
    views = {"a": resume_policy.MonitorView("a", "/mnt/a", "Healthy")}
    batches: list[vm_resume.ResumeBatch] = []
    r = vm_resume.Resumer(vms, lambda: views, registry=prometheus_client.CollectorRegistry(),
                          on_batch=batches.append, retry_seconds=0.05)
    r.start()
    try:
        r.trigger(resume_policy.Recovery("a", 1, time.time()))
        wait_for(lambda: bool(batches), 5, "the batch after two failed listings")
        assert vms.listings == 3 and vms.resumed == ["v"]
        wait_for(r.idle, 5, "the resumer idle")
    finally:
        r.stop()


def test_a_batch_that_never_lists_gives_up() -> None:
    vms = FlakyVms(10**6)
    vms.put(paused("v", "/mnt/a/v.img"))
    views = {"a": resume_policy.MonitorView("a", "/mnt/a", "Healthy")}
    r = vm_resume.Resumer(vms, lambda: views, registry=prometheus_client.CollectorRegistry(),
                          retry_seconds=0.001)
    r.start()
    try:
        r.trigger(resume_policy.Recovery("a", 1, time.time()))
        wait_for(lambda: vms.listings > vm_resume.RETRIES and r.idle(), 10, "giving up")
        time.sleep(0.1)
        assert vms.listings == vm_resume.RETRIES + 1 and vms.resumed == []
    finally:
        r.stop()
