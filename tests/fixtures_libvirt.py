"""Real libvirtd and tgtd for the host tests: reuse a running daemon, start one only when needed.

- ``libvirtd`` (session): a libvirtd answering on ``qemu:///system``. Started with ``libvirtd -d`` when
  the socket does not answer, and stopped at the end only if this fixture started it.
- ``restart_libvirtd()``: stop the running libvirtd and start it again (the outage test); returns the
  seconds the daemon was away.
- ``tgt_target`` (function): a fresh iSCSI target on 127.0.0.1 with a unique tid and IQN, backed by a
  file LUN, optionally with a CHAP account; removed at teardown even when the test failed. tgtd is
  started (portal 127.0.0.1:3260) only when it is not running, and stopped only if started here.
- ``virsh(*args)``: the independent witness, run with a timeout; ``wait_for(cond, timeout, what)`` polls.
- ``virtlogd`` (session) / ``virtlogd_running()``: libvirt's log daemon, which writes the serial-console
  files of the VM tests' guests; started with ``virtlogd -d`` only when not running, stopped only then.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest

from hostlib import libvirt_pools

URI = "qemu:///system"
LIBVIRTD_PID = "/run/libvirtd.pid"


def virsh(*args: str, check: bool = True, timeout: float = 30.0) -> str:
    proc = subprocess.run(
        ["virsh", "-c", URI, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"virsh {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def vol_names(pool: str) -> list[str]:
    """Volume names of a running pool, from ``virsh vol-list`` (its table: a header, dashes, rows)."""
    lines = virsh("vol-list", pool).splitlines()
    rows = lines[2:] if len(lines) >= 2 else []
    return [row.split()[0] for row in rows if row.strip()]


def libvirtd_answers(timeout: float = 5.0) -> bool:
    try:
        proc = subprocess.run(
            ["virsh", "-c", URI, "pool-list", "--all", "--name"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


def libvirtd_pid() -> int | None:
    try:
        with open(LIBVIRTD_PID, encoding="ascii") as f:
            pid = int(f.read().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def start_libvirtd() -> None:
    for d in ("/var/log/libvirt", "/run/libvirt"):
        os.makedirs(d, exist_ok=True)
    subprocess.run(["libvirtd", "-d"], check=True, timeout=30)
    wait_for(libvirtd_answers, 30, "libvirtd to answer")


def stop_libvirtd() -> None:
    pid = libvirtd_pid()
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(gone, 30, f"libvirtd pid {pid} to exit")


def restart_libvirtd(down_seconds: float = 0.0) -> float:
    """Stop libvirtd, stay down ``down_seconds``, start it again; returns the seconds it was away."""
    start = time.monotonic()
    stop_libvirtd()
    time.sleep(down_seconds)
    start_libvirtd()
    return time.monotonic() - start


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root: libvirtd manages host storage")
    started = False
    if not libvirtd_answers():
        start_libvirtd()
        started = True
    try:
        yield URI
    finally:
        if started:
            stop_libvirtd()


# ------------------------------------------------------------------------------------------------ tgtd


def _tgtadm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["tgtadm", "--lld", "iscsi", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise AssertionError(f"tgtadm {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def tgtd_answers() -> bool:
    try:
        return _tgtadm("--mode", "target", "--op", "show", check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture(scope="session")
def tgtd() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("needs root: tgtd is an iSCSI target daemon")
    proc: subprocess.Popen[bytes] | None = None
    if not tgtd_answers():
        proc = subprocess.Popen(
            ["tgtd", "-f", "--iscsi", "portal=127.0.0.1:3260"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(tgtd_answers, 20, "tgtd to answer")
    try:
        yield
    finally:
        if proc is not None:
            _tgtadm("--mode", "system", "--op", "delete", "--force", check=False)
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@dataclasses.dataclass(frozen=True)
class TgtTarget:
    tid: int
    iqn: str
    initiator: str
    lun_path: str
    lun_bytes: int
    username: str | None = None
    password: str | None = None


def _tid_in_use(tid: int) -> bool:
    out = _tgtadm("--mode", "target", "--op", "show").stdout
    return f"Target {tid}:" in out


@pytest.fixture
def tgt_target(tgtd: None, tmp_path: object) -> Iterator[Callable[..., TgtTarget]]:
    """A factory: ``tgt_target(chap=False, size_mb=16)`` -> a new target; all removed at teardown."""
    made: list[tuple[TgtTarget, str]] = []

    def make(*, chap: bool = False, size_mb: int = 16) -> TgtTarget:
        suffix = secrets.token_hex(4)
        for _ in range(20):
            tid = 1000 + secrets.randbelow(30000)
            if not _tid_in_use(tid):
                break
        else:
            raise AssertionError("no free tgt tid found")
        iqn = f"iqn.2026-01.io.hoststorage.test:t{suffix}"
        initiator = f"iqn.2026-01.io.hoststorage.test:init{suffix}"
        fd, lun = tempfile.mkstemp(prefix=f"hs-lun-{suffix}-", suffix=".img")
        os.close(fd)
        os.truncate(lun, size_mb * 1024 * 1024)
        _tgtadm("--mode", "target", "--op", "new", "--tid", str(tid), "-T", iqn)
        user = password = None
        target = TgtTarget(tid, iqn, initiator, lun, size_mb * 1024 * 1024)
        made.append((target, lun))
        _tgtadm("--mode", "logicalunit", "--op", "new", "--tid", str(tid), "--lun", "1", "-b", lun)
        _tgtadm("--mode", "target", "--op", "bind", "--tid", str(tid), "-I", "127.0.0.1")
        if chap:
            user, password = f"hsuser{suffix}", f"hs-pw-{secrets.token_hex(8)}"
            _tgtadm("--mode", "account", "--op", "new", "--user", user, "--password", password)
            _tgtadm("--mode", "account", "--op", "bind", "--tid", str(tid), "--user", user)
            target = dataclasses.replace(target, username=user, password=password)
            made[-1] = (target, lun)
        return target

    try:
        yield make
    finally:
        for target, lun in made:
            _tgtadm("--mode", "target", "--op", "delete", "--force", "--tid", str(target.tid), check=False)
            if target.username:
                _tgtadm("--mode", "account", "--op", "delete", "--user", target.username, check=False)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lun)


@pytest.fixture
def iscsid() -> Iterator[None]:
    """iscsid for iscsiadm's logins (kernel initiator); started only if not running, and stopped again."""
    running = subprocess.run(["pgrep", "-x", "iscsid"], capture_output=True, check=False).returncode == 0
    if not running:
        subprocess.run(["iscsid"], check=True, timeout=30)
    try:
        yield
    finally:
        if not running:
            subprocess.run(["pkill", "-x", "iscsid"], check=False)


