"""The trust boundary for mounts, block sources, libvirt ownership and hung teardown (issue 9).

Classes 2 (ownership without proof), 3 (stacked mounts), 4 (sources in use) and 9 (teardown on hung
storage). Each rule has fast unit tests that a small mutation of the rule fails (mountinfo stacks, the
in-use decision table on a fake sysfs tree, the UUID claim, the umount argv), and a real exploit on
this host (loop devices with ext4, tmpfs, a gluster volume with its brick SIGSTOPped, libvirtd) that
asserts the host is unchanged: the mount table (``/proc/self/mountinfo``), the attacker's files by
device, inode and content, and ``virsh pool-list --all`` with every pool's UUID.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import pathlib
import signal
import subprocess
import time
import uuid as uuid_mod
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import fixtures_libvirt
import pytest
from fake_runner import FakeRunner

from hostlib import blockdevs, commands, config, connections, errors, ledger, libvirt_pools, mounts
from reconcilers import host as host_mod
from reconcilers import storage_connection, storage_pool

# ------------------------------------------------------------------------------- witnesses of the host


def mount_table() -> list[tuple[int, int, str, str, str, str]]:
    """Every mount of this namespace: (id, parent, dev, target, fstype, source), read afresh."""
    return sorted(
        (r.mount_id, r.parent_id, r.major_minor, r.target, r.fstype, r.source) for r in mounts.read_mounts()
    )


def files(root: str) -> dict[str, tuple[int, int, str]]:
    """Every file under ``root`` by (device, inode, sha256 of its content)."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            st = os.lstat(p)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = (st.st_dev, st.st_ino, hashlib.sha256(f.read()).hexdigest())
    return out


def pools() -> dict[str, tuple[str, str]]:
    """``virsh pool-list --all``: every pool's name -> (UUID, state)."""
    out = {}
    for name in fixtures_libvirt.virsh("pool-list", "--all", "--name").split():
        info = dict(
            (k.strip(), v.strip())
            for k, _, v in (
                line.partition(":") for line in fixtures_libvirt.virsh("pool-info", name).splitlines()
            )
            if v
        )
        out[name] = (info["UUID"], info["State"])
    return out


# ------------------------------------------------------------------------ class 3: mountinfo stacks

# Mount 40 on /m, 41 stacked on it (parent 40), 42 stacked on 41; listed out of order on purpose, so
# "the last line" and "the top of the parent chain" disagree.
STACK = """\
27 1 254:0 / / rw - ext4 /dev/vda rw
40 27 7:1 / /m rw - ext4 /dev/loop1 rw
42 41 0:50 / /m rw - tmpfs evil rw
41 40 0:49 / /m rw - tmpfs other rw
43 27 0:51 / /elsewhere rw - tmpfs x rw
"""


def parsed(text: str) -> list[mounts.MountRecord]:
    return mounts.parse_mountinfo(text, loop_backing=lambda _dev: None)


def test_the_topmost_mount_is_the_top_of_the_parent_chain_not_the_last_line() -> None:
    top = mounts.topmost("/m", parsed(STACK))
    assert top is not None and (top.mount_id, top.source) == (42, "evil")


def test_without_a_parent_chain_the_last_mount_on_the_point_is_on_top() -> None:
    text = (
        "27 1 254:0 / / rw - ext4 /dev/vda rw\n"
        "50 27 7:1 / /m rw - ext4 /dev/loop1 rw\n"
        "51 27 0:9 / /m rw - tmpfs t rw\n"
    )
    top = mounts.topmost("/m", parsed(text))
    assert top is not None and top.mount_id == 51


def test_nothing_mounted_has_no_top() -> None:
    assert mounts.topmost("/nothing", parsed(STACK)) is None
    assert mounts.topmost("/m/", parsed(STACK)) is not None  # the path is compared normalised


def identity(mount_id: int = 40, dev: str = "7:1", fstype: str = "ext4", source: str = "/dev/loop1") -> Any:
    return mounts.MountIdentity(mount_id, dev, fstype, source)


@pytest.mark.parametrize(
    "other",
    [identity(mount_id=41), identity(dev="7:2"), identity(fstype="xfs"), identity(source="/dev/loop2")],
    ids=["mount-id", "device", "fstype", "source"],
)
def test_a_mount_is_ours_only_when_every_part_of_its_identity_matches(other: Any) -> None:
    (record,) = [r for r in parsed(STACK) if r.mount_id == 40]
    assert identity().matches(record)
    assert not other.matches(record)


@pytest.mark.parametrize(
    "raw",
    [None, "40", {}, {"mountId": "40", "majorMinor": "7:1", "fstype": "ext4", "source": "/dev/loop1"},
     {"mountId": True, "majorMinor": "7:1", "fstype": "ext4", "source": "/dev/loop1"},
     {"mountId": 40, "majorMinor": "", "fstype": "ext4", "source": "/dev/loop1"},
     {"mountId": 40, "majorMinor": "7:1", "fstype": "ext4"}],
)  # fmt: skip
def test_a_malformed_recorded_identity_claims_nothing(raw: object) -> None:
    assert mounts.MountIdentity.from_dict(raw) is None


def test_a_recorded_identity_round_trips_through_the_ledger_form() -> None:
    assert mounts.MountIdentity.from_dict(identity().to_dict()) == identity()
    unique = dataclasses.replace(identity(), unique_id=2**31 + 5)
    assert mounts.MountIdentity.from_dict(unique.to_dict()) == unique
    assert mounts.MountIdentity.from_dict({**unique.to_dict(), "uniqueId": "5"}) is None


@pytest.mark.parametrize(("now", "ours"), [(2**31 + 5, True), (2**31 + 9, False), (None, True)])
def test_a_reused_mount_id_is_told_apart_by_the_kernels_unique_id(
    monkeypatch: pytest.MonkeyPatch, now: int | None, ours: bool
) -> None:
    """Same id, device, type and source, but the kernel's 64-bit id (never reused) differs: not ours.
    None: a kernel without statmount(2), where the other fields decide."""
    (record,) = [r for r in parsed(STACK) if r.mount_id == 40]
    monkeypatch.setattr(mounts, "unique_mount_id", lambda mount_id: now if mount_id == 40 else None)
    assert dataclasses.replace(identity(), unique_id=2**31 + 5).matches(record) is ours


