"""The child process that touches possibly-hung storage for :mod:`hostlib.checker`.

Run as ``python -m hostlib.check_helper``. It reads one JSON request per line on stdin and answers one
JSON line per request on stdout, in completion order. Requests run on worker threads (see
:class:`_Pool`): a read stuck in uninterruptible sleep (a SIGSTOPped gluster brick, a dead NFS server)
holds one worker of this process and nothing else; the main thread keeps accepting requests, a new
worker takes the queued ones, and other checks keep answering. The agent never waits for this process;
when too many of its checks are stuck it starts a fresh helper and closes this one's stdin. On EOF the
helper lets running checks finish and exits.

Why a long-lived helper rather than VDSM's ``dd`` per check: fork+exec of a program costs far more CPU
than starting a thread, and a thread stuck in D state here isolates the agent just as well, because the
agent is a different process (see bench/monitors.py for the figures).

Operations (``op``):
- ``check``: find the file to read (an explicit ``path``, else a VDSM domain's ``dom_md/metadata`` under
  ``target``, else the probe file ``target/<probe>``, created once when ``create`` is set), confine it
  (realpath under ``root``), read 4 KiB with O_DIRECT and time that read, read the whole file when
  ``data`` is set (VDSM metadata, up to ``limit`` bytes), and ``statvfs(target)``.
  A probe file is created through :mod:`hostlib.fsops` (``O_CREAT|O_EXCL``, no link followed below
  ``root``) and the answer carries its ``created`` (device, inode); a name that already exists is
  never adopted (read, but no ``created``: nobody will remove it).
- ``remove``: unlink a probe file through :mod:`hostlib.fsops`, only if it is still the one created
  (``expect`` = the recorded device and inode); anything else at that name is a ``conflict`` answer and
  nothing is removed. A link at any component below ``root`` is never followed.

Only the standard library (and :mod:`hostlib.fsops`, itself standard library only) is imported here:
the helper starts in tens of milliseconds.
"""

from __future__ import annotations

import base64
import errno
import json
import mmap
import os
import queue
import re
import select
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from hostlib import errors, fsops

BLOCK = 4096
DEFAULT_LIMIT = 1024 * 1024
PROBE_HEADER = b"hoststorage probe file: read periodically by DomainMonitor health checks\n"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# A target with more entries than this is not a storage domain mount; do not spend a check listing it.
MAX_SCAN = 4096

MAX_IDLE_WORKERS = 4
MIN_WORKERS = 2
# A worker busy this long may be stuck on storage: queued work gets a new worker.
STUCK_AFTER = 0.05
# Longest an answer waits to be batched with others (see _answer).
HOLD_MAX = 0.02
# Past this many busy (stuck) workers the helper refuses work; the agent retires it long before.
MAX_WORKERS = 512

_write_lock = threading.Lock()
_local = threading.local()
_real_roots: dict[str, str] = {}


class CheckFailed(Exception):
    def __init__(self, stage: str, message: str, err: int | None = None) -> None:
        super().__init__(message)
        self.stage = stage
        self.message = message
        self.errno = err


def _oserror(stage: str, path: str, exc: OSError) -> CheckFailed:
    return CheckFailed(stage, f"{stage} {path}: {exc.strerror or exc}", exc.errno)


