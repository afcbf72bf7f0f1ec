"""What hoststorage owns on this host, so teardown never touches anything it did not make.

The ledger is one JSON file (``<state_dir>/ledger.json``, mode 0600) listing every object an agent or
``hoststorage apply`` created: its kind, name, uid, a ``resource`` dict describing the host side and the
objects it depends on. A mount under the mount base that no entry claims is foreign and left alone.

Ownership of a mount point is recorded in ``resource["mountPoint"]`` (and, for objects that own several
host paths, ``resource["paths"]``, a list); :meth:`Ledger.owns_mount` compares normalised paths.

Writes are atomic (temp file in the same directory, fsync, rename, fsync of the directory): a crash
leaves either the old or the new ledger, never half of one. A :class:`Ledger` is safe to share between
threads of one process; two processes on one host are serialised by :func:`host_lock`, an ``flock`` on
``<state_dir>/lock`` that records the holder's pid. A dry run takes :func:`read_lock` instead, which
creates and writes nothing.

A full state file system must not stop a teardown half-way (unmounted, but still listed, so the next
``apply`` would mount it again). So ``<state_dir>/ledger.reserve`` keeps preallocated room at least the
size of the ledger: a write that grows the ledger grows the reserve first (on a full disk it fails
before the reconciler changes the host), and a write that does not grow it, such as forgetting an
entry, frees the reserve when the disk is full and then succeeds. Every I/O problem of the state dir is
one :class:`StateDirError` naming the path and the system's words, never a bare ``OSError``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from hostlib import errors

log = logging.getLogger(__name__)

LEDGER_FILE = "ledger.json"
LOCK_FILE = "lock"
RESERVE_FILE = "ledger.reserve"
RESERVE_STEP = 64 * 1024
"""The reserve grows in steps of this: a ledger of 100 objects is about 40 KiB."""
FORMAT_VERSION = 1
STATE_DIR_MODE = 0o711
"""Others may pass through the state dir but not list it: qemu must reach the default mount base
``<state_dir>/mnt`` (VM disks in pools on connections), while the ledger and the lock stay 0600."""
# A ledger is small (one entry per object); anything bigger is not ours or corrupt.
MAX_LEDGER_BYTES = 16 * 1024 * 1024


class LedgerCorrupt(errors.HostStorageError):
    """The ledger file cannot be read. Permanent: guessing ownership could unmount someone else's storage."""

    reason = "LedgerCorrupt"
    temporary = False


class StateDirError(errors.HostStorageError):
    """The state dir or a file in it cannot be used: not a directory, full, read-only, no permission.
    Temporary: once an admin has fixed it, the next run (or the agent's retry) goes on."""

    reason = "StateDirUnusable"


def _failed(what: str, path: str, exc: OSError) -> StateDirError:
    return StateDirError(f"{what} {path}: {exc.strerror or exc}")


class LockHeld(errors.Conflict):
    """Another process holds the host lock."""

    reason = "HostLocked"
    temporary = True

    def __init__(self, path: str, pid: int | None) -> None:
        holder = f"pid {pid}" if pid is not None else "an unknown process"
        super().__init__(f"host lock {path} is held by {holder}")
        self.path = path
        self.pid = pid


@dataclasses.dataclass(frozen=True)
class LedgerEntry:
    kind: str
    name: str
    uid: str = ""
    resource: dict[str, Any] = dataclasses.field(default_factory=dict)
    depends_on: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.name)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "resource": self.resource,
            "dependsOn": [list(d) for d in self.depends_on],
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> LedgerEntry:
        kind, name = raw["kind"], raw["name"]
        uid = raw.get("uid", "")
        resource = raw.get("resource", {})
        deps = raw.get("dependsOn", [])
        if not (isinstance(kind, str) and isinstance(name, str) and isinstance(uid, str)):
            raise ValueError("kind, name and uid must be strings")
        if not isinstance(resource, dict) or not isinstance(deps, list):
            raise ValueError("resource must be an object and dependsOn a list")
        depends_on: list[tuple[str, str]] = []
        for d in deps:
            if not (isinstance(d, list) and len(d) == 2 and all(isinstance(x, str) for x in d)):
                raise ValueError(f"bad dependsOn item {d!r}")
            depends_on.append((d[0], d[1]))
        return cls(kind, name, uid, resource, tuple(depends_on))

    def owned_paths(self) -> list[str]:
        out: list[str] = []
        mp = self.resource.get("mountPoint")
        if isinstance(mp, str) and mp:
            out.append(os.path.normpath(mp))
        extra = self.resource.get("paths")
        if isinstance(extra, list):
            out.extend(os.path.normpath(p) for p in extra if isinstance(p, str) and p)
        return out


