"""libvirt storage pools: the event loop, one keepalive connection that heals itself, pool XML, lifecycle.

Why this module exists: every StoragePool on a node goes through one libvirt connection (as VDSM does),
and that connection must survive libvirtd restarts without the agent noticing more than an outage in
status. The pieces:

- :func:`start_event_loop` registers libvirt's default event implementation and runs it in a daemon
  thread. It must run before any connection is opened in the process (keepalive, close callbacks and
  domain/pool events are all dispatched by that loop); :class:`PoolLayer` calls it itself.
- :class:`PoolLayer` owns the connection to one URI: keepalive (a dead daemon is noticed within
  ``interval * (count + 1)`` seconds), a close callback that starts reconnecting with backoff, and after
  each reconnect a call to every ``on_reconnect`` listener so all pools are reconciled again. Pool
  lifecycle and refresh events call every ``on_pool_event`` listener with the pool's name; domain
  lifecycle and I/O-error events (registered on every connection, so a reconnect re-registers them) call
  every domain listener with a :class:`DomainEvent` (:mod:`hostlib.libvirt_domains` builds on them).
  Listeners run in the event-loop thread or the reconnect thread: they must only enqueue work, never
  block. :meth:`PoolLayer.call` lends the same bounded call to sibling modules of this layer.
- :class:`PoolDefinition` is the typed pool: :func:`build_pool_xml` turns it into XML with
  ``xml.etree.ElementTree`` (never string concatenation, so a ``<`` or ``&`` in a field is data, not
  markup) and :func:`parse_pool_xml` reads libvirt's XML back into the same type for comparison.

Every call into libvirt runs in a short-lived daemon thread with a time bound (:class:`errors.Timeout`
when it expires): a healthy libvirtd answers in milliseconds, and keepalive closes a connection to a hung
one, but nothing here may block a worker forever.

What this layer never does: ``virStoragePoolDelete`` or any volume deletion. Teardown is destroy (stop)
and undefine only; volumes and files stay on disk. Building a pool never formats: ``build`` is called
without ``OVERWRITE``/``NO_OVERWRITE`` flags, which for dir, fs and netfs pools only creates the target
directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import secrets as pysecrets
import shutil
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any, TypeVar

import libvirt

from hostlib import errors, fsops

log = logging.getLogger(__name__)

T = TypeVar("T")

POOL_TYPES = ("dir", "fs", "netfs", "iscsi-direct", "iscsi", "logical")
STATE_NAMES = {
    0: "inactive",
    1: "building",
    2: "running",
    3: "degraded",
    4: "inaccessible",
}
# A healthy libvirtd answers a pool call in milliseconds; starting an fs/netfs pool runs mount(8) and an
# iscsi-direct pool logs in over the network, so the bound is generous but finite.
DEFAULT_CALL_TIMEOUT = 60.0
# Keepalive: a ping every 5 s, 3 unanswered -> the connection is closed and we reconnect (about 20 s).
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3
BACKOFF_INITIAL = 0.25
BACKOFF_MAX = 10.0
SECRET_USAGE_PREFIX = "hoststorage-pool-"  # noqa: S105 - a name prefix, not a password


class LibvirtUnavailable(errors.Waiting):
    """libvirtd cannot be reached right now; the layer keeps reconnecting. A pool waits (Pending)."""

    reason = "LibvirtUnavailable"


class PoolOperationFailed(errors.HostStorageError):
    """A pool verb failed in libvirt; subclasses name the verb as the condition reason."""

    reason = "LibvirtError"


class DefineFailed(PoolOperationFailed):
    reason = "DefineFailed"


class BuildFailed(PoolOperationFailed):
    reason = "BuildFailed"


class StartFailed(PoolOperationFailed):
    reason = "StartFailed"


class AutostartFailed(PoolOperationFailed):
    reason = "AutostartFailed"


class RefreshFailed(PoolOperationFailed):
    reason = "RefreshFailed"


class DestroyFailed(PoolOperationFailed):
    reason = "DestroyFailed"


class UndefineFailed(PoolOperationFailed):
    reason = "UndefineFailed"


class SecretFailed(PoolOperationFailed):
    reason = "SecretFailed"


# ---------------------------------------------------------------------------------------------------
# The event loop


_loop_lock = threading.Lock()
_loop_thread: threading.Thread | None = None


def _run_event_loop() -> None:
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except libvirt.libvirtError as exc:  # pragma: no cover - libvirt's loop only fails on OOM
            log.error("libvirt event loop iteration failed: %s", exc)
            time.sleep(0.1)


def _quiet_error_handler(_ctx: object, _err: object) -> None:
    # libvirt's default handler prints every error to stderr; errors are raised and logged by us instead.
    return None


def start_event_loop() -> threading.Thread:
    """Register libvirt's default event loop and run it in a daemon thread (once per process)."""
    global _loop_thread  # noqa: PLW0603 - one event loop per process is libvirt's own rule
    with _loop_lock:
        if _loop_thread is None:
            libvirt.registerErrorHandler(_quiet_error_handler, None)
            libvirt.virEventRegisterDefaultImpl()
            _loop_thread = threading.Thread(target=_run_event_loop, name="libvirt-events", daemon=True)
            _loop_thread.start()
            log.debug("libvirt event loop started")
        return _loop_thread


