"""A broken state dir (issue 9, class 8) and dry runs that change nothing (class 10), made real.

The state dir is a real small file system mounted for the test (a tmpfs, or ext4 on a loop device)
and really filled; connections are real (an ext4 loop device mounted under the mount base, a localfs
link). Every case runs the installed ``hoststorage`` command and asserts the one line the user sees,
that stderr has no traceback, and that the ledger and the host agree afterwards: what the ledger lists
is on the host, and nothing hoststorage made is on the host without its entry.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pathlib
import secrets
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from hostlib import commands, mounts

pytestmark = [pytest.mark.host]

HOSTSTORAGE = str(pathlib.Path(sys.executable).parent / "hoststorage")
QEMU_USER = "HOSTSTORAGE_QEMU_USER"  # conftest turns qemu's access check off for test mount bases
_run = commands.Runner()


@contextlib.contextmanager
def mounted(source: str, target: pathlib.Path, *options: str, fstype: str | None = None) -> Iterator[None]:
    target.mkdir(parents=True, exist_ok=True)
    argv = ["mount", *(["-t", fstype] if fstype else []), *(["-o", ",".join(options)] if options else [])]
    _run([*argv, source, str(target)], timeout=30)
    try:
        yield
    finally:
        _run(["umount", "-l", str(target)], timeout=30, check=False)


def fill(fs: pathlib.Path) -> None:
    """Write ``fs/filler`` until the file system has not one byte left (root's reserve included)."""
    fd = os.open(fs / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            while True:
                try:
                    os.write(fd, bytes(chunk))
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
    with pytest.raises(OSError, match="No space left"), open(fs / "probe", "wb") as f:  # really full
        f.write(bytes(4096))
        f.flush()
        os.fsync(f.fileno())


class Host:
    """One state dir, mount base and allowed dir; runs the real command."""

    def __init__(self, state: pathlib.Path, base: str, allowed: pathlib.Path) -> None:
        self.state, self.base, self.allowed = state, base, allowed

    def __call__(self, *args: str, stdin: str | None = None, flags: tuple[str, ...] | None = None,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        full_env = {k: v for k, v in os.environ.items() if k == QEMU_USER or not k.startswith("HOSTSTORAGE_")}
        full_env.update(env or {})
        if flags is None:
            flags = ("--state-dir", str(self.state), "--mount-base", self.base,
                     "--allowed-host-path", str(self.allowed))  # fmt: skip
        proc = subprocess.run([HOSTSTORAGE, *flags, *args], capture_output=True, text=True, input=stdin,
                              env=full_env, timeout=120, check=False)  # fmt: skip
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def json(self, *args: str) -> tuple[int, list[dict[str, Any]]]:
        proc = self(*args, "-o", "json")
        print(args, proc.returncode, proc.stdout, proc.stderr)  # shown when a test fails
        return proc.returncode, json.loads(proc.stdout)

    def ledger(self) -> list[dict[str, Any]]:
        path = self.state / "ledger.json"
        return json.loads(path.read_text())["entries"] if path.exists() else []


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("hoststorage: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def conn(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "hoststorage.io/v1alpha1", "kind": "StorageConnection", "metadata": {"name": name},
            "spec": spec}  # fmt: skip


def write(path: pathlib.Path, *docs: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump_all(docs))
    return str(path)


def agree(host: Host) -> None:
    """The ledger and the host agree: each entry's mount point is on the host; nothing else of ours is."""
    owned = {e["resource"]["mountPoint"] for e in host.ledger()}
    present = {os.path.join(host.base, n) for n in os.listdir(host.base)}
    assert present == owned, (present, owned)
    for mp in owned:
        assert os.path.islink(mp) or mounts.mounts_at(mp), f"{mp} is in the ledger but not on the host"


@pytest.fixture
def state_fs(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path, loop_device: Any
) -> Iterator[pathlib.Path]:
    """A small real file system for the state dir: tmpfs (param "tmpfs") or ext4 on a loop device."""
    fs = tmp_path / f"fs-{secrets.token_hex(3)}"
    kind = getattr(request, "param", "tmpfs")
    if kind == "tmpfs":
        with mounted("tmpfs", fs, "size=2m", "mode=0700", fstype="tmpfs"):
            yield fs
    else:
        with mounted(loop_device("ext4", size_mb=16), fs):
            yield fs


@pytest.fixture
def host(state_fs: pathlib.Path, mount_base: str, tmp_path: pathlib.Path) -> Host:
    allowed = tmp_path / "allowed"
    (allowed / "a").mkdir(parents=True)
    (allowed / "late").mkdir()
    return Host(state_fs / "state", mount_base, allowed)


@pytest.fixture
def two_connections(host: Host, loop_device: Any, tmp_path: pathlib.Path) -> Callable[..., str]:
    """A manifest of a posixfs connection (a real ext4 mount) and a localfs link, plus extra objects."""
    dev = loop_device("ext4")

    def manifest(*extra: dict[str, Any]) -> str:
        return write(tmp_path / f"m-{len(extra)}.yaml",
                     conn("disk", {"type": "posixfs", "posixfs": {"source": dev, "vfsType": "ext4"}}),
                     conn("link", {"type": "localfs", "localfs": {"path": str(host.allowed / "a")}}),
                     *extra)  # fmt: skip

    return manifest


def late(host: Host) -> dict[str, Any]:
    return conn("late", {"type": "localfs", "localfs": {"path": str(host.allowed / "late")}})


# ------------------------------------------------------------------------------------------ full disk


@pytest.mark.parametrize("state_fs", ["tmpfs", "ext4"], indirect=True)
def test_full_state_fs_apply_fails_before_any_change_and_delete_still_tears_down(
    host: Host, state_fs: pathlib.Path, two_connections: Callable[..., str]
) -> None:
    first = two_connections()
    assert host.json("apply", "-f", first)[0] == 0
    agree(host)
    fill(state_fs)
    ledger_before = (host.state / "ledger.json").read_bytes()

    # apply: the two recorded objects need no write; the new one fails its write-ahead, host untouched.
    rc, out = host.json("apply", "-f", two_connections(late(host)))
    assert rc == 1
    by_name = {r["name"]: r for r in out}
    assert by_name["disk"]["ready"] and by_name["link"]["ready"]
    assert (by_name["late"]["reason"], by_name["late"]["message"]) == (
        "StateDirUnusable",
        f"cannot write ledger {host.state}/ledger.json: No space left on device",
    )
    assert (host.state / "ledger.json").read_bytes() == ledger_before
    agree(host)

    # delete on the full disk: unmounts, unlinks and forgets everything it made.
    proc = host("delete", "-f", two_connections(late(host)), "-o", "json")
    assert proc.returncode == 0, proc.stderr
    assert {r["name"]: r["phase"] for r in json.loads(proc.stdout)} == {
        "disk": "Detached", "link": "Detached", "late": "Detached"}  # fmt: skip
    assert host.ledger() == []
    agree(host)
    assert not [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()], proc.stderr


def test_a_state_dir_without_reserve_refuses_delete_on_a_full_disk_before_any_change(
    host: Host, state_fs: pathlib.Path, two_connections: Callable[..., str]
) -> None:
    """A state dir an older version wrote has no reserve: unmounting without being able to forget would
    leave a ledger entry the next apply mounts again, so delete refuses, with the mount in place."""
    manifest = two_connections()
    assert host.json("apply", "-f", manifest)[0] == 0
    (host.state / "ledger.reserve").unlink()
    fill(state_fs)
    before = (host.state / "ledger.json").read_bytes()
    proc = host("delete", "-f", manifest)
    assert proc.returncode == 1
    assert error_line(proc) == (f"hoststorage: error: StateDirUnusable: cannot keep room for the ledger in "
                                f"{host.state}/ledger.reserve: No space left on device")  # fmt: skip
    assert (host.state / "ledger.json").read_bytes() == before and len(host.ledger()) == 2
    agree(host)
    (state_fs / "filler").unlink()
    assert host("delete", "-f", manifest).returncode == 0
    assert host.ledger() == []
    agree(host)


def test_a_read_only_state_fs_is_one_line_and_changes_nothing(
    host: Host, state_fs: pathlib.Path, two_connections: Callable[..., str]
) -> None:
    manifest = two_connections()
    assert host.json("apply", "-f", manifest)[0] == 0
    _run(["mount", "-o", "remount,ro", str(state_fs)], timeout=30)
    try:
        for verb in ("apply", "delete"):
            proc = host(verb, "-f", manifest)
            assert proc.returncode == 1
            assert error_line(proc) == (f"hoststorage: error: StateDirUnusable: cannot open host lock "
                                        f"{host.state}/lock: Read-only file system")  # fmt: skip
            agree(host)
            assert len(host.ledger()) == 2
    finally:
        _run(["mount", "-o", "remount,rw", str(state_fs)], timeout=30)
    assert host("delete", "-f", manifest).returncode == 0
    agree(host)


# ---------------------------------------------------------------------------------- broken state dirs


@pytest.fixture
def plain(tmp_path: pathlib.Path, require_root: None) -> Host:
    allowed = tmp_path / "allowed"
    (allowed / "a").mkdir(parents=True)
    (allowed / "b").mkdir()
    base = tmp_path / "mnt"
    base.mkdir()
    return Host(tmp_path / "state", str(base), allowed)


def _verbs(host: Host, manifest: str) -> list[tuple[str, ...]]:
    return [("apply", "-f", manifest), ("apply", "--dry-run", "-f", manifest), ("delete", "-f", manifest),
            ("delete", "--dry-run", "-f", manifest), ("status",)]  # fmt: skip


def test_a_ledger_that_is_a_directory_is_one_line(plain: Host, tmp_path: pathlib.Path) -> None:
    (plain.state / "ledger.json").mkdir(parents=True)
    manifest = write(
        tmp_path / "m.yaml", conn("c", {"type": "localfs", "localfs": {"path": str(plain.allowed / "a")}})
    )
    for verb in _verbs(plain, manifest):
        proc = plain(*verb)
        assert proc.returncode == 1, verb
        assert error_line(proc) == (
            f"hoststorage: error: LedgerCorrupt: ledger {plain.state}/ledger.json is not a regular file"
        ), verb
    assert os.listdir(plain.base) == [] and (plain.state / "ledger.json").is_dir()


def test_a_state_dir_that_is_a_file_is_one_line(plain: Host, tmp_path: pathlib.Path) -> None:
    plain.state.write_text("not a directory\n")
    manifest = write(
        tmp_path / "m.yaml", conn("c", {"type": "localfs", "localfs": {"path": str(plain.allowed / "a")}})
    )
    for verb in _verbs(plain, manifest):
        proc = plain(*verb)
        assert proc.returncode == 1, verb
        assert (
            error_line(proc)
            == f"hoststorage: error: StateDirUnusable: state dir {plain.state} is not a directory"
        )
    assert plain.state.read_text() == "not a directory\n" and os.listdir(plain.base) == []


KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


@pytest.mark.parametrize("own_mount_base", [False, True])
def test_the_agent_refuses_a_state_dir_that_is_a_file_with_one_line(
    plain: Host, tmp_path: pathlib.Path, own_mount_base: bool
) -> None:
    plain.state.write_text("x\n")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    flags = ("--state-dir", str(plain.state), *(("--mount-base", plain.base) if own_mount_base else ()))
    proc = plain("agent", "--kubeconfig", str(kubeconfig), flags=flags, env={"NODE_NAME": "n1"})
    assert proc.returncode == 2
    expected = (f"state dir {plain.state} is not a directory" if own_mount_base
                else f"cannot create mount base {plain.state}/mnt: Not a directory")  # fmt: skip
    assert error_line(proc) == f"hoststorage: error: {expected}"


# ---------------------------------------------------------------------------------- dry runs change nothing


def snapshot(*roots: str | pathlib.Path) -> list[tuple[Any, ...]]:
    """Every entry under the roots (roots included): name, inode, type and mode, size, mtime, content."""
    out: list[tuple[Any, ...]] = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [".", *dirnames, *filenames]:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                digest = ""
                if stat.S_ISREG(st.st_mode):
                    digest = hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()
                elif stat.S_ISLNK(st.st_mode):
                    digest = os.readlink(path)
                out.append((path, st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, digest))
    return sorted(out)


@pytest.mark.parametrize("state", ["used", "admin-made-0700", "missing"])
def test_a_dry_run_creates_and_writes_nothing(plain: Host, tmp_path: pathlib.Path, state: str) -> None:
    link = conn("c", {"type": "localfs", "localfs": {"path": str(plain.allowed / "a")}})
    manifest = write(tmp_path / "m.yaml", link)
    both = write(
        tmp_path / "both.yaml",
        link,
        conn("d", {"type": "localfs", "localfs": {"path": str(plain.allowed / "b")}}),
    )
    if state == "used":
        assert plain("apply", "-f", manifest).returncode == 0  # ledger, lock, reserve, the link
    elif state == "admin-made-0700":
        plain.state.mkdir(mode=0o700)
    roots = [r for r in (plain.state, plain.base) if os.path.lexists(r)]
    before = snapshot(*roots)
    try:
        for verb in ("apply", "delete"):
            proc = plain(verb, "--dry-run", "-f", both)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert "dry run: " in proc.stdout
        assert snapshot(*roots) == before
        assert os.path.lexists(plain.state) == (state != "missing")
    finally:
        plain("delete", "-f", both)


def test_a_dry_run_waits_for_a_real_run_and_names_it(plain: Host, tmp_path: pathlib.Path) -> None:
    manifest = write(
        tmp_path / "m.yaml", conn("c", {"type": "localfs", "localfs": {"path": str(plain.allowed / "a")}})
    )
    assert plain("apply", "-f", manifest).returncode == 0
    holder = textwrap.dedent("""\
        import sys, time
        from hostlib import ledger
        with ledger.host_lock(sys.argv[1]):
            print("locked", flush=True)
            time.sleep(30)
        """)
    with subprocess.Popen(
        [sys.executable, "-c", holder, str(plain.state)], stdout=subprocess.PIPE, text=True
    ) as p:
        try:
            assert p.stdout is not None and p.stdout.readline().strip() == "locked"
            proc = plain("apply", "--dry-run", "-f", manifest, env={"HOSTSTORAGE_LOCK_TIMEOUT": "0.3"})
            assert proc.returncode == 1
            held = f"hoststorage: error: HostLocked: host lock {plain.state}/lock is held by pid {p.pid}"
            assert error_line(proc) == held
        finally:
            p.kill()
            p.wait()
    assert plain("delete", "-f", manifest).returncode == 0