class Ledger:
    """The in-memory ledger of one state dir; every change is written through to disk."""

    def __init__(self, state_dir: str, entries: Mapping[tuple[str, str], LedgerEntry] | None = None) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, LEDGER_FILE)
        self._entries: dict[tuple[str, str], LedgerEntry] = dict(entries or {})
        self._lock = threading.Lock()

    @classmethod
    def load(cls, state_dir: str) -> Ledger:
        """Read the ledger of ``state_dir``; a missing file is an empty ledger. Corrupt -> LedgerCorrupt."""
        path = os.path.join(state_dir, LEDGER_FILE)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return cls(state_dir)
        except NotADirectoryError:
            raise StateDirError(f"state dir {state_dir} is not a directory") from None
        except OSError as exc:
            raise LedgerCorrupt(f"cannot open ledger {path}: {exc.strerror}") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise LedgerCorrupt(f"ledger {path} is not a regular file")
        with os.fdopen(fd, "rb") as f:
            try:
                data = f.read(MAX_LEDGER_BYTES + 1)
            except OSError as exc:
                raise LedgerCorrupt(f"cannot read ledger {path}: {exc.strerror}") from None
        if len(data) > MAX_LEDGER_BYTES:
            raise LedgerCorrupt(f"ledger {path} is larger than {MAX_LEDGER_BYTES} bytes")
        try:
            raw = json.loads(data.decode("utf-8"))
            if not isinstance(raw, dict) or raw.get("version") != FORMAT_VERSION:
                raise ValueError(f"expected an object with version {FORMAT_VERSION}")
            items = raw.get("entries")
            if not isinstance(items, list):
                raise ValueError("entries must be a list")
            entries = [LedgerEntry.from_json(item) for item in items]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise LedgerCorrupt(f"ledger {path} is unreadable: {exc}") from exc
        return cls(state_dir, {e.key: e for e in entries})

    def get(self, kind: str, name: str) -> LedgerEntry | None:
        with self._lock:
            return self._entries.get((kind, name))

    def entries(self, kind: str | None = None) -> list[LedgerEntry]:
        with self._lock:
            items = list(self._entries.values())
        return sorted((e for e in items if kind is None or e.kind == kind), key=lambda e: e.key)

    def put(self, entry: LedgerEntry) -> None:
        """Record (or replace) an entry. Writing an unchanged entry does not touch the disk."""
        with self._lock:
            if self._entries.get(entry.key) == entry:
                return
            updated = {**self._entries, entry.key: entry}
            self._write(updated)
            self._entries = updated
        log.debug("ledger %s: recorded %s/%s", self.path, entry.kind, entry.name)

    def remove(self, kind: str, name: str) -> bool:
        """Forget an entry; returns whether there was one."""
        with self._lock:
            if (kind, name) not in self._entries:
                return False
            updated = {k: v for k, v in self._entries.items() if k != (kind, name)}
            self._write(updated)
            self._entries = updated
        log.debug("ledger %s: removed %s/%s", self.path, kind, name)
        return True

    def ensure_reserve(self) -> None:
        """Make sure forgetting entries will find room on a full disk; StateDirError if it cannot.

        A teardown calls this before it changes the host. Writes keep the reserve up to date, so this
        acts only on a state dir an older version wrote.
        """
        with self._lock:
            self._grow_reserve(self._size_on_disk())

    def scratch_copy(self) -> Ledger:
        """An in-memory copy whose changes never reach the disk: a dry run's "what if"."""
        with self._lock:
            return _ScratchLedger(self.state_dir, self._entries)

    def owns_mount(self, path: str) -> bool:
        """Whether some entry made the mount point (or link) ``path``."""
        wanted = os.path.normpath(path)
        return any(wanted in e.owned_paths() for e in self.entries())

    def owner_of(self, path: str) -> LedgerEntry | None:
        wanted = os.path.normpath(path)
        for e in self.entries():
            if wanted in e.owned_paths():
                return e
        return None

    def users_of(self, kind: str, name: str) -> list[LedgerEntry]:
        """Entries that depend on (kind, name): a connection is in use while a pool or monitor lists it."""
        return [e for e in self.entries() if (kind, name) in e.depends_on]

    @property
    def reserve_path(self) -> str:
        return os.path.join(self.state_dir, RESERVE_FILE)

    def _write(self, entries: Mapping[tuple[str, str], LedgerEntry]) -> None:
        make_state_dir(self.state_dir)
        body = {
            "version": FORMAT_VERSION,
            "entries": [entries[k].to_json() for k in sorted(entries)],
        }
        data = json.dumps(body, indent=1, sort_keys=True).encode("utf-8")
        grows = len(data) > self._size_on_disk()
        if grows:
            self._grow_reserve(len(data))  # before the ledger: a full disk fails here, nothing written
        try:
            self._replace(data)
        except OSError as exc:
            if grows or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise _failed("cannot write ledger", self.path, exc) from None
            # Forgetting must not fail for want of room: spend the reserve, then try to win it back.
            self._release_reserve()
            try:
                self._replace(data)
            except OSError as again:
                raise _failed("cannot write ledger", self.path, again) from None
            try:
                self._grow_reserve(len(data))
            except StateDirError as reserve_exc:
                log.warning("ledger %s: written, but %s", self.path, reserve_exc.message)

    def _replace(self, data: bytes) -> None:
        tmp = f"{self.path}.tmp.{os.getpid()}.{threading.get_ident()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        try:
            dfd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:  # the new ledger is in place; only its durability is in doubt
            log.warning("ledger %s: written, but syncing its directory failed: %s", self.path, exc.strerror)

    def _size_on_disk(self) -> int:
        try:
            return os.lstat(self.path).st_size
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise _failed("cannot stat ledger", self.path, exc) from None

    def _grow_reserve(self, size: int) -> None:
        """Preallocate the reserve to ``size`` rounded up to :data:`RESERVE_STEP` (no-op if it is)."""
        needed = -(-size // RESERVE_STEP) * RESERVE_STEP
        if needed == 0:
            return
        path = self.reserve_path
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise _failed("cannot keep room for the ledger in", path, exc) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise StateDirError(f"ledger reserve {path} is not a regular file")
            if st.st_blocks * 512 >= needed:  # blocks, not size: a sparse file reserves nothing
                return
            try:
                os.posix_fallocate(fd, 0, needed)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                os.pwrite(fd, bytes(needed), 0)  # no fallocate on this file system: write it out
            os.fsync(fd)
        except OSError as exc:
            raise _failed("cannot keep room for the ledger in", path, exc) from None
        finally:
            os.close(fd)

    def _release_reserve(self) -> None:
        # unlink, never truncate: truncate would follow a link planted in place of the reserve.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.reserve_path)


def make_state_dir(state_dir: str) -> None:
    """Create the state dir (mode :data:`STATE_DIR_MODE`); one made 0700 by an older version gets the
    traverse bits it lacks, nothing else (no read, no write for others). StateDirError if it cannot."""
    try:
        os.makedirs(state_dir, mode=STATE_DIR_MODE, exist_ok=True)
        st = os.stat(state_dir)
    except FileExistsError:
        raise StateDirError(f"state dir {state_dir} is not a directory") from None
    except OSError as exc:
        raise _failed("cannot create state dir", state_dir, exc) from None
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"state dir {state_dir} is not a directory")
    mode = st.st_mode & 0o7777
    if mode & 0o011 != 0o011:
        try:
            os.chmod(state_dir, mode | 0o011)  # noqa: S103 - traverse only (x), never read or write
        except OSError as exc:
            raise _failed("cannot make others able to traverse state dir", state_dir, exc) from None


