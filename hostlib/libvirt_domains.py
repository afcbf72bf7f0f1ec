"""libvirt domains: which VMs of this node are paused on an I/O error, on which disk paths; resume them.

VDSM resumes a VM that paused with ``VIR_DOMAIN_PAUSED_IOERROR`` once the storage domain holding its
disks is valid again (``clientIF.contEIOVms``). This module is the libvirt half of that: it knows the
VMs, never decides. The decision is :mod:`reconcilers.vm_resume` (pure); the trigger is the monitor
runtime (:mod:`controller.vm_resume`).

- :class:`DomainTracker` rides on the agent's one libvirt connection, a
  :class:`hostlib.libvirt_pools.PoolLayer` (keepalive, reconnect, event loop started before any
  connection). It listens to the layer's domain events (lifecycle and ``IO_ERROR_REASON``, registered
  again on every reconnect) and keeps one :class:`VmRecord` per domain: its state and pause reason as
  ``virDomainGetState`` says, whether a disk reports ``ENOSPC`` (``virDomainGetDiskErrors``), and every
  disk source path. Event callbacks run in libvirt's event thread and only note the time and enqueue;
  the tracker's own thread reads the domain (bounded calls) and updates the table. At start-up and
  after every reconnect it lists all domains once.
- :func:`disk_sources` reads the disk sources of a domain's XML with ElementTree. Supported, matched
  against monitor targets by path: ``type='file'`` (``source/@file``), ``type='block'``
  (``source/@dev``), ``type='dir'`` (``source/@dir``) and ``type='volume'`` (the volume's path, asked of
  libvirt), for disks, cdroms and LUNs, with every ``backingStore`` of the chain. Network disks (gluster,
  nbd, iscsi, rbd, ...) and nvme/vhost-user disks have no local path: they are listed as ``unmatched``
  (``gluster://host/volume/image``) and never tie a VM to a monitor, so such a VM is never resumed here.
- :meth:`DomainTracker.list_paused` asks libvirt afresh for the paused domains (VDSM does the same on
  every domain-state change), so a resume batch never depends on an event that came late.
- :meth:`DomainTracker.resume` checks the state once more, in the same bounded call, and resumes only a
  domain still paused on an I/O error that is not ``ENOSPC``.

A VM paused for any other reason (``VIR_DOMAIN_PAUSED_USER`` by an admin, ``MIGRATION``, ``SAVE``,
``SNAPSHOT``, ``POSTCOPY``, ...) is recorded with that reason and never counts as paused on an I/O
error. ``ENOSPC`` pauses are also ``PAUSED_IOERROR`` in libvirt; they are told apart by the I/O-error
event's reason and by ``virDomainGetDiskErrors`` (``NO_SPACE``), and left to whoever extends the disk.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import libvirt

from hostlib import errors, libvirt_pools

log = logging.getLogger(__name__)

STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}
PAUSED_REASONS = {
    libvirt.VIR_DOMAIN_PAUSED_UNKNOWN: "unknown",
    libvirt.VIR_DOMAIN_PAUSED_USER: "user",
    libvirt.VIR_DOMAIN_PAUSED_MIGRATION: "migration",
    libvirt.VIR_DOMAIN_PAUSED_SAVE: "save",
    libvirt.VIR_DOMAIN_PAUSED_DUMP: "dump",
    libvirt.VIR_DOMAIN_PAUSED_IOERROR: "ioerror",
    libvirt.VIR_DOMAIN_PAUSED_WATCHDOG: "watchdog",
    libvirt.VIR_DOMAIN_PAUSED_FROM_SNAPSHOT: "from-snapshot",
    libvirt.VIR_DOMAIN_PAUSED_SHUTTING_DOWN: "shutting-down",
    libvirt.VIR_DOMAIN_PAUSED_SNAPSHOT: "snapshot",
    libvirt.VIR_DOMAIN_PAUSED_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PAUSED_STARTING_UP: "starting-up",
    libvirt.VIR_DOMAIN_PAUSED_POSTCOPY: "postcopy",
    libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED: "postcopy-failed",
}
IOERROR = "ioerror"
ENOSPC = "enospc"


class ResumeFailed(libvirt_pools.PoolOperationFailed):
    """libvirt refused to resume the domain (its message is kept)."""

    reason = "ResumeFailed"


class NotPausedOnIOError(errors.HostStorageError):
    """The domain is no longer paused on an I/O error (resumed meanwhile, paused by an admin, gone)."""

    reason = "NotPausedOnIOError"


@dataclasses.dataclass(frozen=True)
class VmRecord:
    """One libvirt domain as the resume policy needs it."""

    uuid: str
    name: str
    state: str = "running"
    paused_reason: str = ""
    """For a paused domain: ``ioerror``, ``user``, ``migration``, ... (:data:`PAUSED_REASONS`)."""
    io_error: str = ""
    """``enospc`` when a disk reports no space (event reason or ``virDomainGetDiskErrors``), ``eio``
    for any other disk error, empty when no disk reports one."""
    disks: tuple[str, ...] = ()
    """Local paths of every disk source, backing chains included (normalised, lexical)."""
    unmatched: tuple[str, ...] = ()
    """Disk sources without a local path (network disks): never matched to a monitor."""
    paused_since: float | None = None
    """Wall-clock time the I/O-error pause was seen as an event; None when it was found by listing
    (paused before this process looked, or while it was not connected)."""
    pause_seq: int = 0
    """Counts the I/O-error pauses this process has seen of this domain: one resume per pause."""

    @property
    def paused_on_io_error(self) -> bool:
        return self.state == "paused" and self.paused_reason == IOERROR


# --------------------------------------------------------------------------------------------- XML


def _source_path(el: ET.Element, resolve_volume: Callable[[str, str], str | None] | None) -> tuple[str, str]:
    """(local path, "") or ("", unmatched description) for a disk or backingStore element."""
    src = el.find("source")
    if src is None:
        return "", ""
    kind = el.get("type", "file")
    if kind in ("file", "block", "dir"):
        path = src.get({"file": "file", "block": "dev", "dir": "dir"}[kind]) or ""
        return (os.path.normpath(path), "") if path else ("", "")
    if kind == "volume":
        pool, volume = src.get("pool") or "", src.get("volume") or ""
        vol_path = resolve_volume(pool, volume) if resolve_volume is not None and pool and volume else None
        return (os.path.normpath(vol_path), "") if vol_path else ("", f"volume:{pool}/{volume}")
    if kind == "network":
        host = src.find("host")
        where = host.get("name", "") if host is not None else ""
        return "", f"{src.get('protocol', 'network')}://{where}/{src.get('name', '')}"
    return "", f"{kind}:"


def disk_sources(
    xml: str, resolve_volume: Callable[[str, str], str | None] | None = None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(local paths, unmatched sources) of every disk of a domain XML, backing chains included."""
    root = ET.fromstring(xml)  # noqa: S314 - the XML comes from the local libvirtd, not from users
    paths: list[str] = []
    unmatched: list[str] = []
    for disk in root.iterfind("devices/disk"):
        for el in (disk, *disk.iter("backingStore")):
            path, other = _source_path(el, resolve_volume)
            if path and path not in paths:
                paths.append(path)
            elif other and other not in unmatched:
                unmatched.append(other)
    return tuple(paths), tuple(unmatched)