def test_the_kernels_unique_mount_id_of_a_real_mount() -> None:
    """listmount(2)/statmount(2) on this host: the root mount's 64-bit id, and none for a missing id."""
    root = mounts.topmost("/")
    assert root is not None
    unique = mounts.unique_mount_id(root.mount_id)
    if unique is None:
        pytest.skip("this kernel has no statmount(2) (Linux 6.8+)")
    assert unique > 2**31 and mounts.MountIdentity.of(root).unique_id == unique
    assert mounts.unique_mount_id(2**31 - 1) is None


class Table(FakeRunner):
    """Replaces the runner and /proc/self/mountinfo: a scripted mount table; umount takes the top."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[mounts.MountRecord] = []
        self.next_id = 100

    def add(self, source: str, target: str, fstype: str = "ext4", dev: str = "7:7") -> mounts.MountRecord:
        below = mounts.topmost(target, self.records)
        parent = below.mount_id if below is not None else 1
        self.next_id += 1
        # canonicalised as the connection's own source is (a /dev/loopN attached here is its file)
        (rec,) = mounts.parse_mountinfo(
            f"{self.next_id} {parent} {dev} / {target} rw - {fstype} {source} rw\n"
        )
        self.records.append(rec)
        return rec

    def read(self, path: str = mounts.MOUNTINFO) -> list[mounts.MountRecord]:
        return list(self.records)

    def answer(self, argv: tuple[str, ...], secrets: tuple[str, ...]) -> tuple[int, str, str]:
        if argv[0] == "mount":
            self.add(argv[-2], argv[-1], argv[2])
        elif argv[0] == "umount":
            top = mounts.topmost(argv[-1], self.records)
            self.records = [r for r in self.records if r is not top]
        return 0, "", ""


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> Table:
    t = Table()
    monkeypatch.setattr(mounts, "read_mounts", t.read)
    monkeypatch.setattr(blockdevs, "uses", lambda device, **kw: [])  # the in-use rule is pinned below
    monkeypatch.setattr(mounts, "unique_mount_id", lambda mount_id: None)  # the fake table's ids only
    return t


@pytest.fixture
def fake_host(tmp_path: pathlib.Path, table: Table) -> host_mod.Host:
    cfg = config.HostConfig(state_dir=str(tmp_path / "state"), mount_base=str(tmp_path / "mnt"), runner=table)
    return host_mod.Host.for_config(cfg)


def posixfs_spec(name: str = "c1", source: str = "/dev/loop7") -> storage_connection.ConnectionSpec:
    return storage_connection.parse(
        {
            "apiVersion": "hoststorage.io/v1alpha1",
            "kind": "StorageConnection",
            "metadata": {"name": name},
            "spec": {"type": "posixfs", "posixfs": {"source": source, "vfsType": "ext4"}},
        }
    )


def umounts(table: Table) -> list[tuple[str, ...]]:
    return [c for c in table.calls if c[0] == "umount"]


@pytest.mark.parametrize("on_top", ["tmpfs", "same-source"])
def test_a_mount_on_top_of_ours_is_conflict_everywhere_and_nothing_is_unmounted(
    fake_host: host_mod.Host, table: Table, on_top: str
) -> None:
    spec = posixfs_spec()
    res = storage_connection.reconcile(spec, fake_host)
    assert (res.phase, res.reason) == ("Connected", "Connected"), res.message
    entry = fake_host.ledger.get("StorageConnection", "c1")
    assert entry is not None and entry.resource["mount"]["mountId"] == table.records[-1].mount_id
    target = res.detail["mountPoint"]
    # the attacker: another file system, or the same device mounted again, on top of ours
    table.add(*(("evil", target, "tmpfs", "0:77") if on_top == "tmpfs" else ("/dev/loop7", target)))
    before = list(table.records)
    seen = storage_connection.observe(entry, fake_host)
    assert (seen.phase, seen.reason) == ("Failed", "Conflict") and "on top" in seen.message
    again = storage_connection.reconcile(spec, fake_host)
    assert (again.phase, again.reason) == ("Failed", "Conflict"), again.message
    dry = storage_connection.teardown(spec, fake_host, dry_run=True)
    assert (dry.phase, dry.reason) == ("TeardownFailed", "Conflict"), dry.message
    for force in (False, True):
        down = storage_connection.teardown(spec, fake_host, force=force)
        assert (down.phase, down.reason) == ("TeardownFailed", "Conflict"), down.message
    assert table.records == before and umounts(table) == []
    assert [c for c in table.calls if c[0] == "mount"] == [table.calls[0]]  # mounted once, by apply
    assert fake_host.ledger.get("StorageConnection", "c1") is not None  # our mount below is not forgotten


def test_our_mount_replaced_by_a_same_source_mount_is_not_ours(
    fake_host: host_mod.Host, table: Table
) -> None:
    spec = posixfs_spec()
    target = storage_connection.reconcile(spec, fake_host).detail["mountPoint"]
    table.records.clear()  # ours went away behind our back ...
    table.add("/dev/loop7", target)  # ... and someone mounted the same device there
    res = storage_connection.reconcile(spec, fake_host)
    assert (res.phase, res.reason) == ("Failed", "Conflict") and "not by hoststorage" in res.message
    down = storage_connection.teardown(spec, fake_host)
    assert down.phase == "Detached" and umounts(table) == []
    assert len(table.records) == 1


def test_a_mount_of_ours_on_top_is_unmounted_and_only_once(fake_host: host_mod.Host, table: Table) -> None:
    """Under ours, the admin's mount of the same source stays: we unmount the one we made."""
    spec = posixfs_spec()
    target = connections.posix_mount_point(fake_host.config.mount_base, "/dev/loop7")
    os.makedirs(target)
    table.add("/dev/loop7", target)  # the admin's, before hoststorage: preexisting
    res = storage_connection.reconcile(spec, fake_host)
    assert res.detail.get("preexisting") is True
    down = storage_connection.teardown(spec, fake_host)
    assert down.reason == "NotOwned" and umounts(table) == []


