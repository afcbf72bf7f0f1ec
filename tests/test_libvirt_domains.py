"""hostlib.libvirt_domains without a daemon: disk sources from domain XML, and how pauses are counted.

The tracker against a real libvirtd and real VMs is tests/test_vm_resume_host.py.
"""

from __future__ import annotations

import libvirt
import pytest

from hostlib import libvirt_domains as ld
from hostlib import libvirt_pools


def domain(*disks: str) -> str:
    return f"<domain type='qemu'><name>v</name><devices>{''.join(disks)}</devices></domain>"


FILE = "<disk type='file' device='disk'><source file='/mnt/a/v.img'/><target dev='vda'/></disk>"
BLOCK = "<disk type='block' device='lun'><source dev='/dev/disk/by-path/x'/><target dev='sda'/></disk>"
DIR = "<disk type='dir' device='disk'><source dir='/mnt/a/tree/'/><target dev='vdc'/></disk>"
CDROM_EMPTY = "<disk type='file' device='cdrom'><target dev='hdc'/></disk>"
CDROM = "<disk type='file' device='cdrom'><source file='/mnt/iso/x.iso'/><target dev='hdd'/></disk>"
VOLUME = "<disk type='volume' device='disk'><source pool='p1' volume='v1.qcow2'/><target dev='vdd'/></disk>"
GLUSTER = ("<disk type='network' device='disk'><source protocol='gluster' name='vol/img.raw'>"
           "<host name='gl1' port='24007'/></source><target dev='vde'/></disk>")
NVME = ("<disk type='nvme' device='disk'><source type='pci' managed='yes' namespace='1'/>"
        "<target dev='vdf'/></disk>")
CHAIN = ("<disk type='file' device='disk'><source file='/mnt/a/top.qcow2'/>"
         "<backingStore type='file'><format type='qcow2'/><source file='/mnt/b/mid.qcow2'/>"
         "<backingStore type='block'><source dev='/dev/vg/base'/><backingStore/></backingStore>"
         "</backingStore><target dev='vdg'/></disk>")

SOURCES = [
    ("file", [FILE], ("/mnt/a/v.img",), ()),
    ("block lun", [BLOCK], ("/dev/disk/by-path/x",), ()),
    ("dir, normalised", [DIR], ("/mnt/a/tree",), ()),
    ("empty cdrom", [CDROM_EMPTY], (), ()),
    ("cdrom", [CDROM], ("/mnt/iso/x.iso",), ()),
    ("gluster network disk: no local path", [GLUSTER], (), ("gluster://gl1/vol/img.raw",)),
    ("nvme: no local path", [NVME], (), ("nvme:",)),
    ("backing chain", [CHAIN], ("/mnt/a/top.qcow2", "/mnt/b/mid.qcow2", "/dev/vg/base"), ()),
    ("all of them, in order", [FILE, GLUSTER, CDROM],
     ("/mnt/a/v.img", "/mnt/iso/x.iso"), ("gluster://gl1/vol/img.raw",)),
]


@pytest.mark.parametrize(("disks", "paths", "unmatched"), [c[1:] for c in SOURCES],
                         ids=[c[0] for c in SOURCES])
def test_disk_sources(disks: list[str], paths: tuple[str, ...], unmatched: tuple[str, ...]) -> None:
    assert ld.disk_sources(domain(*disks)) == (paths, unmatched)


def test_volume_disks_are_resolved_through_libvirt_or_left_unmatched() -> None:
    asked: list[tuple[str, str]] = []

    def resolve(pool: str, volume: str) -> str | None:
        asked.append((pool, volume))
        return "/pools/p1/v1.qcow2" if (pool, volume) == ("p1", "v1.qcow2") else None

    assert ld.disk_sources(domain(VOLUME), resolve) == (("/pools/p1/v1.qcow2",), ())
    assert asked == [("p1", "v1.qcow2")]
    assert ld.disk_sources(domain(VOLUME.replace("p1", "p2")), resolve) == ((), ("volume:p2/v1.qcow2",))
    assert ld.disk_sources(domain(VOLUME)) == ((), ("volume:p1/v1.qcow2",))


# ------------------------------------------------------------------------------------ pause counting


def tracker() -> ld.DomainTracker:
    # Not started: the merge rule needs no connection.
    return ld.DomainTracker(lambda: libvirt_pools.PoolLayer("test:///default"))


def record(state: str = "paused", reason: str = "ioerror", io_error: str = "eio") -> ld.VmRecord:
    return ld.VmRecord("u1", "v", state, reason if state == "paused" else "", io_error, ("/mnt/a/v.img",))