# ---------------------------------------------------------------------------------------------------
# Pool XML


@dataclasses.dataclass(frozen=True)
class PoolDefinition:
    """A libvirt storage pool as hoststorage defines it; only the fields hoststorage manages."""

    name: str
    type: str
    target_path: str | None = None
    source_host: str | None = None
    source_port: int | None = None
    source_dir: str | None = None
    source_devices: tuple[str, ...] = ()
    """Device paths (fs, logical) or the target IQN (iscsi, iscsi-direct)."""
    source_name: str | None = None
    """The volume group of a logical pool."""
    source_format: str | None = None
    initiator_iqn: str | None = None
    auth_username: str | None = None
    auth_secret_usage: str | None = None
    uuid: str | None = None

    def comparable(self) -> PoolDefinition:
        """Without the UUID: what must match between the spec and libvirt's definition."""
        return dataclasses.replace(self, uuid=None)


def _host_attr(host: str) -> str:
    # Validators hand out IPv6 in brackets (mount syntax); libvirt wants the bare address.
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def build_pool_xml(defn: PoolDefinition) -> str:
    """The pool's XML for ``virStoragePoolDefineXML``, built with ElementTree."""
    if defn.type not in POOL_TYPES:
        raise errors.InvalidSpec(f"unknown pool type {defn.type!r}")
    pool = ET.Element("pool", {"type": defn.type})
    ET.SubElement(pool, "name").text = defn.name
    if defn.uuid:
        ET.SubElement(pool, "uuid").text = defn.uuid
    source = ET.SubElement(pool, "source")
    if defn.source_host is not None:
        host_attrs = {"name": _host_attr(defn.source_host)}
        if defn.source_port is not None:
            host_attrs["port"] = str(defn.source_port)
        ET.SubElement(source, "host", host_attrs)
    for device in defn.source_devices:
        ET.SubElement(source, "device", {"path": device})
    if defn.source_dir is not None:
        ET.SubElement(source, "dir", {"path": defn.source_dir})
    if defn.auth_username is not None and defn.auth_secret_usage is not None:
        auth = ET.SubElement(source, "auth", {"type": "chap", "username": defn.auth_username})
        ET.SubElement(auth, "secret", {"usage": defn.auth_secret_usage})
    if defn.source_name is not None:
        ET.SubElement(source, "name").text = defn.source_name
    if defn.source_format is not None:
        ET.SubElement(source, "format", {"type": defn.source_format})
    if defn.initiator_iqn is not None:
        initiator = ET.SubElement(source, "initiator")
        ET.SubElement(initiator, "iqn", {"name": defn.initiator_iqn})
    if defn.target_path is not None:
        target = ET.SubElement(pool, "target")
        ET.SubElement(target, "path").text = defn.target_path
    return ET.tostring(pool, encoding="unicode")


def parse_pool_xml(text: str) -> PoolDefinition:
    """libvirt's pool XML -> :class:`PoolDefinition` (fields hoststorage does not manage are dropped)."""
    root = ET.fromstring(text)  # noqa: S314 - the XML comes from the local libvirtd, not from users
    if root.tag != "pool":
        raise ValueError(f"not a pool definition: <{root.tag}>")
    source = root.find("source")
    host = port = sdir = sname = sformat = initiator = user = usage = None
    devices: list[str] = []
    if source is not None:
        host_el = source.find("host")
        if host_el is not None:
            host = host_el.get("name")
            port_text = host_el.get("port")
            port = int(port_text) if port_text else None
        devices = [d.get("path", "") for d in source.findall("device")]
        dir_el = source.find("dir")
        sdir = dir_el.get("path") if dir_el is not None else None
        name_el = source.find("name")
        sname = name_el.text if name_el is not None else None
        fmt_el = source.find("format")
        sformat = fmt_el.get("type") if fmt_el is not None else None
        iqn_el = source.find("initiator/iqn")
        initiator = iqn_el.get("name") if iqn_el is not None else None
        auth_el = source.find("auth")
        if auth_el is not None:
            user = auth_el.get("username")
            secret_el = auth_el.find("secret")
            usage = secret_el.get("usage") if secret_el is not None else None
    target_el = root.find("target/path")
    uuid_el = root.find("uuid")
    return PoolDefinition(
        name=root.findtext("name") or "",
        type=root.get("type", ""),
        target_path=target_el.text if target_el is not None else None,
        source_host=host,
        source_port=port,
        source_dir=sdir,
        source_devices=tuple(devices),
        source_name=sname,
        source_format=sformat,
        initiator_iqn=initiator,
        auth_username=user,
        auth_secret_usage=usage,
        uuid=uuid_el.text if uuid_el is not None else None,
    )