def _under(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _confine(root: str, path: str) -> str:
    real_root = _real_root(root)
    real = os.path.realpath(path)
    if not _under(real_root, real):
        raise CheckFailed("confine", f"{path} resolves to {real}, outside {real_root}")
    return real


def _detect(target: str) -> tuple[str | None, list[str]]:
    """The metadata file of the VDSM domain at or under ``target`` (None if none), and all domains seen."""
    own = os.path.join(target, "dom_md", "metadata")
    if os.path.isfile(own):
        return own, [os.path.basename(os.path.normpath(target))]
    domains: list[str] = []
    with os.scandir(target) as entries:
        for count, entry in enumerate(entries):
            if count >= MAX_SCAN:
                break
            if UUID_RE.match(entry.name) and os.path.isfile(os.path.join(entry.path, "dom_md", "metadata")):
                domains.append(entry.name)
    domains.sort()
    if len(domains) == 1:
        return os.path.join(target, domains[0], "dom_md", "metadata"), domains
    return None, domains


def _create_probe(root: str, path: str) -> list[int] | None:
    """Create the probe file (never adopting an existing name); its [device, inode], None if it existed."""
    real_root = _real_root(root)
    try:
        made = fsops.create_file(real_root, fsops.relative(real_root, path), PROBE_HEADER.ljust(BLOCK, b"\n"))
    except FileExistsError:
        return None
    except errors.HostStorageError as exc:
        raise CheckFailed("confine", exc.message) from None
    return list(made)


def _real_root(root: str) -> str:
    # The root is a mount point or an allowed host path the agent validated; resolving it once per
    # helper saves a realpath per check.
    real = _real_roots.get(root)
    if real is None:
        real = _real_roots[root] = os.path.realpath(root)
    return real


def _confine_fd(fd: int, root: str, path: str) -> None:
    """Refuse an opened file that is not under ``root``: what was opened, not what a path said.

    Checked on the open descriptor (its /proc link), so a symlink swapped in by whoever controls the
    storage between the realpath check and the open cannot make us read outside the root.
    """
    real = os.readlink(f"/proc/self/fd/{fd}")
    real_root = _real_root(root)
    if not _under(real_root, real):
        raise CheckFailed("confine", f"{path} resolves to {real}, outside {real_root}")


def _read(path: str, root: str, want_data: bool, limit: int, *, nofollow: bool = False) -> dict[str, Any]:
    # Resolved before opening: opening a device a symlink points at can have effects of its own
    # (a watchdog starts, a tape rewinds). Checked again on the descriptor after opening (a race).
    try:
        _confine(root, path)
    except OSError as exc:
        raise _oserror("confine", path, exc) from exc
    direct = True
    # A probe file is a regular file hoststorage made: a link in its place is reported, not read through.
    extra = os.O_NOFOLLOW if nofollow else 0
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC | extra)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise _oserror("open", path, exc) from exc
        # tmpfs and a few FUSE filesystems refuse O_DIRECT; a cached read still proves the path answers.
        direct = False
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | extra)
        except OSError as exc2:
            raise _oserror("open", path, exc2) from exc2
    # mmap gives the page-aligned buffer O_DIRECT needs; one per worker thread, reused.
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = mmap.mmap(-1, BLOCK)
    try:
        try:
            _confine_fd(fd, root, path)
        except OSError as exc:
            raise _oserror("confine", path, exc) from exc
        start = time.monotonic()
        try:
            got = os.preadv(fd, [buf], 0)
        except OSError as exc:
            raise _oserror("read", path, exc) from exc
        delay = time.monotonic() - start
        out: dict[str, Any] = {"delay": delay, "direct": direct}
        if want_data:
            chunks = [buf[:got]]
            total = got
            offset = got
            if got == BLOCK:
                big = mmap.mmap(-1, 16 * BLOCK)
                try:
                    while total <= limit:
                        try:
                            n = os.preadv(fd, [big], offset)
                        except OSError as exc:
                            raise _oserror("read", path, exc) from exc
                        if n <= 0:
                            break
                        chunks.append(big[:n])
                        total += n
                        offset += n
                        if n < len(big):
                            break
                finally:
                    big.close()
            data = b"".join(chunks)
            out["truncated"] = len(data) > limit
            out["data"] = base64.b64encode(data[:limit]).decode("ascii")
        return out
    finally:
        os.close(fd)


