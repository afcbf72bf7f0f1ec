"""Block sources already in use: the rule that keeps hoststorage from mounting a disk something else uses.

Why this module exists: a posixfs connection or an ``fs`` pool names a block device, and mounting a
device that is already mounted elsewhere (read-write, a second time), that backs ``/``, or that swap,
md or device-mapper holds, corrupts it. So before hoststorage mounts a block source (and in
``--dry-run``: planning the host's root disk must be refused too) :func:`uses` lists every place the
device is in use and :func:`check_free` refuses it with :class:`SourceInUse` naming them, unless the
admin allowed shared sources (``--allow-shared-sources``, ``HostConfig.allow_shared_sources``).

The decision, for the device and its *family* (the whole disk and every partition of it: a partition
of a disk in use is refused, and so is the whole disk of a partition in use):
- a mount of a family member anywhere but the object's own target (so re-applying an object whose
  mount is already there is not refused by that mount);
- a family member backs ``/`` (the device of the root mount, followed down through device-mapper and
  md ``slaves``);
- a family member has holders (``/sys/dev/block/M:m/holders``: device-mapper, md, bcache, ...);
- a family member is active swap (``/proc/swaps``).

Devices are compared by number (``st_rdev`` of ``os.stat``, ``major:minor`` in mountinfo and sysfs),
never by name: ``/dev/disk/by-id/...``, ``/dev/mapper/x`` and ``/dev/dm-0`` are one device. Everything
read here is the mount table, sysfs and ``/proc/swaps``; nothing touches the storage, so it cannot hang.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
from collections.abc import Iterable

from hostlib import errors, mounts

SYS_DEV_BLOCK = "/sys/dev/block"
PROC_SWAPS = "/proc/swaps"
MAX_USES = 8
"""Uses named in one message; the rest are counted."""
MAX_DEPTH = 16
"""Bound of the walk down ``slaves`` (dm on md on partitions is 3 deep)."""


class SourceInUse(errors.HostStorageError):
    """The block source is in use elsewhere on this host: mounting it would corrupt it. Retried with
    backoff (the other use may end), never acted on while it lasts."""

    reason = "SourceInUse"


@dataclasses.dataclass(frozen=True)
class Sysfs:
    """Where block devices are looked up; a test points it at a fake tree."""

    dev_block: str = SYS_DEV_BLOCK
    swaps: str = PROC_SWAPS

    def _dir(self, dev: str) -> str:
        return os.path.join(self.dev_block, dev)

    def exists(self, dev: str) -> bool:
        return os.path.isdir(self._dir(dev))

    def name(self, dev: str) -> str:
        return os.path.basename(os.path.realpath(self._dir(dev)))

    def _read(self, path: str) -> str | None:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip()
        except OSError:
            return None

    def disk(self, dev: str) -> str:
        """The whole disk of ``dev`` (``dev`` itself unless it is a partition)."""
        real = os.path.realpath(self._dir(dev))
        if os.path.exists(os.path.join(real, "partition")):
            parent = self._read(os.path.join(os.path.dirname(real), "dev"))
            if parent:
                return parent
        return dev

    def partitions(self, disk: str) -> list[str]:
        real = os.path.realpath(self._dir(disk))
        found: list[str] = []
        try:
            names = sorted(os.listdir(real))
        except OSError:
            return found
        for name in names:
            sub = os.path.join(real, name)
            if os.path.exists(os.path.join(sub, "partition")):
                dev = self._read(os.path.join(sub, "dev"))
                if dev:
                    found.append(dev)
        return found

    def _links(self, dev: str, what: str) -> list[str]:
        d = os.path.join(self._dir(dev), what)
        try:
            names = sorted(os.listdir(d))
        except OSError:
            return []
        out = []
        for name in names:
            number = self._read(os.path.join(d, name, "dev"))
            out.append(number or name)
        return out

    def holders(self, dev: str) -> list[str]:
        """``major:minor`` of each holder (device-mapper, md, ...)."""
        return self._links(dev, "holders")

    def slaves(self, dev: str) -> list[str]:
        return self._links(dev, "slaves")

    def swap_devices(self) -> list[tuple[str, str]]:
        """(``major:minor``, name) of each active swap: the device, or the one under a swap file."""
        text = self._read(self.swaps) or ""
        out = []
        for line in text.splitlines()[1:]:
            name = line.split()[0] if line.split() else ""
            if not name:
                continue
            name = mounts.unescape(name)
            try:
                st = os.stat(name)
            except OSError:
                continue
            number = st.st_rdev if stat.S_ISBLK(st.st_mode) else st.st_dev
            out.append((f"{os.major(number)}:{os.minor(number)}", name))
        return out


def device_number(path: str, *, field: str | None = None) -> str:
    """``major:minor`` of the block device ``path`` (links followed: by-id names are the same device).

    A missing path is NotFound; anything but a block device is InvalidSpec."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise errors.NotFound(f"device {path} does not exist on this node") from None
    except OSError as exc:
        raise errors.NotFound(f"device {path}: {exc.strerror}") from None
    if not stat.S_ISBLK(st.st_mode):
        raise errors.InvalidSpec(f"{path!r} is not a block device", field=field)
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def family(dev: str, sysfs: Sysfs) -> list[str]:
    """``dev``'s whole disk and every partition of it, the disk first."""
    disk = sysfs.disk(dev)
    members = [disk, *sysfs.partitions(disk)]
    if dev not in members:
        members.append(dev)
    return members