def build_secret_xml(usage: str, description: str, uuid: str | None = None) -> str:
    secret = ET.Element("secret", {"ephemeral": "no", "private": "yes"})
    if uuid:
        # Redefining a secret of the same usage must keep its UUID, or libvirt refuses.
        ET.SubElement(secret, "uuid").text = uuid
    ET.SubElement(secret, "description").text = description
    usage_el = ET.SubElement(secret, "usage", {"type": "iscsi"})
    ET.SubElement(usage_el, "target").text = usage
    return ET.tostring(secret, encoding="unicode")


# ---------------------------------------------------------------------------------------------------
# Observation


@dataclasses.dataclass(frozen=True)
class PoolObserved:
    """What libvirt says about one pool, right now."""

    name: str
    uuid: str
    state: str
    active: bool
    capacity: int
    allocation: int
    available: int
    volumes: int | None
    """None while the pool is not running (libvirt lists volumes of active pools only)."""
    autostart: bool
    persistent: bool
    definition: PoolDefinition
    """The persistent (inactive) definition, or the live one for a transient pool."""

    def to_detail(self) -> dict[str, Any]:
        return {
            "libvirtName": self.name,
            "uuid": self.uuid,
            "state": self.state,
            "capacity": self.capacity,
            "allocation": self.allocation,
            "available": self.available,
            "volumes": self.volumes,
            "autostart": self.autostart,
            "persistent": self.persistent,
            "targetPath": self.definition.target_path,
            "type": self.definition.type,
        }


def _is_no_pool(exc: libvirt.libvirtError) -> bool:
    return bool(exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL)


def _observe_pool(pool: Any) -> PoolObserved:
    state, capacity, allocation, available = pool.info()
    active = bool(pool.isActive())
    persistent = bool(pool.isPersistent())
    flags = libvirt.VIR_STORAGE_XML_INACTIVE if persistent else 0
    definition = parse_pool_xml(pool.XMLDesc(flags))
    return PoolObserved(
        name=pool.name(),
        uuid=pool.UUIDString(),
        state=STATE_NAMES.get(state, f"unknown({state})"),
        active=active,
        capacity=int(capacity),
        allocation=int(allocation),
        available=int(available),
        volumes=int(pool.numOfVolumes()) if active else None,
        autostart=bool(pool.autostart()),
        persistent=persistent,
        definition=definition,
    )


# ---------------------------------------------------------------------------------------------------
# The connection


PoolEventListener = Callable[[str], None]
ReconnectListener = Callable[[], None]


@dataclasses.dataclass(frozen=True)
class DomainEvent:
    """One domain event as the layer hands it to listeners (built in the event-loop thread)."""

    uuid: str
    name: str
    kind: str
    """``lifecycle`` or ``io-error``."""
    at: float
    """Wall-clock time the event reached this process."""
    event: int = -1
    """lifecycle: ``VIR_DOMAIN_EVENT_*`` (SUSPENDED, RESUMED, STOPPED, ...)."""
    detail: int = -1
    """lifecycle: the event's detail (SUSPENDED_IOERROR, SUSPENDED_PAUSED, ...)."""
    src_path: str = ""
    """io-error: the failing disk's source path."""
    dev_alias: str = ""
    action: int = -1
    """io-error: ``VIR_DOMAIN_EVENT_IO_ERROR_*`` (PAUSE, REPORT, NONE)."""
    reason: str = ""
    """io-error: qemu's reason, ``enospc``, ``eio``, ``eperm`` or ``eother``."""


DomainEventListener = Callable[[DomainEvent], None]


@dataclasses.dataclass(frozen=True)
class Outage:
    since: float
    """Wall-clock time (``time.time()``) when the connection was lost or first failed."""
    error: str