def check(req: dict[str, Any]) -> dict[str, Any]:
    target = str(req["target"])
    root = str(req.get("root") or target)
    path = req.get("path")
    kind = "file"
    out: dict[str, Any] = {}
    if not path:
        # Detection lists the target and may create the probe file in it: confine the target first.
        try:
            target = _confine(root, target)
        except OSError as exc:
            raise _oserror("confine", target, exc) from exc
        try:
            found, domains = _detect(target)
        except OSError as exc:
            raise _oserror("detect", target, exc) from exc
        out["domains"] = domains
        if found is not None:
            path, kind = found, "metadata"
        elif domains:
            raise CheckFailed(
                "detect", f"{target} holds {len(domains)} storage domains; name one in the path"
            )
        else:
            path, kind = os.path.join(target, str(req.get("probe") or ".hoststorage-probe")), "probe"
            if req.get("create"):
                try:
                    created = _create_probe(root, path)
                except OSError as exc:
                    raise _oserror("create", path, exc) from exc
                if created is not None:
                    out["created"] = created
    elif req.get("kind"):
        kind = str(req["kind"])
    want_data = bool(req.get("data")) or kind == "metadata"
    limit = int(req.get("limit") or DEFAULT_LIMIT)
    out.update(_read(str(path), root, want_data, limit, nofollow=kind == "probe"))
    out["path"] = str(path)
    out["kind"] = kind
    if req.get("statvfs", True):
        try:
            st = os.statvfs(target)
        except OSError as exc:
            raise _oserror("statvfs", target, exc) from exc
        out["total"] = st.f_blocks * st.f_frsize
        out["free"] = st.f_bavail * st.f_frsize
    return out


def _on_this_mount(root: str, expect: list[int]) -> tuple[int, int]:
    """The recorded (device, inode) of a probe file, with the device of the filesystem mounted on ``root``
    now. A network filesystem's device number belongs to the mount, not to the storage: FUSE (gluster)
    and NFS get a fresh anonymous one at every mount, while the inode (gluster: from the file's gfid)
    stays. Found by the chaos soak: after a gluster remount every monitor's teardown was a Conflict
    forever, holding its connection InUse. The inode and the type still have to match, on the
    filesystem under ``root``."""
    try:
        dev = os.stat(root).st_dev
    except OSError:
        return (expect[0], expect[1])
    return (dev, expect[1])


def remove(req: dict[str, Any]) -> dict[str, Any]:
    path = str(req["path"])
    expect = req.get("expect")
    if not (isinstance(expect, list) and len(expect) == 2 and all(isinstance(n, int) for n in expect)):
        raise CheckFailed("refused", f"{path}: no recorded device and inode, so not known to be ours; left")
    real_root = _real_root(str(req["root"]))
    try:
        removed = fsops.remove(
            real_root, fsops.relative(real_root, path), expect=_on_this_mount(real_root, expect)
        )
    except errors.Conflict as exc:
        raise CheckFailed("conflict", exc.message) from None
    except errors.HostStorageError as exc:
        raise CheckFailed("confine", exc.message) from None
    except OSError as exc:
        raise _oserror("remove", path, exc) from exc
    return {"kind": "removed" if removed else "absent"}


_outbox: list[bytes] = []
_outbox_since = 0.0


def _answer(out_fd: int, msg: dict[str, Any], *, hold: bool = False) -> None:
    """Send an answer. ``hold``: more requests are queued, so batch it with their answers.

    Checks due at the same moment arrive together; answering them in one write wakes the agent once
    instead of once per check (on a VM each wake-up costs more CPU than a check). A held answer waits
    at most HOLD_MAX: the next finished check or the main loop's tick flushes it, even if the worker
    that held it is now stuck on storage.
    """
    global _outbox_since  # noqa: PLW0603 - one outbox per helper process
    data = (json.dumps(msg, separators=(",", ":")) + "\n").encode()
    with _write_lock:
        now = time.monotonic()
        if not _outbox:
            _outbox_since = now
        _outbox.append(data)
        if hold and now - _outbox_since < HOLD_MAX:
            return
        _flush_locked(out_fd)


def flush_answers(out_fd: int) -> None:
    with _write_lock:
        _flush_locked(out_fd)


def _flush_locked(out_fd: int) -> None:
    if not _outbox:
        return
    view = memoryview(b"".join(_outbox))
    _outbox.clear()
    while view:
        try:
            n = os.write(out_fd, view)
        except BrokenPipeError:
            # The agent abandoned us and closed its end; nobody wants these answers.
            return
        view = view[n:]