def _below(dev: str, sysfs: Sysfs) -> set[str]:
    """``dev`` and every device it is built on (dm and md slaves, transitively)."""
    seen: set[str] = set()
    todo = [(dev, 0)]
    while todo:
        d, depth = todo.pop()
        if d in seen or depth > MAX_DEPTH:
            continue
        seen.add(d)
        todo += [(s, depth + 1) for s in sysfs.slaves(d)]
    return seen


def _record_devices(record: mounts.MountRecord) -> set[str]:
    """The device numbers a mount is on: mountinfo's (anonymous for btrfs, overlay) and its source's."""
    out = {record.major_minor}
    if record.source.startswith("/dev/"):
        with contextlib.suppress(errors.NotFound, errors.InvalidSpec):
            out.add(device_number(record.source))
    return out


def uses(
    device: str,
    *,
    own_target: str,
    records: Iterable[mounts.MountRecord] | None = None,
    sysfs: Sysfs | None = None,
) -> list[str]:
    """Where ``device`` (a path under /dev) or its disk family is in use, one phrase each; [] if free.

    ``own_target`` is where this object mounts it: a mount there is the object's own, not a use."""
    return uses_of(device_number(device), own_target=own_target, records=records, sysfs=sysfs)


def uses_of(
    dev: str,
    *,
    own_target: str,
    records: Iterable[mounts.MountRecord] | None = None,
    sysfs: Sysfs | None = None,
) -> list[str]:
    """:func:`uses` of the device numbered ``dev`` (``major:minor``): the decision itself."""
    sysfs = sysfs or Sysfs()
    table = list(mounts.read_mounts() if records is None else records)
    members = family(dev, sysfs)
    names = {m: sysfs.name(m) for m in members}
    found: list[str] = []
    own = os.path.normpath(own_target)
    root = mounts.topmost("/", table)
    under_root: set[str] = set()
    if root is not None:
        for number in _record_devices(root):
            under_root |= _below(number, sysfs)
    for m in members:
        who = f"/dev/{names[m]}" + (" (the disk of the source)" if m != dev and m == members[0] else "")
        if m in under_root:
            found.append(f"{who} backs the root file system /")
        for r in table:
            if m in _record_devices(r) and r.target != own and r is not root:
                found.append(f"{who} is mounted on {r.target}")
        for h in sysfs.holders(m):
            found.append(f"{who} is held by /dev/{sysfs.name(h)}")
        for number, swap in sysfs.swap_devices():
            if number == m:
                found.append(f"{who} is in use as swap ({swap})")
    return list(dict.fromkeys(found))


def check_free(
    device: str,
    *,
    own_target: str,
    allow_shared: bool,
    field: str | None = None,
    records: Iterable[mounts.MountRecord] | None = None,
    sysfs: Sysfs | None = None,
) -> None:
    """Refuse ``device`` with :class:`SourceInUse` when :func:`uses` finds any use (unless the admin
    allowed shared sources). A device that does not exist is left to mount(8) to report."""
    if allow_shared:
        return
    try:
        found = uses(device, own_target=own_target, records=records, sysfs=sysfs)
    except errors.NotFound:
        return
    if not found:
        return
    shown = "; ".join(found[:MAX_USES])
    more = f"; and {len(found) - MAX_USES} more" if len(found) > MAX_USES else ""
    where = f"{field}: " if field else ""
    raise SourceInUse(
        f"{where}{device} is in use on this node: {shown}{more}. hoststorage will not mount it "
        "(an admin may allow shared sources with --allow-shared-sources)"
    )