def _dispatch(listeners: list[Callable[[Any], None]], arg: Any, what: str) -> None:
    for listener in listeners:
        try:
            listener(arg)
        except Exception:
            log.exception("libvirt event listener failed for %s", what)


class PoolLayer:
    """One libvirt connection with keepalive and reconnect, and the pool verbs on top of it.

    Thread-safe: verbs may be called from any worker thread. ``connect()`` must be called before use.
    """

    def __init__(
        self,
        uri: str = "qemu:///system",
        *,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        keepalive: tuple[int, int] = (KEEPALIVE_INTERVAL, KEEPALIVE_COUNT),
        backoff: tuple[float, float] = (BACKOFF_INITIAL, BACKOFF_MAX),
    ) -> None:
        self.uri = uri
        self.call_timeout = call_timeout
        self.keepalive = keepalive
        self.backoff = backoff
        self._lock = threading.Lock()
        self._conn: Any = None
        self._callback_ids: list[tuple[str, int]] = []
        self._dead: list[tuple[Any, list[tuple[str, int]]]] = []
        """Lost connections, closed by the reconnect thread (each holds descriptors until closed)."""
        self._pool_listeners: list[PoolEventListener] = []
        self._domain_listeners: list[DomainEventListener] = []
        self._reconnect_listeners: list[ReconnectListener] = []
        self._outage: Outage | None = Outage(time.time(), "not connected yet")
        self._kick = threading.Event()
        self._stopping = threading.Event()
        self._reconnector: threading.Thread | None = None
        self._last_refresh: dict[str, float] = {}
        # Fingerprints of secret values this process has set (keyed, never stored or logged), so an
        # unchanged CHAP password is not written again on every reconcile.
        self._secret_key = pysecrets.token_bytes(32)
        self._secret_prints: dict[str, bytes] = {}
        self.reconnects = 0

    # -- listeners ------------------------------------------------------------------------------------

    def add_pool_listener(self, listener: PoolEventListener) -> None:
        """Called with the pool name on every lifecycle or refresh event (event-loop thread: enqueue only)."""
        with self._lock:
            self._pool_listeners.append(listener)

    def add_reconnect_listener(self, listener: ReconnectListener) -> None:
        """Called after every successful reconnect (reconnect thread: enqueue only)."""
        with self._lock:
            self._reconnect_listeners.append(listener)

    def add_domain_listener(self, listener: DomainEventListener) -> None:
        """Called with a :class:`DomainEvent` on every domain lifecycle and I/O-error event (event-loop
        thread: enqueue only). The events are registered on every connection, reconnects included."""
        with self._lock:
            self._domain_listeners.append(listener)

    def remove_listener(self, listener: Callable[..., None]) -> None:
        """Forget ``listener`` (compared by equality: a bound method read twice is two objects)."""
        with self._lock:
            self._pool_listeners = [x for x in self._pool_listeners if x != listener]
            self._domain_listeners = [x for x in self._domain_listeners if x != listener]
            self._reconnect_listeners = [x for x in self._reconnect_listeners if x != listener]

    # -- connection management ------------------------------------------------------------------------

    def connect(self) -> bool:
        """Start the event loop, try to connect once (bounded), then keep reconnecting in the background.

        Returns whether the first attempt connected; failure is not an error (status shows the outage).
        """
        start_event_loop()
        connected = False
        try:
            self._connect()
            connected = True
        except LibvirtUnavailable as exc:
            log.warning("libvirt %s: not reachable at start-up, will retry: %s", self.uri, exc.message)
        with self._lock:
            if self._reconnector is None:
                self._reconnector = threading.Thread(
                    target=self._reconnect_loop, name="libvirt-reconnect", daemon=True
                )
                self._reconnector.start()
        if not connected:
            self._kick.set()
        return connected

    def close(self) -> None:
        """Deregister events and close the connection (the event loop thread stays, as libvirt requires)."""
        self._stopping.set()
        self._kick.set()
        with self._lock:
            conn, ids = self._conn, self._callback_ids
            self._conn, self._callback_ids = None, []
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError, errors.HostStorageError):
                self._bounded("close", lambda: self._close_conn(conn, ids), timeout=5.0)
        self._close_dead()

    @staticmethod
    def _close_conn(conn: Any, ids: list[tuple[str, int]]) -> None:
        for kind, cid in ids:
            with contextlib.suppress(libvirt.libvirtError):
                if kind == "domain":
                    conn.domainEventDeregisterAny(cid)
                else:
                    conn.storagePoolEventDeregisterAny(cid)
        with contextlib.suppress(libvirt.libvirtError):
            conn.unregisterCloseCallback()
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._conn is not None

    @property
    def outage(self) -> Outage | None:
        """Since when and why libvirt is unreachable; None while connected."""
        with self._lock:
            return self._outage

    def _connect(self) -> None:
        abandoned = threading.Event()

        def open_and_register() -> tuple[Any, list[tuple[str, int]]]:
            conn = libvirt.open(self.uri)
            if abandoned.is_set():
                # The caller gave up waiting (a hung daemon that came back late): this connection
                # would register a second set of callbacks, so it is closed instead of used.
                with contextlib.suppress(libvirt.libvirtError):
                    conn.close()
                raise libvirt.libvirtError("connection abandoned after a timeout")
            try:
                conn.setKeepAlive(*self.keepalive)
                conn.registerCloseCallback(self._on_close, None)
                ids = [
                    ("pool", conn.storagePoolEventRegisterAny(
                        None, libvirt.VIR_STORAGE_POOL_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
                    )),
                    ("pool", conn.storagePoolEventRegisterAny(
                        None, libvirt.VIR_STORAGE_POOL_EVENT_ID_REFRESH, self._on_refresh, None
                    )),
                    ("domain", conn.domainEventRegisterAny(
                        None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_domain_lifecycle, None
                    )),
                    ("domain", conn.domainEventRegisterAny(
                        None, libvirt.VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON, self._on_domain_io_error, None
                    )),
                ]
            except libvirt.libvirtError:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.close()
                raise
            return conn, ids

        try:
            conn, ids = self._bounded("open", open_and_register, timeout=min(self.call_timeout, 15.0))
        except libvirt.libvirtError as exc:
            self._set_outage(str(exc))
            raise LibvirtUnavailable(f"cannot connect to libvirt {self.uri}: {exc}") from exc
        except errors.Timeout as exc:
            abandoned.set()
            self._set_outage(exc.message)
            raise LibvirtUnavailable(f"connecting to libvirt {self.uri} timed out") from exc
        with self._lock:
            self._conn, self._callback_ids = conn, ids
            self._outage = None
        log.info("libvirt %s: connected (keepalive %ss x %s)", self.uri, *self.keepalive)

    def _set_outage(self, error: str) -> None:
        with self._lock:
            if self._outage is None:
                self._outage = Outage(time.time(), error)
            else:
                self._outage = dataclasses.replace(self._outage, error=error)

    def _lost(self, conn: Any, why: str) -> None:
        with self._lock:
            if self._conn is not conn or conn is None:
                return
            # Closed in the reconnect thread, not here (this may be libvirt's event-loop thread): a lost
            # connection left open keeps its descriptors and callbacks, one set per reconnect (the chaos
            # soak saw an agent's fds grow with every libvirtd restart).
            self._dead.append((conn, self._callback_ids))
            self._conn, self._callback_ids = None, []
            if self._outage is None:
                self._outage = Outage(time.time(), why)
        log.warning("libvirt %s: connection lost (%s); reconnecting", self.uri, why)
        self._kick.set()

    def _on_close(self, conn: Any, reason: int, _opaque: object) -> None:
        names = {
            libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "error",
            libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "libvirtd closed the connection",
            libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive timeout",
            libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "closed by client",
        }
        with self._lock:
            current = self._conn
        # The close callback's conn is a new Python wrapper of the same virConnectPtr.
        if current is not None and not self._stopping.is_set():
            self._lost(current, names.get(reason, f"reason {reason}"))

    def _close_dead(self) -> None:
        with self._lock:
            dead, self._dead = self._dead, []
        for conn, ids in dead:
            with contextlib.suppress(libvirt.libvirtError, errors.HostStorageError):
                self._bounded("close", functools.partial(self._close_conn, conn, ids), timeout=5.0)

    def _reconnect_loop(self) -> None:
        while not self._stopping.is_set():
            self._kick.wait()
            self._kick.clear()
            self._close_dead()
            delay = self.backoff[0]
            while not self._stopping.is_set() and not self.connected:
                try:
                    self._connect()
                except LibvirtUnavailable as exc:
                    log.debug("libvirt %s: reconnect failed, next try in %.2fs: %s", self.uri, delay, exc)
                    if self._stopping.wait(delay):
                        return
                    delay = min(delay * 2, self.backoff[1])
                    continue
                self.reconnects += 1
                with self._lock:
                    listeners = list(self._reconnect_listeners)
                for listener in listeners:
                    try:
                        listener()
                    except Exception:
                        log.exception("libvirt %s: reconnect listener failed", self.uri)

    # -- events (event-loop thread: enqueue only) ----------------------------------------------------

    def _notify(self, pool: Any) -> None:
        try:
            name = pool.name()
        except libvirt.libvirtError:
            return
        with self._lock:
            listeners = list(self._pool_listeners)
        _dispatch(listeners, name, f"pool {name}")

    def _on_lifecycle(self, _conn: Any, pool: Any, event: int, _detail: int, _opaque: object) -> None:
        log.debug("libvirt pool event %s for %s", event, pool.name())
        self._notify(pool)

    def _on_refresh(self, _conn: Any, pool: Any, _opaque: object) -> None:
        self._notify(pool)

    def _notify_domain(self, dom: Any, kind: str, **fields: Any) -> None:
        try:
            # Both are answered from the client-side handle: no call to libvirtd in the event thread.
            event = DomainEvent(str(dom.UUIDString()), str(dom.name()), kind, time.time(), **fields)
        except libvirt.libvirtError:
            return
        with self._lock:
            listeners = list(self._domain_listeners)
        _dispatch(listeners, event, f"domain {event.name}")

    def _on_domain_lifecycle(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: object) -> None:
        self._notify_domain(dom, "lifecycle", event=int(event), detail=int(detail))

    def _on_domain_io_error(
        self, _conn: Any, dom: Any, src_path: str, dev_alias: str, action: int, reason: str, _opaque: object
    ) -> None:
        self._notify_domain(dom, "io-error", src_path=str(src_path or ""), dev_alias=str(dev_alias or ""),
                            action=int(action), reason=str(reason or ""))

    # -- bounded calls --------------------------------------------------------------------------------

    def _bounded(self, what: str, fn: Callable[[], T], *, timeout: float | None = None) -> T:
        box: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                box["result"] = fn()
            except BaseException as exc:
                box["error"] = exc
            finally:
                done.set()

        limit = self.call_timeout if timeout is None else timeout
        worker = threading.Thread(target=run, name=f"libvirt-{what}", daemon=True)
        worker.start()
        if not done.wait(limit):
            raise errors.Timeout(f"libvirt {what} did not answer within {limit:g}s")
        if "error" in box:
            raise box["error"]
        result: T = box["result"]
        return result

    def _call(
        self, what: str, fn: Callable[[Any], T], *, failure: type[PoolOperationFailed] = PoolOperationFailed
    ) -> T:
        """Run ``fn(conn)`` bounded; connection-level failures become LibvirtUnavailable."""
        with self._lock:
            conn = self._conn
            outage = self._outage
        if conn is None:
            detail = (
                f" since {time.strftime('%H:%M:%S', time.localtime(outage.since))}: {outage.error}"
                if (outage)
                else ""
            )
            raise LibvirtUnavailable(f"libvirt {self.uri} is not reachable{detail}")
        try:
            return self._bounded(what, lambda: fn(conn))
        except libvirt.libvirtError as exc:
            if not self._alive(conn):
                self._lost(conn, str(exc))
                raise LibvirtUnavailable(f"libvirt {self.uri} went away during {what}: {exc}") from exc
            if _is_no_pool(exc):
                raise errors.NotFound(f"libvirt {what}: {exc.get_error_message()}") from exc
            raise failure(f"libvirt {what}: {exc.get_error_message()}") from exc

    def call(
        self, what: str, fn: Callable[[Any], T], *, failure: type[PoolOperationFailed] = PoolOperationFailed
    ) -> T:
        """``fn(conn)`` on this layer's connection, bounded, for sibling modules (domains).

        A lost daemon raises :class:`LibvirtUnavailable` (and starts the reconnect), a timeout
        :class:`errors.Timeout`, any other libvirt error ``failure`` with libvirt's message.
        """
        return self._call(what, fn, failure=failure)

    def _alive(self, conn: Any) -> bool:
        try:
            return bool(self._bounded("isAlive", conn.isAlive, timeout=5.0))
        except (libvirt.libvirtError, errors.Timeout):
            return False

    # -- pools ----------------------------------------------------------------------------------------

    def observe(self, name: str) -> PoolObserved | None:
        """The pool named ``name`` as libvirt sees it, or None when there is no such pool."""

        def run(conn: Any) -> PoolObserved | None:
            try:
                pool = conn.storagePoolLookupByName(name)
                observed = _observe_pool(pool)
                if observed.active:
                    # A running pool first seen now counts as fresh: the periodic refresh starts from here.
                    self._last_refresh.setdefault(name, time.monotonic())
                return observed
            except libvirt.libvirtError as exc:
                # A pool undefined between lookup and info is as good as absent.
                if _is_no_pool(exc):
                    return None
                raise

        return self._call(f"observe pool {name}", run)

    def define(self, defn: PoolDefinition) -> str:
        """Define (or redefine, same name and UUID) a persistent pool; returns its UUID."""
        xml = build_pool_xml(defn)
        log.info("libvirt: defining %s pool %s", defn.type, defn.name)
        return self._call(
            f"define pool {defn.name}",
            lambda conn: str(conn.storagePoolDefineXML(xml, 0).UUIDString()),
            failure=DefineFailed,
        )

    def _pool_verb(
        self, what: str, name: str, failure: type[PoolOperationFailed], fn: Callable[[Any], T]
    ) -> T:
        return self._call(
            f"{what} pool {name}",
            lambda conn: fn(conn.storagePoolLookupByName(name)),
            failure=failure,
        )

    def build(self, name: str) -> None:
        """Create the pool's target directory. No flags: libvirt never formats a device here."""
        log.info("libvirt: building pool %s (no format)", name)
        self._pool_verb("build", name, BuildFailed, lambda p: p.build(0))

    def start(self, name: str) -> None:
        log.info("libvirt: starting pool %s", name)
        self._pool_verb("start", name, StartFailed, lambda p: p.create(0))
        self._last_refresh[name] = time.monotonic()

    def set_autostart(self, name: str, autostart: bool) -> None:
        log.info("libvirt: autostart of pool %s -> %s", name, autostart)
        self._pool_verb("autostart", name, AutostartFailed, lambda p: p.setAutostart(1 if autostart else 0))

    def refresh(self, name: str) -> None:
        self._pool_verb("refresh", name, RefreshFailed, lambda p: p.refresh(0))
        self._last_refresh[name] = time.monotonic()

    def seconds_since_refresh(self, name: str) -> float | None:
        """Seconds since this process last started or refreshed ``name`` (None: never)."""
        last = self._last_refresh.get(name)
        return None if last is None else time.monotonic() - last

    def destroy(self, name: str) -> None:
        """Stop the pool (unmount / log out). Volumes and data stay."""
        log.info("libvirt: destroying (stopping) pool %s", name)
        self._pool_verb("destroy", name, DestroyFailed, lambda p: p.destroy())

    def undefine(self, name: str) -> None:
        """Forget the pool's definition. Never ``delete``: the target and its volumes stay on disk."""
        log.info("libvirt: undefining pool %s", name)
        self._pool_verb("undefine", name, UndefineFailed, lambda p: p.undefine())
        self._last_refresh.pop(name, None)

    # -- secrets --------------------------------------------------------------------------------------

    def secret_uuid(self, usage: str) -> str | None:
        """The UUID of the iscsi-usage secret ``usage``, or None."""

        def run(conn: Any) -> str | None:
            try:
                return str(conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_ISCSI, usage).UUIDString())
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_SECRET:
                    return None
                raise

        return self._call(f"look up secret {usage}", run, failure=SecretFailed)

    def set_secret(self, usage: str, description: str, value: bytes) -> bool:
        """Define the iscsi secret ``usage`` if needed and set its value; returns whether it was new.

        The value is never logged; this process remembers only a keyed fingerprint to skip rewrites. A
        private secret cannot be read back, so a new process writes the value once more: that rewrite
        of a possibly equal value is not reported as a change.
        """
        fingerprint = hashlib.blake2b(value, key=self._secret_key, digest_size=16).digest()
        existing = self.secret_uuid(usage)
        if existing is not None and self._secret_prints.get(usage) == fingerprint:
            return False
        xml = build_secret_xml(usage, description, existing)

        def run(conn: Any) -> None:
            secret = conn.secretDefineXML(xml, 0)
            secret.setValue(value, 0)

        self._call(f"set secret {usage}", run, failure=SecretFailed)
        self._secret_prints[usage] = fingerprint
        log.info("libvirt: secret %s set (value not logged)", usage)
        return existing is None

    def undefine_secret(self, usage: str) -> bool:
        def run(conn: Any) -> bool:
            try:
                conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_ISCSI, usage).undefine()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_SECRET:
                    return False
                raise
            return True

        self._secret_prints.pop(usage, None)
        return self._call(f"undefine secret {usage}", run, failure=SecretFailed)


