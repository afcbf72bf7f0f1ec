"""Real storage for host tests: temp mount bases, loop devices with ext4/xfs, a gluster volume on loopback.

Fixtures (all need root; they skip with the reason when the host cannot provide them):

``mount_base`` -> str
    A fresh empty directory to use as ``HostConfig.mount_base``. At teardown everything still mounted at
    or below it is lazily unmounted (deepest first), so a failing test never leaves a mount behind.

``hs_host_config`` -> hostlib.config.HostConfig
    A HostConfig on a temp state dir with ``mount_base`` above and one allowed host path
    (``<tmp>/allowed``, created) for localfs / dir pools / hostPath monitors.

``loop_device`` -> factory ``(fstype="ext4", size_mb=None) -> str``
    Makes a sparse image in a temp dir, formats it (ext4, xfs or btrfs; xfs needs >= 300 MiB, sparse so
    it costs nothing) and attaches it with ``losetup --find --show``; returns the device path
    (``/dev/loopN``). At teardown every mount of that device is lazily unmounted and the device is
    detached. ``loop_device.image(dev)`` gives the backing file of a device the factory made.

``gluster_volume`` (session scope) -> GlusterVolume(server, volume, brick_dir; brick_pid())
    glusterd on this host (started with ``glusterd -p <pidfile>`` when not running: there is no systemd
    here) and a one-brick volume ``hs<random>`` created with ``force`` on ``127.0.0.2:<brick_dir>``.
    The gluster CLI refuses 127.0.0.1 and "localhost" as brick hosts; 127.0.0.2 is loopback too.
    ``network.ping-timeout`` is set to ``GLUSTER_PING_TIMEOUT`` (2 s) so hung-storage tests (SIGSTOP the
    brick: ``os.kill(gluster_volume.brick_pid(), signal.SIGSTOP)``) see errors after seconds instead of
    the default 42 s; remember to SIGCONT it (``resume_brick()``; teardown also does, defensively).
    Measured here with a SIGSTOPped brick, a direct-I/O 4 KiB read on the FUSE mount fails with
    "Transport endpoint is not connected" after 1.8 s (ping-timeout 1, the minimum gluster accepts),
    3.9 s (2) and 5.6 s (3). 2 is the default: 1 s leaves no slack for a loaded 2-core CI machine.
    At session end the volume is stopped and deleted; glusterd is stopped only by the last volume in
    use (each volume registers once, so one process's volumes count apart) and only if a test
    session started it (a shared registry under
    /run/hoststorage-tests/glusterd, guarded by flock: several pytest runs share this machine's
    glusterd).

``own_gluster_volume(brick_dir, options)`` (a context manager, for tests and benches that need a volume
of their own with other options, e.g. the VM tests' ``performance.strict-o-direct on``) is the same volume
life cycle; ``gluster_missing()`` says why this host cannot have one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from hostlib import commands, config, mounts

GLUSTER_SERVER = "127.0.0.2"
GLUSTER_PING_TIMEOUT = 2
GLUSTER_REGISTRY = "/run/hoststorage-tests/glusterd"
XFS_MIN_MB = 320

_run = commands.Runner()


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts, loop devices and daemons are real here")


def unmount_all_under(base: str) -> list[str]:
    """Lazily unmount everything at or below ``base``, deepest first; returns what was unmounted."""
    done = []
    for rec in mounts.mounts_under(base):
        result = _run(["umount", "-l", rec.target], timeout=30, check=False)
        if result.rc == 0:
            done.append(rec.target)
    return done


@pytest.fixture
def mount_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _need_root()
    base = str(tmp_path_factory.mktemp("mnt"))
    try:
        yield base
    finally:
        leftovers = unmount_all_under(base)
        if leftovers:
            print(f"mount_base: unmounted leftovers {leftovers}")


@pytest.fixture
def hs_host_config(mount_base: str, tmp_path_factory: pytest.TempPathFactory) -> config.HostConfig:
    state = tmp_path_factory.mktemp("state")
    allowed = tmp_path_factory.mktemp("allowed")
    return config.HostConfig(state_dir=str(state), mount_base=mount_base, allowed_host_paths=(str(allowed),))


class LoopFactory:
    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.devices: dict[str, str] = {}

    def __call__(self, fstype: str = "ext4", size_mb: int | None = None) -> str:
        mkfs = {
            "ext4": ["mkfs.ext4", "-q", "-F"],
            "xfs": ["mkfs.xfs", "-q", "-f"],
            "btrfs": ["mkfs.btrfs", "-q", "-f"],
        }
        if fstype not in mkfs:
            raise ValueError(f"loop_device: unsupported fstype {fstype!r}")
        if commands.which(mkfs[fstype][0]) is None:
            pytest.skip(f"{mkfs[fstype][0]} is not installed")
        size = size_mb or (XFS_MIN_MB if fstype in ("xfs", "btrfs") else 64)
        image = os.path.join(self.workdir, f"{fstype}-{secrets.token_hex(4)}.img")
        with open(image, "wb") as f:
            f.truncate(size * 1024 * 1024)
        _run([*mkfs[fstype], image], timeout=120)
        try:
            dev = _run(["losetup", "--find", "--show", image], timeout=30).stdout.strip()
        except commands.CommandError as exc:
            pytest.skip(f"cannot attach a loop device: {exc.tool_message}")
        self.devices[dev] = image
        return dev

    def image(self, dev: str) -> str:
        return self.devices[dev]

    def cleanup(self) -> None:
        for dev, image in self.devices.items():
            for rec in reversed(mounts.read_mounts()):
                if rec.source == dev or rec.canonical_source == image:
                    _run(["umount", "-l", rec.target], timeout=30, check=False)
            _run(["losetup", "-d", dev], timeout=30, check=False)
            with contextlib.suppress(OSError):
                os.unlink(image)


@pytest.fixture
def loop_device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopFactory]:
    _need_root()
    if not os.path.exists("/dev/loop-control"):
        pytest.skip("no /dev/loop-control: this kernel has no loop devices")
    factory = LoopFactory(str(tmp_path_factory.mktemp("loop")))
    try:
        yield factory
    finally:
        factory.cleanup()


# ------------------------------------------------------------------------------------------- gluster


@dataclasses.dataclass
class GlusterVolume:
    server: str
    volume: str
    brick_dir: str

    @property
    def remote(self) -> str:
        return f"{self.server}:/{self.volume}"

    def brick_pid(self) -> int | None:
        out = _gluster("volume", "status", self.volume, "--xml", check=False).stdout
        pids = re.findall(r"<pid>(-?\d+)</pid>", out)
        return int(pids[0]) if pids and int(pids[0]) > 0 else None

    def resume_brick(self) -> None:
        pid = self.brick_pid()
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def _gluster(*args: str, check: bool = True, timeout: float = 60) -> commands.Result:
    return _run(["gluster", "--mode=script", *args], timeout=timeout, check=check)


def _glusterd_running() -> bool:
    return _run(["pgrep", "-x", "glusterd"], timeout=10, check=False).rc == 0


def _wait_for_glusterd(deadline: float) -> None:
    while time.monotonic() < deadline:
        if _gluster("pool", "list", check=False, timeout=10).rc == 0:
            return
        time.sleep(0.3)
    raise RuntimeError("glusterd did not answer within its start-up deadline")


@contextlib.contextmanager
def _registry_lock() -> Iterator[None]:
    os.makedirs(os.path.join(GLUSTER_REGISTRY, "users"), exist_ok=True)
    fd = os.open(os.path.join(GLUSTER_REGISTRY, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _live_users() -> list[str]:
    """The registered uses (``<pid>.<token>``) whose process still runs; the others are removed."""
    users = []
    d = os.path.join(GLUSTER_REGISTRY, "users")
    for name in os.listdir(d):
        pid = name.split(".", 1)[0]
        if pid.isdigit() and os.path.exists(f"/proc/{pid}"):
            users.append(name)
        else:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(d, name))
    return users


def _acquire_glusterd() -> str:
    """Register one use of glusterd (starting it if needed); returns the use for :func:`_release_glusterd`.
    One per volume, not per process: a test's own volume released must not stop glusterd under the
    session's volume in the same process (it did, and left that volume and its brick behind)."""
    use = f"{os.getpid()}.{secrets.token_hex(4)}"
    with _registry_lock():
        with open(os.path.join(GLUSTER_REGISTRY, "users", use), "w"):
            pass
        if not _glusterd_running():
            pidfile = os.path.join(GLUSTER_REGISTRY, "glusterd.pid")
            _run(["glusterd", "-p", pidfile], timeout=60)
            with open(os.path.join(GLUSTER_REGISTRY, "started"), "w") as f:
                f.write(str(os.getpid()))
        _wait_for_glusterd(time.monotonic() + 30)
    return use


