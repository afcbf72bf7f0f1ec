"""Hang-proof storage health checks: the agent side.

Contract: nothing in this module touches storage. Every open, read, statvfs, directory listing and
probe-file creation runs in a child process (:mod:`hostlib.check_helper`); the agent only writes
requests to a pipe and reads answers from one, with ``selectors``, never blocking on storage. A reader of
hung storage sits in uninterruptible sleep and ignores SIGKILL; if that reader were an agent thread, the
whole agent could not even be restarted. As a child, it costs one stuck helper thread and nothing more.

:class:`Checker` is driven by one thread (the monitor runtime's scheduler): :meth:`Checker.submit` sends
a check, :meth:`Checker.wait` returns finished ones. At most one check per key is outstanding: a second
submit for a key still running is refused, so a hung path never piles up work. When a helper holds too
many checks that outlived their timeout, new work goes to a fresh helper and the old one is retired: its
stdin is closed, its answers are still read (a late answer only frees its key), and it is reaped with
non-blocking ``poll()`` once it exits — never waited on.

VDSM's design (one ``dd ... iflag=direct`` child per check) is kept as ``bench/dd_checker.py``, the
baseline that bench/monitors.py measures against.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Protocol

from hostlib import errors

log = logging.getLogger(__name__)

PROBE_NAME = ".hoststorage-probe"
"""The probe file hoststorage owns in a target that holds no VDSM domain (created once, 4 KiB)."""
MAX_STUCK_PER_HELPER = 8
"""Checks past their timeout a helper may hold before new work goes to a fresh helper."""
MAX_RETIRED_HELPERS = 64
"""Retired helpers kept (each holds stuck threads). Beyond this, new hung checks are refused as blocked."""
_READ_CHUNK = 1 << 16


@dataclasses.dataclass(frozen=True)
class CheckRequest:
    """One check of one target. Paths were validated by the caller; the helper confines them again."""

    target: str
    """The directory checked: statvfs, VDSM domain detection, probe file location."""
    root: str = ""
    """The read file must resolve (realpath, in the helper) under this root; default ``target``."""
    path: str | None = None
    """The file to read. None: the VDSM metadata found under ``target``, else the probe file."""
    kind: str = "file"
    """What ``path`` is: ``metadata`` (its bytes are returned and parsed), ``probe`` or ``file``."""
    probe: str = PROBE_NAME
    create_probe: bool = True
    statvfs: bool = True

    def wire_line(self, rid: int) -> bytes:
        """The request as one JSON line; the constant part is encoded once per request object."""
        prefix: bytes | None = self.__dict__.get("_wire")
        if prefix is None:
            body = self.to_wire(0)
            del body["id"]
            prefix = json.dumps(body, separators=(",", ":"))[:-1].encode() + b',"id":'
            # Frozen, so the cache lives beside the fields (not one of them: eq/hash ignore it).
            object.__setattr__(self, "_wire", prefix)
        return prefix + str(rid).encode() + b"}\n"

    def to_wire(self, rid: int) -> dict[str, Any]:
        return {
            "id": rid,
            "op": "check",
            "target": self.target,
            "root": self.root or self.target,
            "path": self.path,
            "kind": self.kind,
            "probe": self.probe,
            "create": self.create_probe,
            "statvfs": self.statvfs,
        }


def _wake_pipe(sel: selectors.BaseSelector) -> tuple[int, int]:
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    sel.register(r, selectors.EVENT_READ)
    return r, w


def _poke(fd: int) -> None:
    with contextlib.suppress(BlockingIOError, OSError):
        os.write(fd, b"\0")


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError, OSError):
        while os.read(fd, 4096):
            pass


_abandoned: list[subprocess.Popen[bytes]] = []
"""Children left behind by closed checkers (stuck on storage, or still exiting): reaped with a
non-blocking poll whenever any checker waits, never waited on."""


def _abandon(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        _abandoned.append(proc)


def reap_abandoned() -> int:
    """Reap abandoned children that have exited; returns how many are still running."""
    _abandoned[:] = [p for p in _abandoned if p.poll() is None]
    return len(_abandoned)


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """The answer of one check. ``ok`` False means the storage answered with an error (or refused)."""

    ok: bool
    started: float
    """Monotonic time the check was sent."""
    finished: float
    path: str | None = None
    kind: str = ""
    read_delay: float | None = None
    direct_io: bool = True
    total_bytes: int | None = None
    free_bytes: int | None = None
    data: bytes | None = None
    truncated: bool = False
    domains: tuple[str, ...] = ()
    stage: str = ""
    """Where it failed: open, read, statvfs, detect, create, confine, conflict, refused, helper."""
    error: str = ""
    errno: int | None = None
    created: tuple[int, int] | None = None
    """(device, inode) of the probe file this check created (None: it created nothing); what proves
    the file is hoststorage's when it is removed later."""

    @classmethod
    def from_wire(cls, msg: dict[str, Any], started: float, finished: float) -> CheckResult:
        data = msg.get("data")
        return cls(
            ok=bool(msg.get("ok")),
            started=started,
            finished=finished,
            path=msg.get("path"),
            kind=str(msg.get("kind") or ""),
            read_delay=msg.get("delay"),
            direct_io=bool(msg.get("direct", True)),
            total_bytes=msg.get("total"),
            free_bytes=msg.get("free"),
            data=base64.b64decode(data) if isinstance(data, str) else None,
            truncated=bool(msg.get("truncated")),
            domains=tuple(msg.get("domains") or ()),
            stage=str(msg.get("stage") or ""),
            error=str(msg.get("error") or ""),
            errno=msg.get("errno"),
            created=_ident(msg.get("created")),
        )