def _kernel_module_available(
    module: str, *, sys_root: str = "/sys", modules_root: str = "/lib/modules"
) -> bool:
    """Loaded, built in, or installed as a loadable module for the running kernel."""
    if os.path.isdir(os.path.join(sys_root, "module", module)):
        return True
    release = os.uname().release
    for index in ("modules.builtin", "modules.dep"):
        path = os.path.join(modules_root, release, index)
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                if any(f"/{module}.ko" in line for line in f):
                    return True
        except OSError:
            continue
    return False


def device_mapper_available(*, misc: str = "/proc/misc") -> bool:
    """The kernel has device-mapper now (``/proc/misc`` lists it) or can load it. A
    ``/dev/mapper/control`` node alone proves nothing: lvm2's packages create it on kernels without
    the driver, and lvcreate then fails half-way."""
    try:
        with open(misc, encoding="ascii", errors="replace") as f:
            if any(line.split()[-1:] == ["device-mapper"] for line in f):
                return True
    except OSError:
        pass
    return _kernel_module_available("dm_mod")


def _filesystem_available(fstype: str) -> bool:
    try:
        with open("/proc/filesystems", encoding="ascii", errors="replace") as f:
            if any(line.split()[-1:] == [fstype] for line in f):
                return True
    except OSError:
        return True  # cannot tell: let mount(8) decide and report
    return _kernel_module_available(fstype)