# ---------------------------------------------------------------------- class 9: umount argv, timeout

UMOUNT = ("umount", "--no-canonicalize")


@pytest.mark.parametrize(("lazy", "force"), [(False, False), (True, False), (True, True)])
def test_every_umount_passes_the_exact_target_without_canonicalising(lazy: bool, force: bool) -> None:
    argv = mounts.umount_argv("/base/server:_a b", lazy=lazy, force=force)
    assert argv[:2] == UMOUNT and argv[-1] == "/base/server:_a b"


def test_disconnect_paths_never_let_umount_canonicalise(
    fake_host: host_mod.Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy = commands.CommandError(("umount",), 32, "umount: target is busy")

    class Busy(Table):
        def answer(self, argv: tuple[str, ...], secrets: tuple[str, ...]) -> tuple[int, str, str]:
            if argv[0] == "umount" and "-l" not in argv:
                return 32, "", str(busy)
            return super().answer(argv, secrets)

    runner = Busy()
    monkeypatch.setattr(mounts, "read_mounts", runner.read)
    host = dataclasses.replace(fake_host.config, runner=runner)
    for params in (connections.PosixfsParams("/dev/loop7", "ext4"), connections.NfsParams("srv", "/e")):
        conn = connections.make_connection("c", params, host)
        conn.connect()
        with pytest.raises(errors.InUse):
            conn.disconnect()
        assert conn.disconnect(force=True) is True
    seen = [c for c in runner.calls if c[0] == "umount"]
    # per type: plain (busy), then with --force plain (busy) and lazy
    assert len(seen) == 6 and all(c[:2] == UMOUNT for c in seen)


def test_a_umount_that_does_not_answer_is_reported_within_the_timeout() -> None:
    class Hung(FakeRunner):
        def answer(self, argv: tuple[str, ...], secrets: tuple[str, ...]) -> tuple[int, str, str]:
            raise commands.CommandError(argv, None, "", timed_out=True)

    with pytest.raises(errors.UnmountFailed, match=r"timed out after 7s: the storage does not answer"):
        mounts.umount(Hung(), "/base/x", timeout=7)


# --------------------------------------------------------------------- class 4: the in-use decision


class FakeSysfs(blockdevs.Sysfs):
    """A /sys/dev/block tree built in a temp dir (the real layout: number links to device dirs with
    ``dev``, ``partition``, ``holders/`` and ``slaves/``); only ``/proc/swaps`` is scripted."""

    def __init__(self, root: pathlib.Path) -> None:
        super().__init__(dev_block=str(root / "dev-block"))
        self.root = root
        (root / "dev-block").mkdir()
        self.swapped: list[tuple[str, str]] = []

    def make_disk(self, name: str, number: str, parts: Sequence[tuple[str, str]] = ()) -> None:
        d = self.root / "devices" / name
        d.mkdir(parents=True)
        (d / "dev").write_text(number + "\n")
        (self.root / "dev-block" / number).symlink_to(d)
        for part, pnum in parts:
            p = d / part
            p.mkdir()
            (p / "dev").write_text(pnum + "\n")
            (p / "partition").write_text("1\n")
            (self.root / "dev-block" / pnum).symlink_to(p)

    def link(self, holder: str, holder_number: str, held: str) -> None:
        """``holder`` (dm-0, md0) built on the device numbered ``held``."""
        if not (self.root / "dev-block" / holder_number).exists():
            self.make_disk(holder, holder_number)
        h = os.path.realpath(self.root / "dev-block" / holder_number)
        lower = os.path.realpath(self.root / "dev-block" / held)
        os.makedirs(os.path.join(lower, "holders"), exist_ok=True)
        os.makedirs(os.path.join(h, "slaves"), exist_ok=True)
        os.symlink(h, os.path.join(lower, "holders", holder))
        os.symlink(lower, os.path.join(h, "slaves", os.path.basename(lower)))

    def swap_devices(self) -> list[tuple[str, str]]:
        return list(self.swapped)


ROOT_ON = "27 1 {dev} / / rw - ext4 /dev/nonexistent-root rw\n"


def decide(sysfs: FakeSysfs, dev: str, mountinfo: str, own: str = "/base/own") -> list[str]:
    return blockdevs.uses_of(dev, own_target=own, records=parsed(mountinfo), sysfs=sysfs)


@pytest.fixture
def sysfs(tmp_path: pathlib.Path) -> FakeSysfs:
    s = FakeSysfs(tmp_path)
    s.make_disk("vda", "254:0", [("vda1", "254:1"), ("vda2", "254:2")])
    s.make_disk("vdb", "254:16", [("vdb1", "254:17"), ("vdb2", "254:18")])
    s.make_disk("vdc", "254:32")
    s.make_disk("loop3", "7:3")
    return s


ROOT_VDA1 = ROOT_ON.format(dev="254:1")
IN_USE_TABLE = [
    # (device, extra mountinfo, expected phrases) — [] means free
    ("7:3", "", []),
    ("7:3", "60 27 7:3 / /base/own rw - ext4 /dev/nonexistent-loop3 rw\n", []),  # our own mount
    ("7:3", "60 27 7:3 / /srv/data rw - ext4 /dev/nonexistent-loop3 rw\n",
     ["/dev/loop3 is mounted on /srv/data"]),
    ("7:3", "60 27 7:3 / /base/other rw - ext4 /dev/nonexistent-loop3 rw\n",
     ["/dev/loop3 is mounted on /base/other"]),  # inside the base but not ours: still a second mount
    ("254:1", "", ["/dev/vda1 backs the root file system /"]),
    ("254:2", "", ["/dev/vda1 backs the root file system /"]),  # a partition of the root disk
    ("254:0", "", ["/dev/vda1 backs the root file system /"]),  # the root disk itself
    ("254:16", "61 27 254:17 / /data rw - xfs /dev/nonexistent-vdb1 rw\n",
     ["/dev/vdb1 is mounted on /data"]),  # the whole disk of a mounted partition
    ("254:18", "61 27 254:17 / /data rw - xfs /dev/nonexistent-vdb1 rw\n",
     ["/dev/vdb1 is mounted on /data"]),  # the sibling of a mounted partition
    ("254:32", "61 27 254:17 / /data rw - xfs /dev/nonexistent-vdb1 rw\n", []),  # another disk: free
]  # fmt: skip


@pytest.mark.parametrize(
    ("dev", "extra", "expected"), IN_USE_TABLE, ids=[str(i) for i in range(len(IN_USE_TABLE))]
)
def test_the_in_use_decision_table(sysfs: FakeSysfs, dev: str, extra: str, expected: list[str]) -> None:
    found = decide(sysfs, dev, ROOT_VDA1 + extra)
    assert [f.replace(" (the disk of the source)", "") for f in found] == expected


def test_holders_and_swap_are_uses(sysfs: FakeSysfs) -> None:
    sysfs.link("dm-0", "253:0", "254:32")
    assert decide(sysfs, "254:32", ROOT_VDA1) == ["/dev/vdc is held by /dev/dm-0"]
    sysfs.swapped = [("7:3", "/dev/loop3")]
    assert decide(sysfs, "7:3", ROOT_VDA1) == ["/dev/loop3 is in use as swap (/dev/loop3)"]


def test_a_root_on_device_mapper_is_followed_down_to_its_disks(sysfs: FakeSysfs) -> None:
    sysfs.link("dm-1", "253:1", "254:18")  # / on an LV whose PV is vdb2
    found = decide(sysfs, "254:17", ROOT_ON.format(dev="253:1"))  # vdb1: same disk as the root's PV
    assert "/dev/vdb2 backs the root file system /" in found
    assert "/dev/vdb2 is held by /dev/dm-1" in found


def test_check_free_names_the_uses_and_the_flag_and_bounds_the_list(
    sysfs: FakeSysfs, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = "".join(f"{70 + i} 27 7:3 / /srv/m{i} rw - ext4 /dev/nonexistent rw\n" for i in range(12))
    real = blockdevs.device_number
    monkeypatch.setattr(
        blockdevs, "device_number", lambda path, field=None: "7:3" if path == "/dev/loop3" else real(path)
    )
    kw: dict[str, Any] = {"own_target": "/base/own", "records": parsed(ROOT_VDA1 + lines), "sysfs": sysfs}
    with pytest.raises(blockdevs.SourceInUse) as caught:
        blockdevs.check_free("/dev/loop3", allow_shared=False, field="spec.fs.device", **kw)
    message = caught.value.message
    assert message.startswith("spec.fs.device: /dev/loop3 is in use on this node: /dev/loop3 is mounted on")
    assert "and 4 more" in message and "--allow-shared-sources" in message and "/srv/m11" not in message
    assert caught.value.reason == "SourceInUse"
    blockdevs.check_free("/dev/loop3", allow_shared=True, **kw)  # the admin allowed it: no refusal


def test_device_numbers_come_from_the_device_not_its_name(tmp_path: pathlib.Path) -> None:
    root = mounts.topmost("/")
    assert root is not None
    if not root.source.startswith("/dev/"):
        pytest.skip(f"/ is {root.source} here, not a block device")
    link = tmp_path / "by-id-name"
    link.symlink_to(root.source)
    assert blockdevs.device_number(str(link)) == blockdevs.device_number(root.source)
    with pytest.raises(errors.InvalidSpec, match="not a block device"):
        blockdevs.device_number("/dev/null")
    with pytest.raises(errors.NotFound):
        blockdevs.device_number(str(tmp_path / "missing"))


def test_the_root_disk_of_this_host_is_in_use() -> None:
    """The real sysfs and mount table: whatever backs / is refused (read-only, changes nothing)."""
    root = mounts.topmost("/")
    assert root is not None
    if not root.source.startswith("/dev/"):
        pytest.skip(f"/ is {root.source} here, not a block device")
    found = blockdevs.uses(root.source, own_target="/nowhere")
    assert any("backs the root file system /" in f for f in found), found


# ------------------------------------------------------------------ class 2: the UUID claim, pure


@dataclasses.dataclass
class Observed:
    """What :func:`storage_pool.conflict_reason` reads of a libvirt pool: its UUID."""

    uuid: str


def claim(host: host_mod.Host, resource: Mapping[str, Any] | None, observed_uuid: str | None) -> str | None:
    if resource is not None:
        host.ledger.put(ledger.LedgerEntry("StoragePool", "p", "", dict(resource)))
    observed = Observed(observed_uuid) if observed_uuid else None
    return storage_pool.conflict_reason("p", "lv", observed, host)  # type: ignore[arg-type]


U1, U2 = str(uuid_mod.uuid4()), str(uuid_mod.uuid4())
CLAIMS = [
    # (ledger resource, libvirt pool's UUID, claimed?)
    ({"libvirtName": "lv", "uuid": U1}, U1, True),
    ({"libvirtName": "lv", "uuid": U1}, U2, False),  # same name, another UUID: an admin's
    ({"libvirtName": "lv"}, U1, False),  # no UUID recorded: a name alone claims nothing
    ({"libvirtName": "lv", "uuid": ""}, U1, False),
    ({"libvirtName": "other", "uuid": U1}, U1, False),  # the entry names another pool
    (None, U1, False),  # no entry
    (None, None, True),  # nothing there: free to define
    ({"libvirtName": "lv", "uuid": U1}, None, True),  # ours, undefined behind our back: redefine
]


@pytest.mark.parametrize(
    ("resource", "observed", "claimed"), CLAIMS, ids=[str(i) for i in range(len(CLAIMS))]
)
def test_a_pool_is_claimed_only_by_the_uuid_recorded(
    tmp_path: pathlib.Path, resource: Mapping[str, Any] | None, observed: str | None, claimed: bool
) -> None:
    host = host_mod.Host.for_config(config.HostConfig(state_dir=str(tmp_path)))
    reason = claim(host, resource, observed)
    assert (reason is None) is claimed, reason


def test_an_entry_without_a_uuid_says_why_it_claims_nothing(tmp_path: pathlib.Path) -> None:
    host = host_mod.Host.for_config(config.HostConfig(state_dir=str(tmp_path)))
    assert "records no UUID" in str(claim(host, {"libvirtName": "lv"}, U1))


def test_another_objects_entry_for_the_same_libvirt_pool_is_a_conflict(tmp_path: pathlib.Path) -> None:
    host = host_mod.Host.for_config(config.HostConfig(state_dir=str(tmp_path)))
    host.ledger.put(ledger.LedgerEntry("StoragePool", "q", "", {"libvirtName": "lv", "uuid": U1}))
    assert "belongs to StoragePool q" in str(claim(host, None, None))


@pytest.mark.parametrize(
    ("active", "stack", "conflict"),
    [
        (True, [("/dev/loopX", "ext4")], None),
        (True, [("/dev/loopX", "ext4"), ("evil", "tmpfs")], "on top of pool"),
        (True, [("evil", "tmpfs")], "not pool"),
        (False, [], None),
        (False, [("evil", "tmpfs")], "not pool"),
        (False, [("/dev/loopX", "ext4")], "not pool"),  # stopped, yet mounted: not by libvirt for us
    ],
)
def test_an_fs_pool_target_is_the_pools_only_when_its_mount_is_on_top(
    active: bool, stack: list[tuple[str, str]], conflict: str | None
) -> None:
    defn = libvirt_pools.PoolDefinition(
        name="p", type="fs", target_path="/base/pools/p", source_devices=("/dev/loopX",)
    )
    lines = "".join(
        f"{60 + i} {59 + i if i else 27} 0:{i} / /base/pools/p rw - {t} {s} rw\n"
        for i, (s, t) in enumerate(stack)
    )
    found = storage_pool.target_conflict(defn, active, parsed(lines))
    assert (found is None) if conflict is None else (conflict in str(found)), found


class NoDefine:
    """A libvirt layer whose ``define`` fails (a libvirtd hiccup at the first define) and where no pool
    exists; every other verb would be a test failure. Records the ledger entry seen at define time."""

    def __init__(self, host: host_mod.Host) -> None:
        self.host = host
        self.defined: list[libvirt_pools.PoolDefinition] = []

    def observe(self, name: str) -> None:
        return None

    def seconds_since_refresh(self, name: str) -> None:
        return None

    def define(self, defn: libvirt_pools.PoolDefinition) -> str:
        self.defined.append(defn)
        entry = self.host.ledger.get("StoragePool", "p")
        assert entry is not None and entry.resource["uuid"] == defn.uuid, "the UUID is written ahead"
        raise libvirt_pools.DefineFailed("define failed: simulated libvirtd error")

    def __getattr__(self, verb: str) -> Any:
        raise AssertionError(f"{verb} must not be called after a failed define")


def test_a_first_define_that_fails_leaves_no_ledger_entry(tmp_path: pathlib.Path) -> None:
    (tmp_path / "allowed").mkdir()
    cfg = config.HostConfig(state_dir=str(tmp_path / "s"), allowed_host_paths=(str(tmp_path / "allowed"),))
    host = host_mod.Host.for_config(cfg)
    layer = NoDefine(host)
    host = dataclasses.replace(host, pools=lambda: layer)
    layer.host = host
    spec = storage_pool.parse(
        {"apiVersion": "hoststorage.io/v1alpha1", "kind": "StoragePool", "metadata": {"name": "p"},
         "spec": {"dir": {"path": str(tmp_path / "allowed")}}}
    )  # fmt: skip
    res = storage_pool.reconcile(spec, host)
    assert (res.phase, res.reason) == ("Failed", "DefineFailed"), res.message
    assert host.ledger.get("StoragePool", "p") is None
    assert len(layer.defined) == 1 and uuid_mod.UUID(str(layer.defined[0].uuid))


# ============================================================================ real exploits on this host


def token() -> str:
    return uuid_mod.uuid4().hex[:8]


@pytest.fixture
def real_host(hs_host_config: config.HostConfig) -> Iterator[host_mod.Host]:
    h = host_mod.Host.for_config(hs_host_config)
    try:
        yield h
    finally:
        for entry in h.ledger.entries(storage_connection.KIND):
            storage_connection.teardown(entry, h, force=True)


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=check)


@contextlib.contextmanager
def mounted_by_attacker(source: str, target: str, fstype: str | None = None) -> Iterator[None]:
    """Someone else's mount on ``target``, removed (exactly that path, never canonicalised) afterwards."""
    run("mount", *(("-t", fstype, "-o", "size=1m") if fstype else ()), source, target)
    try:
        yield
    finally:
        run("umount", "--no-canonicalize", target, check=False)


@pytest.mark.host
@pytest.mark.parametrize("on_top", ["tmpfs", "same-device"])
def test_real_foreign_mount_on_top_of_a_connection_is_reported_and_nothing_is_unmounted(
    real_host: host_mod.Host, loop_device: Any, on_top: str
) -> None:
    dev = loop_device("ext4")
    spec = posixfs_spec(f"stack-{token()}", dev)
    res = storage_connection.reconcile(spec, real_host)
    assert (res.phase, res.reason) == ("Connected", "Connected"), res.message
    target = res.detail["mountPoint"]
    with contextlib.ExitStack() as stack:
        if on_top == "tmpfs":
            stack.enter_context(mounted_by_attacker("attacker", target, "tmpfs"))
        else:
            # mount(8) refuses the same device twice on one point; the kernel does not: bind it there
            scratch = os.path.join(os.path.dirname(real_host.config.state_dir), f"scratch-{token()}")
            os.mkdir(scratch)
            stack.callback(os.rmdir, scratch)
            stack.enter_context(mounted_by_attacker(dev, scratch))
            run("mount", "--bind", scratch, target)
            stack.callback(run, "umount", "--no-canonicalize", target, check=False)
            assert mounts.topmost(target).source == dev  # type: ignore[union-attr]
        pathlib.Path(target, "precious").write_bytes(b"the attacker's data " + token().encode())
        table, data = mount_table(), files(target)
        entry = real_host.ledger.get(storage_connection.KIND, spec.name)
        assert entry is not None
        seen = storage_connection.observe(entry, real_host)
        assert (seen.phase, seen.reason) == ("Failed", "Conflict") and "on top" in seen.message, seen.message
        again = storage_connection.reconcile(spec, real_host)
        assert (again.phase, again.reason) == ("Failed", "Conflict"), again.message
        for kw in ({"dry_run": True}, {}, {"force": True}):
            down = storage_connection.teardown(spec, real_host, **kw)
            assert (down.phase, down.reason) == ("TeardownFailed", "Conflict"), (kw, down.message)
        assert mount_table() == table and files(target) == data
    down = storage_connection.teardown(spec, real_host)  # the attacker's mount gone: ours goes now
    assert down.phase == "Detached", down.message
    assert mounts.mounts_at(target) == []


@pytest.mark.host
@pytest.mark.parametrize("id_taken", [True, False], ids=["new-mount-id", "reused-mount-id"])
def test_real_mount_replaced_by_a_same_device_mount_is_not_claimed(
    real_host: host_mod.Host, loop_device: Any, id_taken: bool
) -> None:
    dev = loop_device("ext4")
    spec = posixfs_spec(f"swap-{token()}", dev)
    target = storage_connection.reconcile(spec, real_host).detail["mountPoint"]
    run("umount", "--no-canonicalize", target)  # ours is gone behind our back ...
    # The kernel hands out the lowest free mount id, so a mount made right now gets ours back: only the
    # kernel's 64-bit id tells it apart (statmount(2)). With a tmpfs elsewhere taking the freed id
    # first, the mountinfo id differs too.
    holder = pathlib.Path(real_host.config.state_dir) / "id-holder"
    holder.mkdir()
    root = mounts.topmost("/")
    if not id_taken and (root is None or mounts.unique_mount_id(root.mount_id) is None):
        pytest.skip("this kernel has no statmount(2): a reused mount id cannot be told apart")
    with contextlib.ExitStack() as stack:
        if id_taken:
            stack.enter_context(mounted_by_attacker("idholder", str(holder), "tmpfs"))
        stack.enter_context(mounted_by_attacker(dev, target))
        # ... and an admin mounted the same device there
        table = mount_table()
        res = storage_connection.reconcile(spec, real_host)
        assert (res.phase, res.reason) == ("Failed", "Conflict") and "not by hoststorage" in res.message
        down = storage_connection.teardown(spec, real_host)
        assert down.phase == "Detached", down.message  # forgotten, not unmounted
        assert mount_table() == table


@pytest.mark.host
def test_real_dry_run_of_the_root_disk_is_refused_and_changes_nothing(real_host: host_mod.Host) -> None:
    root = mounts.topmost("/")
    assert root is not None
    if not root.source.startswith("/dev/"):
        pytest.skip(f"/ is {root.source} here, not a block device")
    table, entries = mount_table(), real_host.ledger.entries()
    for dry_run in (True, False):
        res = storage_connection.reconcile(posixfs_spec("rootdisk", root.source), real_host, dry_run=dry_run)
        assert (res.phase, res.reason) == ("Failed", "SourceInUse"), res.message
        assert "backs the root file system /" in res.message
    assert mount_table() == table and real_host.ledger.entries() == entries


@pytest.mark.host
def test_real_device_mounted_elsewhere_is_refused_unless_shared_sources_are_allowed(
    real_host: host_mod.Host, loop_device: Any, tmp_path: pathlib.Path
) -> None:
    dev = loop_device("ext4")
    elsewhere = tmp_path / "admins-mount"
    elsewhere.mkdir()
    with mounted_by_attacker(dev, str(elsewhere)):
        (elsewhere / "vm.img").write_bytes(b"disk image")
        table, data = mount_table(), files(str(elsewhere))
        spec = posixfs_spec(f"inuse-{token()}", dev)
        for dry_run in (True, False):
            res = storage_connection.reconcile(spec, real_host, dry_run=dry_run)
            assert (res.phase, res.reason) == ("Failed", "SourceInUse"), res.message
            assert f"is mounted on {elsewhere}" in res.message
        assert mount_table() == table and files(str(elsewhere)) == data
        assert real_host.ledger.get(storage_connection.KIND, spec.name) is None
        shared = dataclasses.replace(
            real_host, config=dataclasses.replace(real_host.config, allow_shared_sources=True)
        )
        res = storage_connection.reconcile(spec, shared)
        assert (res.phase, res.reason) == ("Connected", "Connected"), res.message
        assert storage_connection.teardown(spec, shared).phase == "Detached"


def _mbr(path: pathlib.Path, size_mb: int) -> None:
    """A sparse image with an MBR of two Linux partitions (no sfdisk on this machine)."""
    sectors = size_mb * 2048
    half = (sectors - 2048) // 2
    table = b""
    for start in (2048, 2048 + half):
        table += bytes([0, 0, 0, 0, 0x83, 0, 0, 0]) + start.to_bytes(4, "little") + half.to_bytes(4, "little")
    with open(path, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
        f.seek(446)
        f.write(table + bytes(32) + b"\x55\xaa")


@pytest.fixture
def partitioned_loop(tmp_path: pathlib.Path, require_root: None) -> Iterator[tuple[str, str, str]]:
    image = tmp_path / "disk.img"
    _mbr(image, 64)
    disk = run("losetup", "--partscan", "--find", "--show", str(image)).stdout.strip()
    try:
        for _ in range(50):
            if os.path.exists(f"{disk}p2"):
                break
            time.sleep(0.1)
        else:
            pytest.skip(f"the kernel made no partition devices for {disk}")
        run("mkfs.ext4", "-q", "-F", f"{disk}p1")
        run("mkfs.ext4", "-q", "-F", f"{disk}p2")
        yield disk, f"{disk}p1", f"{disk}p2"
    finally:
        for rec in reversed(mounts.read_mounts()):
            if rec.source.startswith(disk):
                run("umount", "--no-canonicalize", "-l", rec.target, check=False)
        run("losetup", "-d", disk, check=False)


@pytest.mark.host
def test_real_whole_disk_and_sibling_of_a_mounted_partition_are_refused(
    real_host: host_mod.Host, partitioned_loop: tuple[str, str, str], tmp_path: pathlib.Path
) -> None:
    disk, p1, p2 = partitioned_loop
    elsewhere = tmp_path / "p1"
    elsewhere.mkdir()
    with mounted_by_attacker(p1, str(elsewhere)):
        table = mount_table()
        for source in (disk, p2):
            res = storage_connection.reconcile(posixfs_spec(f"part-{token()}", source), real_host)
            assert (res.phase, res.reason) == ("Failed", "SourceInUse"), (source, res.message)
            assert f"/dev/{os.path.basename(p1)} is mounted on {elsewhere}" in res.message
        assert mount_table() == table
    res = storage_connection.reconcile(posixfs_spec(f"part-{token()}", p2), real_host)  # p1 free again
    assert res.phase == "Connected", res.message


@pytest.mark.host
def test_real_active_swap_is_refused(real_host: host_mod.Host, tmp_path: pathlib.Path) -> None:
    image = tmp_path / "swap.img"
    with open(image, "wb") as f:
        f.truncate(32 * 1024 * 1024)
    dev = run("losetup", "--find", "--show", str(image)).stdout.strip()
    try:
        run("mkswap", dev)
        if run("swapon", dev, check=False).returncode != 0:
            pytest.skip("swapon is not permitted here")
        try:
            res = storage_connection.reconcile(posixfs_spec(f"swap-{token()}", dev), real_host, dry_run=True)
            assert (res.phase, res.reason) == ("Failed", "SourceInUse"), res.message
            assert "in use as swap" in res.message
        finally:
            run("swapoff", dev, check=False)
    finally:
        run("losetup", "-d", dev, check=False)


# --------------------------------------------------------------------------- real libvirt: pools


@pytest.fixture
def pool_host(hs_host_config: config.HostConfig, layer: libvirt_pools.PoolLayer) -> Iterator[host_mod.Host]:
    h = host_mod.Host.for_config(hs_host_config, pools=lambda: layer)
    try:
        yield h
    finally:
        for entry in h.ledger.entries(storage_pool.KIND):
            storage_pool.teardown(entry, h, force=True)
        for entry in h.ledger.entries(storage_connection.KIND):
            storage_connection.teardown(entry, h, force=True)


def pool_spec(name: str, source: Mapping[str, Any]) -> storage_pool.PoolSpec:
    return storage_pool.parse(
        {"apiVersion": "hoststorage.io/v1alpha1", "kind": "StoragePool", "metadata": {"name": name},
         "spec": dict(source)}
    )  # fmt: skip


@contextlib.contextmanager
def admins_pool(name: str, target: str) -> Iterator[None]:
    fixtures_libvirt.virsh("pool-define-as", name, "dir", "--target", target)
    try:
        yield
    finally:
        fixtures_libvirt.virsh("pool-destroy", name, check=False)
        fixtures_libvirt.virsh("pool-undefine", name, check=False)


@pytest.mark.host
def test_real_failed_first_define_then_an_admins_pool_of_that_name_is_never_taken(
    pool_host: host_mod.Host, layer: libvirt_pools.PoolLayer, monkeypatch: pytest.MonkeyPatch,
    tmp_path: pathlib.Path
) -> None:  # fmt: skip
    name = f"hs-t-{token()}"
    spec = pool_spec(name, {"dir": {"path": pool_host.config.allowed_host_paths[0]}})
    with monkeypatch.context() as m:
        m.setattr(
            layer, "define", lambda defn: (_ for _ in ()).throw(libvirt_pools.DefineFailed("simulated"))
        )
        res = storage_pool.reconcile(spec, pool_host)
    assert (res.phase, res.reason) == ("Failed", "DefineFailed"), res.message
    assert pool_host.ledger.get(storage_pool.KIND, name) is None
    with admins_pool(name, str(tmp_path)):
        before = pools()
        res = storage_pool.reconcile(spec, pool_host)
        assert (res.phase, res.reason) == ("Failed", "Conflict"), res.message
        down = storage_pool.teardown(spec, pool_host)
        assert down.phase == "Detached" and down.reason == "NotOwned", down.message
        assert pools() == before


@pytest.mark.host
def test_real_same_named_pool_with_another_uuid_is_conflict_and_untouched(
    pool_host: host_mod.Host, tmp_path: pathlib.Path
) -> None:
    name = f"hs-t-{token()}"
    spec = pool_spec(name, {"dir": {"path": pool_host.config.allowed_host_paths[0]}})
    res = storage_pool.reconcile(spec, pool_host)
    assert res.phase == "Running", res.message
    entry = pool_host.ledger.get(storage_pool.KIND, name)
    assert entry is not None and entry.resource["uuid"] == fixtures_libvirt.virsh("pool-uuid", name).strip()
    fixtures_libvirt.virsh("pool-destroy", name)
    fixtures_libvirt.virsh("pool-undefine", name)
    with admins_pool(name, str(tmp_path)):
        before = pools()
        assert before[name][0] != entry.resource["uuid"]
        for result in (
            storage_pool.reconcile(spec, pool_host),
            storage_pool.reconcile(spec, pool_host, dry_run=True),
            storage_pool.observe(entry, pool_host),
        ):
            assert (result.phase, result.reason) == ("Failed", "Conflict"), result.message
        down = storage_pool.teardown(spec, pool_host)
        assert down.phase == "Detached", down.message
        assert pools() == before


@pytest.mark.host
def test_real_foreign_mount_on_an_fs_pool_target_is_conflict_and_the_pool_is_not_stopped(
    pool_host: host_mod.Host, loop_device: Any
) -> None:
    dev = loop_device("ext4")
    name = f"hs-t-{token()}"
    spec = pool_spec(name, {"fs": {"device": dev, "format": "ext4"}})
    res = storage_pool.reconcile(spec, pool_host)
    assert res.phase == "Running", res.message
    target = res.detail["targetPath"]
    entry = pool_host.ledger.get(storage_pool.KIND, name)
    assert entry is not None
    with mounted_by_attacker("attacker", target, "tmpfs"):
        pathlib.Path(target, "precious").write_bytes(b"not the pool's")
        table, data, before = mount_table(), files(target), pools()
        for result in (storage_pool.reconcile(spec, pool_host), storage_pool.observe(entry, pool_host)):
            assert (result.phase, result.reason) == ("Failed", "Conflict"), result.message
            assert "on top of pool" in result.message
        for dry_run in (True, False):
            down = storage_pool.teardown(spec, pool_host, dry_run=dry_run)
            assert (down.phase, down.reason) == ("TeardownFailed", "Conflict"), down.message
        assert mount_table() == table and files(target) == data and pools() == before
    down = storage_pool.teardown(spec, pool_host)
    assert down.phase == "Detached", down.message
    assert mounts.mounts_at(target) == []


@pytest.mark.host
def test_real_fs_pool_on_the_root_disk_or_a_mounted_device_is_refused(
    pool_host: host_mod.Host, loop_device: Any, tmp_path: pathlib.Path
) -> None:
    dev = loop_device("ext4")
    elsewhere = tmp_path / "m"
    elsewhere.mkdir()
    root = mounts.topmost("/")
    assert root is not None
    sources = [dev] + ([root.source] if root.source.startswith("/dev/") else [])
    with mounted_by_attacker(dev, str(elsewhere)):
        table, before = mount_table(), pools()
        for source in sources:
            for dry_run in (True, False):
                spec = pool_spec(f"hs-t-{token()}", {"fs": {"device": source}})
                res = storage_pool.reconcile(spec, pool_host, dry_run=dry_run)
                assert (res.phase, res.reason) == ("Failed", "SourceInUse"), res.message
        assert mount_table() == table and pools() == before


# ------------------------------------------------------------------ real gluster: hung teardown


def d_state_umounts(target: str) -> list[int]:
    """umount processes of ``target`` in uninterruptible sleep."""
    stuck = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            cmd = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if cmd and cmd[0].endswith(b"umount") and target.encode() in cmd and state == "D":
                stuck.append(int(pid))
    return stuck


@pytest.mark.host
@pytest.mark.slow
@pytest.mark.parametrize(("reader", "force"), [(False, False), (True, False), (True, True)])
def test_real_teardown_of_a_hung_gluster_mount_ends_within_the_command_timeout(
    hs_host_config: config.HostConfig, gluster_volume: Any, reader: bool, force: bool
) -> None:
    timeout = 10.0
    cfg = dataclasses.replace(hs_host_config, command_timeout=timeout, use_host_scope=False)
    host = host_mod.Host.for_config(cfg)
    spec = storage_connection.parse(
        {"apiVersion": "hoststorage.io/v1alpha1", "kind": "StorageConnection",
         "metadata": {"name": f"g-{token()}"},
         "spec": {"type": "glusterfs",
                  "glusterfs": {"server": gluster_volume.server, "volume": gluster_volume.volume}}}
    )  # fmt: skip
    res = storage_connection.reconcile(spec, host)
    assert res.phase == "Connected", res.message
    target = res.detail["mountPoint"]
    pid = gluster_volume.brick_pid()
    assert pid
    # A reader in a child blocks on the hung mount, as a VM would (the agent process never reads it).
    pathlib.Path(target, "disk.img").write_bytes(os.urandom(1 << 20))
    os.kill(pid, signal.SIGSTOP)
    dd = (
        subprocess.Popen(
            ["dd", f"if={target}/disk.img", "of=/dev/null", "bs=4k", "iflag=direct"],
            stderr=subprocess.DEVNULL,
        )
        if reader
        else None
    )
    try:
        time.sleep(0.5)
        start = time.monotonic()
        down = storage_connection.teardown(spec, host, force=force)
        took = time.monotonic() - start
        print(
            f"hung teardown (reader={reader}, force={force}): {down.phase}/{down.reason} in {took:.1f}s:",
            down.message,
        )
        # bounded: the umount's own timeout plus the 5 s the runner gives a killed child
        assert took < timeout + 6, took
        # Without --force the reader keeps it busy (InUse, retried); with it, a lazy detach; a umount
        # that does not answer is TeardownFailed saying it timed out. Never a hang.
        outcome = (down.phase, down.reason)
        assert outcome in {
            ("Detaching", "InUse"),
            ("Detached", "Detached"),
            ("TeardownFailed", "UnmountFailed"),
        }
        if force or not reader:
            assert outcome != ("Detaching", "InUse"), down.message
        if down.reason == "UnmountFailed":
            assert "timed out" in down.message, down.message
        assert d_state_umounts(target) == []
    finally:
        gluster_volume.resume_brick()
        if dd is not None:
            dd.kill()
            dd.wait(timeout=60)
        run("umount", "--no-canonicalize", "-l", target, check=False)