# ------------------------------------------------------------------------------------------- reading


def _is_no_domain(exc: libvirt.libvirtError) -> bool:
    return bool(exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN)


def _volume_resolver(conn: Any) -> Callable[[str, str], str | None]:
    def resolve(pool: str, volume: str) -> str | None:
        try:
            return str(conn.storagePoolLookupByName(pool).storageVolLookupByName(volume).path())
        except libvirt.libvirtError:
            return None

    return resolve


def _disk_error(dom: Any) -> str:
    try:
        errs = dom.diskErrors(0) or {}
    except libvirt.libvirtError:
        return ""
    codes = set(errs.values())
    if libvirt.VIR_DOMAIN_DISK_ERROR_NO_SPACE in codes:
        return ENOSPC
    return "eio" if libvirt.VIR_DOMAIN_DISK_ERROR_UNSPEC in codes else ""


def read_domain(conn: Any, dom: Any) -> VmRecord:
    """A fresh :class:`VmRecord` of ``dom`` (state, pause reason, disk error, disks); no history."""
    state, reason = dom.state(0)
    state_name = STATE_NAMES.get(state, f"state-{state}")
    paused = state == libvirt.VIR_DOMAIN_PAUSED
    paused_reason = PAUSED_REASONS.get(reason, f"reason-{reason}") if paused else ""
    io_error = _disk_error(dom) if paused else ""
    disks, unmatched = disk_sources(dom.XMLDesc(0), _volume_resolver(conn))
    return VmRecord(
        str(dom.UUIDString()), str(dom.name()), state_name, paused_reason, io_error, disks, unmatched
    )