def preflight(pool_type: str, source_format: str | None = None) -> None:
    """Refuse, before anything is defined, a pool this host cannot run (``Unsupported``).

    iscsi pools need the kernel's iSCSI initiator (iscsi_tcp) and iscsiadm; logical pools need
    device-mapper (the lvm2 tools are libvirtd's, on the node: the agent's image does not carry them,
    and without them libvirt's own start error is reported); netfs pools need the NFS client (nfs) or FUSE and
    mount.glusterfs (glusterfs). dir, fs and iscsi-direct (libiscsi in userspace) need nothing beyond
    libvirtd; their own failures surface from libvirt with its message.
    """
    if pool_type == "netfs" and source_format == "nfs" and not _filesystem_available("nfs"):
        raise errors.Unsupported(
            "netfs pools with format nfs need the kernel NFS client, and this kernel has none "
            "(nfs is neither in /proc/filesystems nor installed as a module)"
        )
    if pool_type == "netfs" and source_format == "glusterfs":
        if not os.path.exists("/dev/fuse"):
            raise errors.Unsupported("netfs pools with format glusterfs need FUSE, and there is no /dev/fuse")
        if shutil.which("mount.glusterfs") is None and not os.path.exists("/sbin/mount.glusterfs"):
            raise errors.Unsupported(
                "netfs pools with format glusterfs need mount.glusterfs (glusterfs-client)"
            )
    if pool_type == "iscsi":
        if not _kernel_module_available("iscsi_tcp"):
            raise errors.Unsupported(
                "iscsi pools need the kernel iSCSI initiator, and this kernel has none "
                "(iscsi_tcp is neither loaded nor installed); use iscsiDirect instead"
            )
        if shutil.which("iscsiadm") is None:
            raise errors.Unsupported("iscsi pools need iscsiadm (open-iscsi), which is not installed")
    elif pool_type == "logical" and not (
        device_mapper_available()
    ):
        raise errors.Unsupported("logical pools need device-mapper, and this kernel has none (no dm_mod)")