def _run(out_fd: int, req: dict[str, Any], *, more: Callable[[], bool] = lambda: False) -> None:
    rid = req.get("id")
    try:
        op = req.get("op")
        if op == "check":
            body = check(req)
        elif op == "remove":
            body = remove(req)
        elif op == "ping":
            body = {}
        else:
            raise CheckFailed("request", f"unknown op {op!r}")
        msg = {"id": rid, "ok": True, **body}
    except CheckFailed as exc:
        msg = {"id": rid, "ok": False, "stage": exc.stage, "error": exc.message, "errno": exc.errno}
    except Exception as exc:  # a helper bug must become an answer, not a hang
        msg = {"id": rid, "ok": False, "stage": "internal", "error": f"{type(exc).__name__}: {exc}"}
    _answer(out_fd, msg, hold=more())


class _Pool:
    """Worker threads fed from one queue.

    A few workers serve the steady load (starting a thread per check costs ~170 us of CPU; handing a
    request to a waiting worker ~20 us). A new worker starts only when none is waiting and every busy
    one has been busy for STUCK_AFTER: that is, when storage hangs or crawls, not merely when requests
    arrive in a burst. Idle workers beyond MAX_IDLE_WORKERS exit.
    """

    def __init__(self, out_fd: int) -> None:
        self.out_fd = out_fd
        self.queue: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.idle = 0
        self.busy: dict[int, float] = {}
        self.workers: list[threading.Thread] = []

    def more(self) -> bool:
        return not self.queue.empty()

    def submit(self, req: dict[str, Any]) -> None:
        self.queue.put(req)
        self.grow()

    def grow(self) -> None:
        """Start a worker if queued work has nobody to serve it (called on submit and periodically)."""
        with self.lock:
            if self.idle > 0 or self.queue.empty():
                return
            now = time.monotonic()
            if len(self.workers) >= MIN_WORKERS and any(now - t < STUCK_AFTER for t in self.busy.values()):
                return
            self.workers = [t for t in self.workers if t.is_alive()]
            if len(self.workers) >= MAX_WORKERS:
                req = self.queue.get()
                refuse = True
            else:
                refuse = False
                t = threading.Thread(target=self._work, daemon=True)
                self.workers.append(t)
                # Counted idle at once, so a burst of submits does not start a thread per request.
                self.idle += 1
        if refuse:
            if req is not None:
                _answer(self.out_fd, {"id": req.get("id"), "ok": False, "stage": "helper",
                                      "error": f"{MAX_WORKERS} checks are stuck in this helper"})
            return
        t.start()

    def _work(self) -> None:
        me = threading.get_ident()
        while True:
            req = self.queue.get()
            with self.lock:
                self.idle -= 1
                self.busy[me] = time.monotonic()
            if req is None:
                with self.lock:
                    del self.busy[me]
                return
            _run(self.out_fd, req, more=self.more)
            with self.lock:
                del self.busy[me]
                if self.idle >= MAX_IDLE_WORKERS:
                    return
                self.idle += 1

    def close(self) -> None:
        # Requests still queued get workers even now: the main loop that grew the pool has ended.
        while not self.queue.empty():
            self.grow()
            flush_answers(self.out_fd)
            time.sleep(HOLD_MAX)
        with self.lock:
            workers = list(self.workers)
        for _ in workers:
            self.queue.put(None)
        # Let running checks answer, flushing answers held for batching (the queued sentinels make
        # workers hold them). A stuck check keeps this process, not the agent, waiting for its storage.
        for t in workers:
            while t.is_alive():
                t.join(HOLD_MAX)
                flush_answers(self.out_fd)
        flush_answers(self.out_fd)


def main() -> int:
    in_fd, out_fd = sys.stdin.fileno(), sys.stdout.fileno()
    pool = _Pool(out_fd)
    buffer = b""
    while True:
        # Wake up periodically only while work waits for a worker (to notice stuck ones) or answers
        # wait in the outbox; else sleep.
        idle = pool.queue.empty() and not _outbox
        ready, _, _ = select.select([in_fd], [], [], None if idle else HOLD_MAX)
        if not ready:
            flush_answers(out_fd)
            pool.grow()
            continue
        chunk = os.read(in_fd, 1 << 16)
        if not chunk:
            break
        *lines, buffer = (buffer + chunk).split(b"\n")
        for line in lines:
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("request must be an object")
            except ValueError as exc:
                _answer(out_fd, {"id": None, "ok": False, "stage": "request", "error": str(exc)})
                continue
            pool.submit(req)
    pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