def suspended(at: float) -> libvirt_pools.DomainEvent:
    return libvirt_pools.DomainEvent("u1", "v", "lifecycle", at, event=libvirt.VIR_DOMAIN_EVENT_SUSPENDED,
                                     detail=libvirt.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR)


def io_error(at: float, reason: str = "eio") -> libvirt_pools.DomainEvent:
    return libvirt_pools.DomainEvent("u1", "v", "io-error", at, src_path="/mnt/a/v.img",
                                     dev_alias="virtio-disk0", action=libvirt.VIR_DOMAIN_EVENT_IO_ERROR_PAUSE,
                                     reason=reason)


def test_a_pause_seen_as_events_has_the_first_events_time() -> None:
    t = tracker()
    t._on_event(io_error(10.0))
    t._on_event(suspended(10.2))
    r = t._merge(record())
    assert (r.pause_seq, r.paused_since, r.paused_on_io_error) == (1, 10.0, True)
    # More failed requests of the same pause (one io-error event each): the same pause.
    t._on_event(io_error(11.0))
    r = t._merge(record())
    assert (r.pause_seq, r.paused_since) == (1, 10.0)


def test_a_pause_found_by_listing_has_no_time() -> None:
    t = tracker()
    r = t._merge(record())
    assert (r.pause_seq, r.paused_since) == (1, None)


def test_resume_then_pause_between_two_reads_is_a_new_pause() -> None:
    t = tracker()
    t._on_event(suspended(10.0))
    assert t._merge(record()).pause_seq == 1
    # Resumed and paused again before the tracker read the domain: the second suspend event says so.
    t._on_event(suspended(20.0))
    r = t._merge(record())
    assert (r.pause_seq, r.paused_since) == (2, 20.0)
    # Running again clears the time, keeps the count; the next pause counts on.
    r = t._merge(record(state="running"))
    assert (r.pause_seq, r.paused_since, r.paused_on_io_error) == (2, None, False)
    t._on_event(suspended(30.0))
    assert t._merge(record()).pause_seq == 3


def test_enospc_is_kept_for_its_pause_from_the_event_reason() -> None:
    t = tracker()
    t._on_event(io_error(10.0, reason="enospc"))
    assert t._merge(record(io_error="")).io_error == "enospc"
    # diskErrors cleared by a later read: still the ENOSPC pause.
    assert t._merge(record(io_error="")).io_error == "enospc"
    # A new pause for another reason is not ENOSPC.
    t._merge(record(state="running"))
    t._on_event(suspended(20.0))
    assert t._merge(record(io_error="eio")).io_error == "eio"


def test_other_pauses_are_recorded_with_their_reason_not_as_io_errors() -> None:
    t = tracker()
    r = t._merge(record(reason="user", io_error=""))
    assert (r.paused_on_io_error, r.paused_reason, r.pause_seq) == (False, "user", 0)


def test_change_listeners_hear_only_real_changes() -> None:
    t = tracker()
    heard: list[int] = []
    t.add_change_listener(lambda: heard.append(1))
    t._merge(record())
    t._changed()
    t._merge(record())  # same again
    t._changed()
    assert heard == [1]
    t._merge(record(state="running"))
    t._changed()
    assert heard == [1, 1]


def test_every_paused_reason_libvirt_knows_has_a_name() -> None:
    reasons = {getattr(libvirt, n) for n in dir(libvirt) if n.startswith("VIR_DOMAIN_PAUSED_")
               and n != "VIR_DOMAIN_PAUSED_LAST"}
    assert reasons <= set(ld.PAUSED_REASONS)
    assert ld.PAUSED_REASONS[libvirt.VIR_DOMAIN_PAUSED_IOERROR] == ld.IOERROR


class FakeDom:
    def UUIDString(self) -> str:
        return "u1"

    def name(self) -> str:
        return "v"


def test_a_stopped_tracker_hears_no_more_events() -> None:
    layer = libvirt_pools.PoolLayer("test:///default")  # never connected: events are injected
    t = ld.DomainTracker(layer)
    layer.add_domain_listener(t._on_event)
    layer.add_reconnect_listener(t._on_reconnect)
    layer._on_domain_lifecycle(None, FakeDom(), libvirt.VIR_DOMAIN_EVENT_SUSPENDED,
                               libvirt.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR, None)
    assert list(t._queue) == ["u1"] and t._noted["u1"].suspended
    t.stop()  # removes the bound methods it registered
    t._queue.clear()
    layer._on_domain_lifecycle(None, FakeDom(), libvirt.VIR_DOMAIN_EVENT_RESUMED, 0, None)
    assert list(t._queue) == []