_shared_lock = threading.Lock()
_shared: dict[str, PoolLayer] = {}


def make_dir_target(root: str, path: str) -> fsops.Ident:
    """Create the directory a dir pool hands to libvirt (and each missing parent) below the allowed
    ``root`` through :mod:`hostlib.fsops`, no link followed; returns the (device, inode) of the
    directory as checked. An existing directory is used as it is (a dir pool serves an admin's
    directory; its data is never ours), but it must be reached without a symlink: else Conflict.

    libvirt acts on the path string (its build follows links), so the caller verifies with
    :func:`check_dir_target` after libvirt has acted (issue 9, class 6)."""
    rel = fsops.relative(root, path)
    fsops.makedirs(root, rel)
    with fsops.directory(root, rel) as fd:
        return fsops.ident(os.fstat(fd))


def check_dir_target(root: str, path: str, expect: fsops.Ident) -> None:
    """Conflict unless ``root/path`` is still the directory :func:`make_dir_target` checked (reached
    without a link, same device and inode)."""
    with fsops.directory(root, fsops.relative(root, path)) as fd:
        got = fsops.ident(os.fstat(fd))
    if got != expect:
        raise errors.Conflict(
            f"{path} is no longer the directory hoststorage checked (device:inode {got[0]}:{got[1]}, "
            f"checked {expect[0]}:{expect[1]})"
        )


def shared(uri: str) -> PoolLayer:
    """The process-wide started :class:`PoolLayer` for ``uri`` (for callers that were not handed one)."""
    with _shared_lock:
        layer = _shared.get(uri)
        if layer is None:
            layer = PoolLayer(uri)
            layer.connect()
            _shared[uri] = layer
        return layer