def _release_glusterd(use: str) -> None:
    with _registry_lock():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(GLUSTER_REGISTRY, "users", use))
        started = os.path.join(GLUSTER_REGISTRY, "started")
        if _live_users() or not os.path.exists(started):
            return
        pidfile = os.path.join(GLUSTER_REGISTRY, "glusterd.pid")
        with contextlib.suppress(OSError, ValueError):
            with open(pidfile) as f:
                pid = int(f.read().strip())
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                if not os.path.exists(f"/proc/{pid}") or _zombie(pid):
                    break
                time.sleep(0.1)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(started)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def gluster_missing() -> str | None:
    """Why this host cannot run a gluster volume on loopback, or None."""
    if os.geteuid() != 0:
        return "needs root: mounts, loop devices and daemons are real here"
    if commands.which("glusterd") is None or commands.which("gluster") is None:
        return "glusterfs-server is not installed"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse: gluster's FUSE client cannot mount here"
    return None


@contextlib.contextmanager
def own_gluster_volume(brick_dir: str, options: dict[str, str] | None = None) -> Iterator[GlusterVolume]:
    """A started one-brick volume ``hs<random>`` (glusterd shared through the registry), gone afterwards.

    ``options`` are ``gluster volume set`` pairs on top of ``network.ping-timeout`` =
    ``GLUSTER_PING_TIMEOUT`` (an option given there wins). Callers check :func:`gluster_missing` first.
    """
    use = _acquire_glusterd()
    vol = GlusterVolume(GLUSTER_SERVER, f"hs{secrets.token_hex(4)}", brick_dir)
    try:
        _gluster("volume", "create", vol.volume, f"{vol.server}:{vol.brick_dir}", "force")
        settings = {"network.ping-timeout": str(GLUSTER_PING_TIMEOUT), **(options or {})}
        for key, value in settings.items():
            _gluster("volume", "set", vol.volume, key, value)
        _gluster("volume", "start", vol.volume)
        deadline = time.monotonic() + 30
        while vol.brick_pid() is None and time.monotonic() < deadline:
            time.sleep(0.3)
        yield vol
    finally:
        vol.resume_brick()
        # Mounts of this volume that a test left behind would hang once the volume is gone.
        for rec in reversed(mounts.read_mounts()):
            if rec.fstype == "fuse.glusterfs" and rec.source.endswith(f":/{vol.volume}"):
                _run(["umount", "-l", rec.target], timeout=30, check=False)
        _gluster("volume", "stop", vol.volume, "force", check=False)
        _gluster("volume", "delete", vol.volume, check=False)
        _release_glusterd(use)


@pytest.fixture(scope="session")
def gluster_volume(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GlusterVolume]:
    missing = gluster_missing()
    if missing:
        pytest.skip(missing)
    with own_gluster_volume(str(tmp_path_factory.mktemp("brick"))) as vol:
        yield vol


@contextlib.contextmanager
def holding_open(path: str) -> Iterator[int]:
    """A child process holding ``path`` open (busy-unmount tests); yields its pid, kills it on exit."""
    code = "import sys, time; f = open(sys.argv[1]); print('ok', flush=True); time.sleep(600)"
    with subprocess.Popen(["python3", "-c", code, path], stdout=subprocess.PIPE) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"ok"
            yield proc.pid
        finally:
            proc.kill()
            proc.wait()