@pytest.fixture
def layer(libvirtd: str) -> Iterator[libvirt_pools.PoolLayer]:
    """A started pool layer on the test libvirtd (fast reconnect backoff), closed afterwards."""
    lay = libvirt_pools.PoolLayer(libvirtd, backoff=(0.1, 1.0))
    assert lay.connect()
    try:
        yield lay
    finally:
        lay.close()


# --------------------------------------------------------------------------------------------- virtlogd


def virtlogd_pids() -> list[int]:
    proc = subprocess.run(["pgrep", "-x", "virtlogd"], capture_output=True, text=True, check=False)
    return [int(p) for p in proc.stdout.split()]


@contextlib.contextmanager
def virtlogd_running() -> Iterator[None]:
    """virtlogd (libvirt's log daemon: it writes qemu's serial-console files); started only if not
    running, and then stopped again."""
    if virtlogd_pids():
        yield
        return
    subprocess.run(["virtlogd", "-d"], check=True, timeout=30)
    wait_for(lambda: bool(virtlogd_pids()) and os.path.exists("/run/libvirt/virtlogd-sock"), 30, "virtlogd")
    pids = virtlogd_pids()
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


@pytest.fixture(scope="session")
def virtlogd(libvirtd: str) -> Iterator[None]:
    with virtlogd_running():
        yield