def read_domains(conn: Any, flags: int) -> list[VmRecord]:
    """Every domain ``listAllDomains(flags)`` names, read (one that vanished meanwhile is skipped)."""
    out = []
    for dom in conn.listAllDomains(flags):
        try:
            out.append(read_domain(conn, dom))
        except libvirt.libvirtError as exc:
            if not _is_no_domain(exc):
                raise
    return out


# ------------------------------------------------------------------------------------------- tracker


ChangeListener = Callable[[], None]


@dataclasses.dataclass(frozen=True)
class _Note:
    at: float
    reason: str
    suspended: bool
    """A lifecycle SUSPENDED/IOERROR event (one per pause), not only I/O-error events (one per request)."""


def _shape(r: VmRecord) -> tuple[Any, ...]:
    """What the monitors' detail blocks and gauges show of a record: a change of it is news."""
    return (r.name, r.paused_on_io_error, r.io_error, r.disks, r.pause_seq)


class DomainTracker:
    """Every domain of one libvirt connection, kept current from its events. See the module docstring.

    ``layer`` is the started :class:`PoolLayer` or a callable returning it (called in the tracker's
    thread, so a slow first connect never blocks the caller of :meth:`start`).
    """

    def __init__(self, layer: libvirt_pools.PoolLayer | Callable[[], libvirt_pools.PoolLayer]) -> None:
        self._layer_source = layer
        self._layer = layer if isinstance(layer, libvirt_pools.PoolLayer) else None
        self._lock = threading.Lock()
        self._records: dict[str, VmRecord] = {}
        self._noted: dict[str, _Note] = {}
        """What events said about a domain since it was last read (consumed by the next read)."""
        self._version = 0
        self._notified = -1
        self._queue: collections.deque[str | None] = collections.deque()
        self._wake = threading.Condition(self._lock)
        self._listeners: list[ChangeListener] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.synced = threading.Event()
        """Set after the first full listing succeeded."""

    # -- public, any thread ---------------------------------------------------------------------------

    def add_change_listener(self, listener: ChangeListener) -> None:
        """Called (in the tracker's thread) whenever a record's pause state or disks changed: enqueue only."""
        with self._lock:
            self._listeners.append(listener)

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._queue.append(None)  # the first full listing
            self._thread = threading.Thread(target=self._run, name="libvirt-domains", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
            thread = self._thread
        layer = self._layer
        if layer is not None:
            layer.remove_listener(self._on_event)
            layer.remove_listener(self._on_reconnect)
        if thread is not None:
            thread.join(timeout)

    def records(self) -> list[VmRecord]:
        with self._lock:
            return sorted(self._records.values(), key=lambda r: r.name)

    def list_paused(self) -> list[VmRecord]:
        """The domains paused right now, read afresh from libvirt (the table is updated too)."""
        fresh = self._require_layer().call(
            "list paused domains", lambda conn: read_domains(conn, libvirt.VIR_CONNECT_LIST_DOMAINS_PAUSED)
        )
        merged = [self._merge(r) for r in fresh]
        self._changed()
        return merged

    def resume(self, uuid: str) -> None:
        """Resume ``uuid`` if it is still paused on an I/O error other than ENOSPC.

        Raises :class:`NotPausedOnIOError` (nothing done), :class:`ResumeFailed` (libvirt's message),
        ``LibvirtUnavailable`` or ``Timeout``.
        """
        layer = self._require_layer()

        def run(conn: Any) -> None:
            try:
                dom = conn.lookupByUUIDString(uuid)
                state, reason = dom.state(0)
            except libvirt.libvirtError as exc:
                if _is_no_domain(exc):
                    raise NotPausedOnIOError(f"domain {uuid} no longer exists") from None
                raise
            if state != libvirt.VIR_DOMAIN_PAUSED or reason != libvirt.VIR_DOMAIN_PAUSED_IOERROR:
                what = STATE_NAMES.get(state, str(state))
                if state == libvirt.VIR_DOMAIN_PAUSED:
                    what += f" ({PAUSED_REASONS.get(reason, reason)})"
                raise NotPausedOnIOError(f"domain {dom.name()} is {what}, not paused on an I/O error")
            if _disk_error(dom) == ENOSPC:
                raise NotPausedOnIOError(f"domain {dom.name()} is paused on ENOSPC, not resumed here")
            log.info("libvirt: resuming domain %s (paused on an I/O error)", dom.name())
            dom.resume()

        layer.call(f"resume domain {uuid}", run, failure=ResumeFailed)
        self._enqueue(uuid)

    # -- event intake (libvirt threads: record and enqueue only) --------------------------------------

    def _on_event(self, event: libvirt_pools.DomainEvent) -> None:
        suspended = (
            event.kind == "lifecycle"
            and event.event == libvirt.VIR_DOMAIN_EVENT_SUSPENDED
            and event.detail == libvirt.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR
        )
        io_pause = event.kind == "io-error" and event.action == libvirt.VIR_DOMAIN_EVENT_IO_ERROR_PAUSE
        with self._lock:
            if suspended or io_pause:
                old = self._noted.get(event.uuid)
                self._noted[event.uuid] = _Note(
                    at=min(old.at, event.at) if old is not None else event.at,
                    reason=event.reason or (old.reason if old is not None else ""),
                    suspended=suspended or (old is not None and old.suspended),
                )
            self._queue.append(event.uuid)
            self._wake.notify()

    def _on_reconnect(self) -> None:
        with self._lock:
            self._queue.append(None)
            self._wake.notify()

    def _enqueue(self, uuid: str) -> None:
        with self._lock:
            self._queue.append(uuid)
            self._wake.notify()

    # -- the tracker's thread -------------------------------------------------------------------------

    def _require_layer(self) -> libvirt_pools.PoolLayer:
        if self._layer is None:
            raise libvirt_pools.LibvirtUnavailable("the domain tracker has not connected to libvirt yet")
        return self._layer

    def _run(self) -> None:
        if self._layer is None:
            source = self._layer_source
            assert callable(source)
            try:
                self._layer = source()
            except Exception:
                log.exception("libvirt domains: cannot get the libvirt connection; VMs are not tracked")
                return
        self._layer.add_domain_listener(self._on_event)
        self._layer.add_reconnect_listener(self._on_reconnect)
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                items = list(self._queue)
                self._queue.clear()
            try:
                if None in items:
                    self._resync()
                else:
                    for uuid in dict.fromkeys(i for i in items if i is not None):
                        self._refresh(uuid)
            except (errors.HostStorageError, libvirt.libvirtError) as exc:
                # libvirtd away: the reconnect listener lists everything again once it is back.
                log.warning("libvirt domains: cannot read domains: %s", exc)
            except Exception:
                log.exception("libvirt domains: update failed")
            self._changed()

    def _resync(self) -> None:
        fresh = self._require_layer().call("list domains", lambda conn: read_domains(conn, 0))
        seen = {r.uuid for r in fresh}
        for record in fresh:
            self._merge(record)
        with self._lock:
            for uuid in [u for u in self._records if u not in seen]:
                del self._records[uuid]
                self._version += 1
        self.synced.set()
        log.debug("libvirt domains: %d domains listed", len(fresh))

    def _refresh(self, uuid: str) -> None:
        layer = self._require_layer()

        def run(conn: Any) -> VmRecord | None:
            try:
                return read_domain(conn, conn.lookupByUUIDString(uuid))
            except libvirt.libvirtError as exc:
                if _is_no_domain(exc):
                    return None  # stopped transient domain or undefined
                raise

        record = layer.call(f"read domain {uuid}", run)
        if record is None:
            with self._lock:
                if self._records.pop(uuid, None) is not None:
                    self._version += 1
                self._noted.pop(uuid, None)
            return
        self._merge(record)

    def _merge(self, fresh: VmRecord) -> VmRecord:
        """Put a freshly read record, keeping this process's history of the domain's pauses.

        A pause is new when the domain was not paused on an I/O error at the last read, or when libvirt
        announced a suspend on an I/O error since then (paused, resumed and paused again between two
        reads). Its time is the first event's; a pause found by reading alone has none.
        """
        with self._lock:
            old = self._records.get(fresh.uuid)
            note = self._noted.pop(fresh.uuid, None)
            seq = old.pause_seq if old is not None else 0
            since = old.paused_since if old is not None else None
            io_error = fresh.io_error
            if fresh.paused_on_io_error:
                was_paused = old is not None and old.paused_on_io_error
                new_pause = not was_paused or (note is not None and note.suspended)
                if new_pause:
                    seq += 1
                    since = note.at if note is not None else None
                # diskErrors may have been cleared by a read after the event; ENOSPC sticks to its pause.
                same_enospc = not new_pause and old is not None and old.io_error == ENOSPC
                if (note is not None and note.reason == ENOSPC) or same_enospc:
                    io_error = ENOSPC
            else:
                since = None
            record = dataclasses.replace(fresh, pause_seq=seq, paused_since=since, io_error=io_error)
            if old is None or _shape(old) != _shape(record):
                self._version += 1
            self._records[fresh.uuid] = record
            return record

    def _changed(self) -> None:
        with self._lock:
            if self._version == self._notified:
                return
            self._notified = self._version
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener()
            except Exception:
                log.exception("libvirt domains: change listener failed")