class _ScratchLedger(Ledger):
    def _write(self, entries: Mapping[tuple[str, str], LedgerEntry]) -> None:
        return None

    def ensure_reserve(self) -> None:
        return None


def _read_holder(fd: int) -> int | None:
    try:
        raw = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        return int(raw) if raw else None
    except (OSError, ValueError):
        return None


def _flock(fd: int, op: int, path: str, *, blocking: bool, timeout: float | None) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, op | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise _failed("cannot lock", path, exc) from None
            if not blocking or (deadline is not None and time.monotonic() >= deadline):
                raise LockHeld(path, _read_holder(fd)) from None
            if deadline is None:
                fcntl.flock(fd, op)
                return
            time.sleep(0.05)


@contextlib.contextmanager
def host_lock(state_dir: str, *, blocking: bool = True, timeout: float | None = None) -> Iterator[int]:
    """Hold the host lock (flock on ``<state_dir>/lock``) for the ``with`` block; yields our pid.

    ``blocking=False`` raises :class:`LockHeld` naming the holder's pid at once; ``timeout`` bounds a
    blocking wait (then :class:`LockHeld` too). flock is released by the kernel when the holder dies,
    so a crashed agent never leaves the host locked. A state dir or lock file that cannot be used is
    :class:`StateDirError`.
    """
    make_state_dir(state_dir)
    path = os.path.join(state_dir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise _failed("cannot open host lock", path, exc) from None
    try:
        _flock(fd, fcntl.LOCK_EX, path, blocking=blocking, timeout=timeout)
        pid = os.getpid()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{pid}\n".encode(), 0)
        except OSError as exc:  # a full disk: the lock holds all the same, only its holder is unnamed
            log.info("host lock %s: cannot record pid %s: %s", path, pid, exc.strerror)
        log.debug("host lock %s taken by pid %s", path, pid)
        try:
            yield pid
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def read_lock(state_dir: str, *, timeout: float | None = None) -> Iterator[bool]:
    """The host lock for a dry run: shared, and nothing is created or written; yields whether it holds.

    It waits (up to ``timeout``) while a real run or the agent holds the lock, so a plan never reads a
    half-done change, and dry runs do not wait for each other. Without a lock file (or a state dir)
    no hoststorage has ever run here: there is nothing to wait for, and the dry run goes on unlocked.
    """
    path = os.path.join(state_dir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        yield False
        return
    except NotADirectoryError:
        raise StateDirError(f"state dir {state_dir} is not a directory") from None
    except OSError as exc:
        raise _failed("cannot open host lock", path, exc) from None
    try:
        _flock(fd, fcntl.LOCK_SH, path, blocking=True, timeout=timeout)
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