def _ident(value: object) -> tuple[int, int] | None:
    if isinstance(value, list) and len(value) == 2 and all(type(n) is int for n in value):
        return (value[0], value[1])
    return None


def probe_name(node: str) -> str:
    """The probe file name of one node: several nodes check the same shared storage, and each must
    create and remove only its own file (a shared name let one node's teardown remove another's).

    ``.hoststorage-probe-<node>``: the node name as is when it is a short safe name, else its safe
    characters (at most 40) and a hash of the whole name, so distinct nodes never share a name and the
    result fits in any file system's 255-byte limit."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", node)
    if not node:
        safe = "unknown"
    elif safe != node or len(safe) > 63:
        safe = f"{safe[:40]}-{hashlib.sha256(node.encode('utf-8', 'surrogateescape')).hexdigest()[:12]}"
    return f"{PROBE_NAME}-{safe}"


class CheckBackend(Protocol):
    """What the monitor runtime drives: :class:`Checker` (or the bench's dd baseline)."""

    def submit(self, key: Hashable, request: CheckRequest, *, timeout: float) -> bool: ...
    def outstanding(self, key: Hashable) -> float | None: ...
    def wait(self, timeout: float) -> list[tuple[Hashable, CheckResult]]: ...
    def wakeup(self) -> None: ...
    def close(self) -> None: ...
    def stats(self) -> dict[str, int]: ...


def helper_argv() -> list[str]:
    return [sys.executable, "-m", "hostlib.check_helper"]


def _helper_env() -> dict[str, str]:
    env = dict(os.environ)
    # The helper imports hostlib.check_helper from the same tree as this module (editable or not).
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class _Helper:
    def __init__(self, argv: Sequence[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            close_fds=True,
            # Its own session: a Ctrl-C or SIGTERM meant for the agent's terminal is not the helper's.
            start_new_session=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin_fd = self.proc.stdin.fileno()
        self.stdout_fd = self.proc.stdout.fileno()
        os.set_blocking(self.stdout_fd, False)
        self.buffer = b""
        self.pending: dict[int, tuple[Hashable, float, float]] = {}
        """request id -> (key, sent at, deadline)."""
        self.retired = False
        self.eof = False
        self.outbox: list[tuple[int, bytes]] = []
        """(request id, line) not yet written: checks due at the same moment go out in one write."""
        self._stuck_at = 0.0
        self._stuck = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def flush(self) -> None:
        if not self.outbox:
            return
        data, self.outbox = b"".join(line for _, line in self.outbox), []
        # The helper's main thread never touches storage and reads continuously: this does not block.
        view = memoryview(data)
        while view:
            view = view[os.write(self.stdin_fd, view):]

    def stuck(self, now: float) -> int:
        # Counted at most every 0.5 s: the count only matters once checks outlive their timeouts.
        if now - self._stuck_at >= 0.5:
            self._stuck_at = now
            self._stuck = sum(1 for _, _, deadline in self.pending.values() if now >= deadline)
        return self._stuck

    def retire(self) -> None:
        if self.retired:
            return
        self.retired = True
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()


class Checker:
    """Checks in long-lived helper processes, one short-lived helper thread per check.

    Driven by one thread: not thread-safe by design (the runtime owns it). ``clock`` is injectable so
    tests and benches measure with the same clock as their scheduler.
    """

    def __init__(
        self,
        *,
        argv: Sequence[str] | None = None,
        max_stuck: int = MAX_STUCK_PER_HELPER,
        max_retired: int = MAX_RETIRED_HELPERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._argv = list(argv) if argv is not None else helper_argv()
        self._env = _helper_env()
        self._max_stuck = max_stuck
        self._max_retired = max_retired
        self._clock = clock
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = _wake_pipe(self._sel)
        self._current: _Helper | None = None
        self._helpers: dict[int, _Helper] = {}  # stdout fd -> helper (current and retired, until EOF)
        self._zombies: list[_Helper] = []  # EOF seen, not yet reaped
        self._keys: dict[Hashable, tuple[_Helper, int]] = {}
        self._next_id = 0
        self._closed = False
        self.started_helpers = 0

    # -- public -------------------------------------------------------------------------------------
    def submit(self, key: Hashable, request: CheckRequest, *, timeout: float) -> bool:
        """Send a check for ``key``; False (nothing sent) while the previous check of ``key`` runs."""
        if self._closed:
            raise RuntimeError("checker is closed")
        if key in self._keys:
            return False
        now = self._clock()
        helper = self._helper_for_work(now)
        if helper is None:
            return False
        self._next_id += 1
        rid = self._next_id
        helper.outbox.append((rid, request.wire_line(rid)))
        helper.pending[rid] = (key, now, now + timeout)
        self._keys[key] = (helper, rid)
        return True

    def outstanding(self, key: Hashable) -> float | None:
        """When the running check of ``key`` was sent (monotonic), or None when none runs."""
        entry = self._keys.get(key)
        if entry is None:
            return None
        helper, rid = entry
        return helper.pending[rid][1]

    def forget(self, key: Hashable) -> None:
        """Drop interest in ``key``'s running check: its answer, if it ever comes, is discarded."""
        entry = self._keys.pop(key, None)
        if entry is not None:
            helper, rid = entry
            helper.pending[rid] = (_DROPPED, *helper.pending[rid][1:])

    def wait(self, timeout: float) -> list[tuple[Hashable, CheckResult]]:
        """Wait up to ``timeout`` seconds for answers; returns (key, result) of every finished check."""
        self._reap()
        if _abandoned:
            reap_abandoned()
        self._flush()
        out: list[tuple[Hashable, CheckResult]] = []
        for sel_key, _ in self._sel.select(max(0.0, timeout)):
            if sel_key.fd == self._wake_r:
                _drain(self._wake_r)
                continue
            helper = self._helpers.get(sel_key.fd)
            if helper is not None:
                self._read(helper, out)
        return out

    def wakeup(self) -> None:
        """Make a running :meth:`wait` return now; the one method safe to call from any thread."""
        _poke(self._wake_w)

    def check(self, request: CheckRequest, *, timeout: float) -> CheckResult | None:
        """One blocking check for one-shot use (``hoststorage apply``); None on timeout (abandoned)."""
        key = ("oneshot", self._next_id + 1)
        if not self.submit(key, request, timeout=timeout):
            return None
        deadline = self._clock() + timeout
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                self.forget(key)
                return None
            for k, result in self.wait(remaining):
                if k == key:
                    return result

    def remove_probe(self, root: str, path: str, *, expect: tuple[int, int], timeout: float) -> bool | None:
        """Unlink the probe file this host created (``expect``: its recorded device and inode) through a
        helper: True removed, False absent, None no answer. Something else at that name raises
        :class:`hostlib.errors.Conflict` (nothing removed); an error the storage answered with (a gluster
        client with no brick: ENOTCONN; EIO, EROFS) raises :class:`OSError` with its errno."""
        helper = self._helper_for_work(self._clock())
        if helper is None:
            return None
        self._next_id += 1
        rid = self._next_id
        key = ("remove", rid)
        req = {"id": rid, "op": "remove", "root": root, "path": path, "expect": list(expect)}
        line = json.dumps(req) + "\n"
        now = self._clock()
        helper.outbox.append((rid, line.encode()))
        helper.pending[rid] = (key, now, now + timeout)
        self._keys[key] = (helper, rid)
        deadline = now + timeout
        while (remaining := deadline - self._clock()) > 0:
            for k, result in self.wait(remaining):
                if k == key:
                    if not result.ok and result.stage == "conflict":
                        raise errors.Conflict(result.error)
                    if not result.ok and result.errno == errno.ENOENT:
                        return False  # a directory on the way is gone: so is the probe file at that name
                    if not result.ok:
                        raise OSError(result.errno or 0, result.error or f"cannot remove probe file {path}")
                    return result.kind == "removed"
        self.forget(key)
        return None

    def close(self) -> None:
        """Retire every helper without waiting; exited ones are reaped, stuck ones left to finish."""
        self._closed = True
        for helper in list(self._helpers.values()):
            helper.retire()
        self._keys.clear()
        # Give exiting helpers a moment to be reaped; a stuck one stays behind (and is not ours to wait).
        deadline = time.monotonic() + 1.0
        while self._helpers and time.monotonic() < deadline:
            self.wait(0.05)
        while self._zombies and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.01)
        for helper in self._helpers.values():
            log.warning("check helper pid %s still holds %d stuck checks; left behind",
                        helper.pid, len(helper.pending))
            self._sel.unregister(helper.stdout_fd)
            assert helper.proc.stdout is not None
            helper.proc.stdout.close()
            _abandon(helper.proc)
        for helper in self._zombies:
            _abandon(helper.proc)
        self._helpers.clear()
        self._zombies.clear()
        self._sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def stats(self) -> dict[str, int]:
        return {
            "helpers": len(self._helpers),
            "retired": sum(1 for h in self._helpers.values() if h.retired),
            "zombies": len(self._zombies),
            "outstanding": len(self._keys),
            "started": self.started_helpers,
        }

    def helper_pids(self) -> list[int]:
        return [h.pid for h in self._helpers.values()] + [h.pid for h in self._zombies]

    # -- internals ----------------------------------------------------------------------------------
    def _helper_for_work(self, now: float) -> _Helper | None:
        cur = self._current
        if cur is not None and (cur.retired or cur.eof):
            cur = None
        if cur is not None and cur.stuck(now) >= self._max_stuck:
            log.warning("check helper pid %s holds %d stuck checks; moving new checks to a fresh helper",
                        cur.pid, cur.stuck(now))
            old, unsent = cur, cur.outbox
            old.outbox = []
            old.retire()
            cur = self._fresh_helper()
            self._rehome(unsent, old, cur)
            return cur
        if cur is None:
            cur = self._fresh_helper()
        return cur

    def _fresh_helper(self) -> _Helper | None:
        self._current = None
        retired = sum(1 for h in self._helpers.values() if h.retired)
        if retired >= self._max_retired:
            log.error("%d retired check helpers still hold stuck checks; refusing new work", retired)
            return None
        cur = _Helper(self._argv, self._env)
        self.started_helpers += 1
        self._helpers[cur.stdout_fd] = cur
        self._sel.register(cur.stdout_fd, selectors.EVENT_READ)
        self._current = cur
        return cur

    def _rehome(self, unsent: list[tuple[int, bytes]], old: _Helper, new: _Helper | None) -> None:
        """Requests queued for a helper that was just retired and never sent to it.

        A retired helper gets no more requests (its stdin closes, its workers may all be stuck), so
        these go to ``new`` under the same ids; with no helper to take them, their keys are freed and
        the next tick checks again. Without this a path queued at the wrong moment waits forever.
        """
        for rid, line in unsent:
            entry = old.pending.pop(rid, None)
            if entry is None:
                continue
            key = entry[0]
            if new is None:
                if self._keys.get(key) == (old, rid):
                    del self._keys[key]
                continue
            new.outbox.append((rid, line))
            new.pending[rid] = entry
            if self._keys.get(key) == (old, rid):
                self._keys[key] = (new, rid)

    def _flush(self) -> None:
        for helper in list(self._helpers.values()):
            if helper.outbox and not helper.retired:
                try:
                    helper.flush()
                except OSError as exc:
                    # Its pending checks are freed when its stdout reaches EOF.
                    log.warning("check helper pid %s does not take requests (%s); retiring it",
                                helper.pid, exc)
                    helper.outbox.clear()
                    helper.retire()
                    if self._current is helper:
                        self._current = None

    def _read(self, helper: _Helper, out: list[tuple[Hashable, CheckResult]]) -> None:
        try:
            chunk = os.read(helper.stdout_fd, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        now = self._clock()
        if not chunk:
            self._on_eof(helper)
            return
        data = helper.buffer + chunk
        *lines, helper.buffer = data.split(b"\n")
        for line in lines:
            try:
                msg = json.loads(line)
            except ValueError:
                log.error("check helper pid %s sent a malformed answer", helper.pid)
                continue
            rid = msg.get("id")
            entry = helper.pending.pop(rid, None) if isinstance(rid, int) else None
            if entry is None:
                continue
            key, sent, _ = entry
            if key is _DROPPED:
                continue
            if self._keys.get(key) == (helper, rid):
                del self._keys[key]
                out.append((key, CheckResult.from_wire(msg, sent, now)))

    def _on_eof(self, helper: _Helper) -> None:
        self._sel.unregister(helper.stdout_fd)
        del self._helpers[helper.stdout_fd]
        helper.eof = True
        if not helper.retired:
            log.warning("check helper pid %s exited unexpectedly; %d checks lost",
                        helper.pid, len(helper.pending))
        # Its unanswered checks are lost: free their keys so the next tick can check again.
        for rid, (key, _, _) in helper.pending.items():
            if self._keys.get(key) == (helper, rid):
                del self._keys[key]
        helper.pending.clear()
        helper.retire()
        assert helper.proc.stdout is not None
        helper.proc.stdout.close()
        if self._current is helper:
            self._current = None
        self._zombies.append(helper)
        self._reap()

    def _reap(self) -> None:
        if self._zombies:
            self._zombies = [h for h in self._zombies if h.proc.poll() is None]


_DROPPED: Hashable = object()
