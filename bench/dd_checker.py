"""VDSM's check as a baseline for bench/monitors.py: one ``dd ... iflag=direct`` child per check.

Not production code: the agent uses :class:`hostlib.checker.Checker` (long-lived helpers, statvfs,
domain detection). This keeps VDSM's design measurable with the same interface (``CheckBackend``).
"""

from __future__ import annotations

import os
import re
import selectors
import subprocess
import time
from collections.abc import Callable, Hashable

from hostlib import checker

_DD_SECONDS_RE = re.compile(rb"copied, ([0-9.eE+-]+) s")


class DdChecker:
    """VDSM's check: a ``dd if=PATH of=/dev/null bs=4096 count=1 iflag=direct`` child per check.

    The baseline for bench/monitors.py. Same interface as :class:`hostlib.checker.Checker`; reads
    ``request.path`` only (no statvfs, no detection), the read delay is what dd reports, like VDSM's
    ``check.py``.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, dd: str = "dd") -> None:
        self._clock = clock
        self._dd = dd
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = checker._wake_pipe(self._sel)
        self._running: dict[int, tuple[Hashable, subprocess.Popen[bytes], float, list[bytes]]] = {}
        self._keys: dict[Hashable, float] = {}
        self._zombies: list[subprocess.Popen[bytes]] = []

    def submit(self, key: Hashable, request: checker.CheckRequest, *, timeout: float) -> bool:
        if key in self._keys:
            return False
        assert request.path is not None, "the dd baseline reads an explicit path"
        now = self._clock()
        proc = subprocess.Popen(
            [self._dd, f"if={request.path}", "of=/dev/null", "bs=4096", "count=1", "iflag=direct"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            close_fds=True,
        )
        assert proc.stderr is not None
        fd = proc.stderr.fileno()
        os.set_blocking(fd, False)
        self._sel.register(fd, selectors.EVENT_READ)
        self._running[fd] = (key, proc, now, [])
        self._keys[key] = now
        return True

    def outstanding(self, key: Hashable) -> float | None:
        return self._keys.get(key)

    def wait(self, timeout: float) -> list[tuple[Hashable, checker.CheckResult]]:
        self._zombies = [p for p in self._zombies if p.poll() is None]
        out: list[tuple[Hashable, checker.CheckResult]] = []
        for sel_key, _ in self._sel.select(max(0.0, timeout)):
            fd = sel_key.fd
            if fd == self._wake_r:
                checker._drain(fd)
                continue
            key, proc, sent, chunks = self._running[fd]
            try:
                chunk = os.read(fd, checker._READ_CHUNK)
            except BlockingIOError:
                continue
            if chunk:
                chunks.append(chunk)
                continue
            self._sel.unregister(fd)
            del self._running[fd]
            assert proc.stderr is not None
            proc.stderr.close()
            self._keys.pop(key, None)
            rc = proc.poll()
            if rc is None:
                self._zombies.append(proc)
            err = b"".join(chunks)
            now = self._clock()
            match = _DD_SECONDS_RE.search(err)
            # A dd that printed its summary succeeded even if it has not been reaped yet (rc None).
            if rc in (0, None) and match:
                out.append((key, checker.CheckResult(ok=True, started=sent, finished=now,
                                             read_delay=float(match.group(1)), kind="file")))
            else:
                text = err.decode(errors="replace").strip().splitlines()
                out.append((key, checker.CheckResult(ok=False, started=sent, finished=now, stage="read",
                                             error=text[0] if text else f"dd exited {rc}")))
        return out

    def close(self) -> None:
        for fd, (_, proc, _, _) in list(self._running.items()):
            self._sel.unregister(fd)
            assert proc.stderr is not None
            proc.stderr.close()
            self._zombies.append(proc)
        self._running.clear()
        self._keys.clear()
        deadline = time.monotonic() + 1.0
        while self._zombies and time.monotonic() < deadline:
            self._zombies = [p for p in self._zombies if p.poll() is None]
            time.sleep(0.02)
        for proc in self._zombies:
            checker._abandon(proc)
        self._zombies.clear()
        self._sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def wakeup(self) -> None:
        checker._poke(self._wake_w)

    def stats(self) -> dict[str, int]:
        return {"outstanding": len(self._keys), "zombies": len(self._zombies)}
