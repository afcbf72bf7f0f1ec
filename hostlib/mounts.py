"""Mounts: reading the mount table, mounting and unmounting, VDSM mount points and option policy.

Why this module exists: "is it mounted?" must be answered the way VDSM answers it (a record whose
source AND target match, after decoding the kernel's octal escapes, stripping `` (deleted)``,
normalising NFS4's ``//`` and resolving loop devices to their backing file), and every mount point must
be derived from the spec the way VDSM derives it, so hosts migrating from VDSM keep their paths:

- normalise the remote: ``server://a/`` -> ``server:/a``; ``[ipv6]:/path`` and ``host:port:/path`` keep
  their host part as written (IPv6 compressed to its canonical form);
- escape: ``_`` -> ``__`` then ``/`` -> ``_``: ``server:/a/b_c`` -> ``<base>/server:_a_b__c``;
- glusterfs lives under ``<base>/glusterSD/``; localfs is a symlink in the base named by escaping the
  local path the same way (``/data/x`` -> ``<base>/_data_x``).
Every derived path is checked to stay directly under its base after ``realpath``.

Reading ``/proc/self/mountinfo`` never touches the storage, so it cannot hang on dead NFS/gluster.

Option policy (the spec is untrusted; options go to a privileged mount(8)):
- each option is one ``name`` or ``name=value``: 1-256 characters from ``[A-Za-z0-9_.:/=@+-]``, not
  starting with ``-``; commas, NUL, whitespace and shell metacharacters are refused;
- always refused: ``exec`` (would undo noexec hardening), ``suid``/``dev`` (unless the admin set
  ``allow_suid``/``allow_dev``), ``defaults`` (implies suid,dev,exec), ``bind``/``rbind``/``move``/
  ``remount`` and the ``make-*`` propagation flags (they operate on existing host mounts),
  ``loop`` (would mount an arbitrary image file of the host; attach a loop device and use it as the
  source instead), ``user``/``users``/``owner``/``group`` (let unprivileged users unmount),
  ``X-*``/``x-*`` (helper side channels such as ``X-mount.mkdir``);
- per type allow-lists (everything else is refused with the list in the message):
  * all types: ro, rw, noatime, relatime, strictatime, nodiratime, lazytime, noexec, nosuid, nodev,
    sync, async, dirsync, and the SELinux ``context=``/``fscontext=``/``defcontext=``/``rootcontext=``
    (without commas, i.e. no MCS category lists);
  * nfs: lock, nolock, ac, noac, actimeo=N, acregmin/acregmax/acdirmin/acdirmax=N, rsize=N, wsize=N,
    proto=tcp|tcp6|rdma, port=N, sec=sys|krb5|krb5i|krb5p, lookupcache=all|none|pos|positive,
    nconnect=N, local_lock=none|all|flock|posix, noresvport, fsc, soft, nosharecache.
    ``vers``/``nfsvers``/``minorversion``/``timeo``/``retrans`` are refused: use the spec fields.
    ``hard`` and ``sharecache`` are refused: a hard mount of dead NFS blocks the agent forever
    (VDSM uses ``soft``), sharecache breaks per-connection options;
  * posixfs ext2/3/4: data=ordered|writeback|journal, commit=N, errors=continue|remount-ro, barrier,
    nobarrier, discard, nodiscard, acl, noacl, user_xattr, journal_checksum;
    xfs: discard, nodiscard, inode32, inode64, nouuid, noquota, logbsize=SIZE, allocsize=SIZE, largeio,
    nolargeio, wsync; btrfs: discard, nodiscard, compress=/compress-force=zlib|lzo|zstd[:N], subvol=PATH,
    subvolid=N, ssd, nossd, autodefrag, noautodefrag, space_cache=v2;
    cifs/smb3: vers=, sec=, uid=N, gid=N, file_mode=0NNN, dir_mode=0NNN, cache=, seal, nobrl, guest,
    serverino, noserverino (credentials are not options: secrets never go on a command line);
    ceph (CephFS, the kernel client): name=, fs=/mds_namespace=, recover_session=no|clean, ms_mode=,
    rsize/wsize/rasize=N, acl, noacl, wsync, nowsync, noshare, dcache, nodcache; secret= and
    secretfile= are refused (the key of name= comes from the node's /etc/ceph keyring);
    a type the admin added with --allow-vfs-type: the common options only; glusterfs, nfs and FUSE
    types (fuse, fuse.*) are never posixfs types;
  * glusterfs: acl, log-level=LEVEL, transport=tcp|rdma, direct-io-mode=enable|disable,
    attribute-timeout=N, entry-timeout=N, negative-timeout=N, use-readdirp=yes|no,
    volfile-max-fetch-attempts=N, fopen-keep-cache, auto_unmount (``backup-volfile-servers`` comes
    from the spec's backupServers);
  * localfs: no options (it is a link, not a mount).
- ``nosuid,nodev`` are appended unless the admin allowed suid/dev.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import ipaddress
import logging
import os
import re
import struct
from collections.abc import Callable, Iterable, Sequence

from hostlib import commands, errors, paths

log = logging.getLogger(__name__)

MOUNTINFO = "/proc/self/mountinfo"
GLUSTER_DIR = "glusterSD"
MAX_OPTION = 256
MAX_COMPONENT = 255
# VDSM's unmount/mount timeouts are bounded by its 60 s command limit; callers pass HostConfig's.
DELETED_SUFFIX = " (deleted)"

# ---------------------------------------------------------------------------------------------- parsing

_OCTAL_RE = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    """Decode the kernel's octal escapes (``\\040`` space, ``\\011`` tab, ``\\012`` newline, ``\\134``)."""
    raw = _OCTAL_RE.sub(lambda m: chr(int(m.group(1), 8)), field)
    # Octal escapes are bytes; re-decode so UTF-8 names written as escapes come out right.
    try:
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return raw


@dataclasses.dataclass(frozen=True)
class MountRecord:
    """One line of mountinfo, decoded. ``source`` is as the kernel shows it; compare with canonical."""

    mount_id: int
    parent_id: int
    major_minor: str
    root: str
    target: str
    options: tuple[str, ...]
    fstype: str
    source: str
    super_options: tuple[str, ...]
    deleted: bool = False
    canonical_source: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "target": self.target,
            "fstype": self.fstype,
            "options": list(self.options),
        }


def _loop_backing_file(device: str) -> str | None:
    name = os.path.basename(device)
    if not re.fullmatch(r"loop[0-9]+", name):
        return None
    try:
        with open(f"/sys/block/{name}/loop/backing_file", encoding="utf-8") as f:
            backing = f.read().strip()
    except OSError:
        return None
    return backing.removesuffix(DELETED_SUFFIX) or None


def canonical_source(source: str, *, loop_backing: Callable[[str], str | None] = _loop_backing_file) -> str:
    """The form two sources are compared in: remote normalised, device links and loops resolved."""
    if source.startswith("/dev/"):
        dev = os.path.realpath(source)
        backing = loop_backing(dev)
        return backing if backing is not None else dev
    if source.startswith("/"):
        return os.path.normpath(source)
    try:
        return normalize_remote(source)
    except errors.InvalidSpec:
        return source


def parse_mountinfo(
    text: str, *, loop_backing: Callable[[str], str | None] = _loop_backing_file
) -> list[MountRecord]:
    """Parse mountinfo text. Malformed lines are skipped with a warning: the kernel wrote the rest."""
    records: list[MountRecord] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            mount_id, parent_id, major_minor, root, target, options = fields[:6]
            fstype, source, super_options = fields[sep + 1 : sep + 4]
            ids = (int(mount_id), int(parent_id))
        except ValueError:
            log.warning("skipping malformed mountinfo line %r", line)
            continue
        target = unescape(target)
        root = unescape(root)
        deleted = target.endswith(DELETED_SUFFIX)
        target = target.removesuffix(DELETED_SUFFIX)
        root = root.removesuffix(DELETED_SUFFIX)
        src = unescape(source)
        records.append(
            MountRecord(
                mount_id=ids[0],
                parent_id=ids[1],
                major_minor=major_minor,
                root=root,
                target=target,
                options=tuple(options.split(",")),
                fstype=unescape(fstype),
                source=src,
                super_options=tuple(super_options.split(",")),
                deleted=deleted,
                canonical_source=canonical_source(src, loop_backing=loop_backing),
            )
        )
    return records


def read_mounts(path: str = MOUNTINFO) -> list[MountRecord]:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return parse_mountinfo(f.read())


def mounts_at(target: str, records: Iterable[MountRecord] | None = None) -> list[MountRecord]:
    """Every record mounted on ``target`` (stacked mounts give several; the last one is on top)."""
    wanted = os.path.normpath(target)
    return [r for r in (read_mounts() if records is None else records) if r.target == wanted]


def topmost(target: str, records: Iterable[MountRecord] | None = None) -> MountRecord | None:
    """The mount users see on ``target``: the top of the stack of mounts there, or None.

    A mount stacked on another one at the same path has that one's mount id as its parent id, so the
    top is the record at ``target`` that no other record at ``target`` has as parent. Should there be
    several such records (a mount left over under a parent that was itself mounted over), the last one
    in mountinfo order wins: the kernel lists mounts in the order they were made.
    """
    at = mounts_at(target, records)
    covered = {r.parent_id for r in at}
    uncovered = [r for r in at if r.mount_id not in covered]
    return uncovered[-1] if uncovered else (at[-1] if at else None)


_SYS_STATMOUNT, _SYS_LISTMOUNT = 457, 458  # the same on every architecture (asm-generic numbering)
_LSMT_ROOT = 0xFFFFFFFFFFFFFFFF
_STATMOUNT_MNT_BASIC = 0x2
_MNT_ID_REQ = "<IIQQ"  # struct mnt_id_req, version 0: size, spare, mnt_id, param
_LISTMOUNT_BATCH = 1024


def _syscall(number: int, *args: object) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    result = int(libc.syscall(number, *args))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def unique_mount_id(mount_id: int) -> int | None:
    """The kernel's 64-bit id of the mount mountinfo lists as ``mount_id``, or None where the kernel
    has no ``listmount(2)`` / ``statmount(2)`` (before Linux 6.8) or the mount is gone.

    The mountinfo id is reused (the kernel hands out the lowest free one, so a mount made after ours
    went away may get our id); the 64-bit id is never reused while the host runs. Both calls read the
    kernel's mount tree only: they never touch the (possibly hung) storage."""
    try:
        after = 0
        while True:
            req = struct.pack(_MNT_ID_REQ, 24, 0, _LSMT_ROOT, after)
            ids = (ctypes.c_uint64 * _LISTMOUNT_BATCH)()
            count = _syscall(_SYS_LISTMOUNT, ctypes.c_char_p(req), ids, _LISTMOUNT_BATCH, 0)
            for unique in ids[:count]:
                buf = ctypes.create_string_buffer(512)
                stat_req = struct.pack(_MNT_ID_REQ, 24, 0, unique, _STATMOUNT_MNT_BASIC)
                try:
                    _syscall(_SYS_STATMOUNT, ctypes.c_char_p(stat_req), buf, len(buf), 0)
                except OSError:
                    continue  # unmounted since listmount
                # struct statmount: mnt_id (u64) at 40, mnt_parent_id (u64) at 48, mnt_id_old (u32) at 56
                if struct.unpack_from("<I", buf.raw, 56)[0] == mount_id:
                    return int(unique)
            if count < _LISTMOUNT_BATCH:
                return None
            after = int(ids[count - 1])
    except (OSError, AttributeError):
        return None


@dataclasses.dataclass(frozen=True)
class MountIdentity:
    """What identifies one mount hoststorage made, recorded in the ledger right after mounting.

    The path alone never does: anyone can mount on the same point (stacked), or unmount ours and
    mount something else there. The kernel's mount id names one mount while it exists, but mountinfo's
    ids are reused, so the 64-bit id that never is (``unique_id``, Linux 6.8+) is recorded too where
    the kernel has it; the device number, file system type and canonical source guard the rest (on an
    older kernel a same-source mount on the same point that got our reused id cannot be told apart).
    """

    mount_id: int
    major_minor: str
    fstype: str
    source: str
    unique_id: int | None = None

    @classmethod
    def of(cls, record: MountRecord) -> MountIdentity:
        return cls(
            record.mount_id,
            record.major_minor,
            record.fstype,
            record.canonical_source,
            unique_mount_id(record.mount_id),
        )

    def matches(self, record: MountRecord) -> bool:
        seen = (record.mount_id, record.major_minor, record.fstype, record.canonical_source)
        if (self.mount_id, self.major_minor, self.fstype, self.source) != seen:
            return False
        if self.unique_id is None:
            return True
        # The cheap fields agree; only now ask the kernel which mount this id is today.
        return unique_mount_id(record.mount_id) in (self.unique_id, None)

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "mountId": self.mount_id,
            "majorMinor": self.major_minor,
            "fstype": self.fstype,
            "source": self.source,
        }
        if self.unique_id is not None:
            out["uniqueId"] = self.unique_id
        return out

    @classmethod
    def from_dict(cls, raw: object) -> MountIdentity | None:
        """The identity a ledger entry recorded; None when there is none or it is malformed."""
        if not isinstance(raw, dict):
            return None
        mount_id, major_minor = raw.get("mountId"), raw.get("majorMinor")
        fstype, source = raw.get("fstype"), raw.get("source")
        if isinstance(mount_id, bool) or not isinstance(mount_id, int):
            return None
        if not all(isinstance(v, str) and v for v in (major_minor, fstype, source)):
            return None
        unique = raw.get("uniqueId")
        if unique is not None and (isinstance(unique, bool) or not isinstance(unique, int)):
            return None
        return cls(mount_id, str(major_minor), str(fstype), str(source), unique)


def mounts_under(base: str, records: Iterable[MountRecord] | None = None) -> list[MountRecord]:
    """Records at or below ``base``, deepest first (the order to unmount them in)."""
    found = [r for r in (read_mounts() if records is None else records) if paths.is_under(base, r.target)]
    return sorted(found, key=lambda r: (r.target.count("/"), r.mount_id), reverse=True)


def is_mounted(source: str, target: str, records: Iterable[MountRecord] | None = None) -> bool:
    """VDSM's meaning: some record has this source AND this target (both compared canonically)."""
    return find_mount(source, target, records) is not None


def find_mount(source: str, target: str, records: Iterable[MountRecord] | None = None) -> MountRecord | None:
    wanted = canonical_source(source)
    for r in reversed(mounts_at(target, records)):
        if r.canonical_source == wanted:
            return r
    return None


# ----------------------------------------------------------------------------------- VDSM mount points


def split_remote(remote: str, *, field: str | None = None) -> tuple[str, str]:
    """``host:/path``, ``[v6]:/path`` or ``host:port:/path`` -> (host part, path). No validation of host."""
    if remote.startswith("["):
        end = remote.find("]")
        if end < 0 or remote[end + 1 : end + 2] != ":":
            raise errors.InvalidSpec(f"{remote!r}: expected [ipv6]:/path", field=field)
        rest = remote[end + 2 :]
        host = remote[: end + 1]
        if rest.startswith(tuple("0123456789")) and ":/" in rest:
            port, rest = rest.split(":", 1)
            host = f"{host}:{port}"
        return host, rest
    idx = remote.find(":/")
    if idx <= 0:
        raise errors.InvalidSpec(f"{remote!r} is not of the form server:/path", field=field)
    return remote[:idx], remote[idx + 1 :]


def _normpath(path: str) -> str:
    # os.path.normpath keeps a leading '//' (POSIX allows it to mean something else); NFS does not.
    return "/" + os.path.normpath(path).lstrip("/") if path.startswith("/") else os.path.normpath(path)


def normalize_remote(remote: str, *, field: str | None = None) -> str:
    """VDSM's normalisation: ``server://a/`` -> ``server:/a``; IPv6 compressed; host:port kept."""
    host, path = split_remote(remote, field=field)
    if host.startswith("["):
        end = host.index("]")
        addr = host[1:end]
        if paths.is_ipv6(addr):
            host = f"[{ipaddress.IPv6Address(addr)}]{host[end + 1 :]}"
    return f"{host}:{_normpath(path)}"


def escape_path(path: str) -> str:
    """VDSM's ``transformPath``: ``_`` -> ``__`` then ``/`` -> ``_``."""
    return path.replace("_", "__").replace("/", "_")


def under_base(base: str, name: str, *, field: str | None, link_ok: bool = False) -> str:
    """``<realpath(base)>/<name>``, refused unless it stays directly under the base after realpath.

    A symlink there is refused for mount points (mounting would follow it out of the base) as
    ``Conflict`` (the spec is valid; something not ours holds the name); localfs passes ``link_ok``
    because its target *is* a link, which it checks itself.
    """
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise errors.InvalidSpec(f"cannot derive a mount point from {name!r}", field=field)
    if len(name.encode("utf-8", "surrogateescape")) > MAX_COMPONENT:
        raise errors.InvalidSpec(
            f"the mount point name would be longer than {MAX_COMPONENT} bytes", field=field
        )
    real_base = os.path.realpath(base)
    candidate = os.path.join(real_base, name)
    if candidate in {r.target for r in read_mounts()}:
        # A mount target is never a symlink (mount(8) resolves it), and stat-ing it would reach into
        # the mounted storage, which may hang.
        return candidate
    if os.path.islink(candidate):
        if link_ok:
            return candidate
        # Not a spec error: the spec is fine, something not ours took the name (issue 9, class 10).
        raise errors.Conflict(
            f"mount point {candidate!r} is a symlink to {os.readlink(candidate)!r}, not hoststorage's; "
            "nothing followed"
        )
    real = os.path.realpath(candidate)
    if os.path.dirname(real) != real_base:
        raise errors.InvalidSpec(f"mount point {candidate!r} escapes {real_base!r}", field=field)
    return real


def mount_point_for(base: str, remote: str, *, field: str | None = None) -> str:
    """``<base>/<escaped normalised remote>``, e.g. ``server:/a/b_c`` -> ``<base>/server:_a_b__c``."""
    return under_base(base, escape_path(normalize_remote(remote, field=field)), field=field)


def gluster_mount_point(base: str, server: str, volume: str, *, field: str | None = None) -> str:
    """``<base>/glusterSD/<escaped server:/volume>``, as VDSM mounts gluster domains."""
    remote = normalize_remote(f"{server}:/{volume.lstrip('/')}", field=field)
    gluster_dir = under_base(base, GLUSTER_DIR, field=field)
    return under_base(gluster_dir, escape_path(remote), field=field)


def local_link_for(base: str, local_path: str, *, field: str | None = None) -> str:
    """The localfs link: ``<base>/<escaped path>``, e.g. ``/data/x_y`` -> ``<base>/_data_x__y``."""
    return under_base(base, escape_path(_normpath(local_path)), field=field, link_ok=True)


# ------------------------------------------------------------------------------------------ options

_OPTION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/=@+-]*$")
_NUM = r"[0-9]{1,10}"
_SIZE = r"[0-9]{1,10}[kKmMgG]?"
_SELINUX = r"[A-Za-z0-9_.:]{1,200}"

FORBIDDEN = {
    "exec": "it would undo noexec hardening",
    "suid": "set-user-id programs on storage need the admin's allow_suid",
    "dev": "device files on storage need the admin's allow_dev",
    "defaults": "it implies suid, dev and exec",
    "bind": "it would expose an existing host directory",
    "rbind": "it would expose an existing host directory tree",
    "move": "it operates on an existing host mount",
    "remount": "it changes an existing host mount",
    "loop": "it mounts an arbitrary image file of the host; attach a loop device and use it as source",
    "user": "it lets unprivileged users unmount",
    "users": "it lets unprivileged users unmount",
    "owner": "it lets unprivileged users mount",
    "group": "it lets unprivileged users mount",
    "credentials": "secrets never go on a command line",
    "password": "secrets never go on a command line",
}
FORBIDDEN_BY_KIND = {
    "nfs": {
        "vers": "set spec.nfs.version instead",
        "nfsvers": "set spec.nfs.version instead",
        "minorversion": "set spec.nfs.version instead",
        "timeo": "set spec.nfs.timeo instead",
        "retrans": "set spec.nfs.retrans instead",
        "hard": "a hard mount of unreachable NFS blocks the agent forever (VDSM mounts soft)",
        "sharecache": "it would share options between connections to one server (VDSM uses nosharecache)",
    },
    "glusterfs": {"backup-volfile-servers": "set spec.glusterfs.backupServers instead"},
}

COMMON: dict[str, str | None] = {
    **dict.fromkeys(
        [
            "ro",
            "rw",
            "noatime",
            "relatime",
            "strictatime",
            "nodiratime",
            "lazytime",
            "noexec",
            "nosuid",
            "nodev",
            "sync",
            "async",
            "dirsync",
        ]
    ),
    "context": _SELINUX,
    "fscontext": _SELINUX,
    "defcontext": _SELINUX,
    "rootcontext": _SELINUX,
}

NFS: dict[str, str | None] = {
    **dict.fromkeys(["lock", "nolock", "ac", "noac", "noresvport", "fsc", "soft", "nosharecache"]),
    **dict.fromkeys(["actimeo", "acregmin", "acregmax", "acdirmin", "acdirmax", "nconnect", "port"], _NUM),
    "rsize": _NUM,
    "wsize": _NUM,
    "proto": "tcp|tcp6|rdma",
    "sec": "sys|krb5|krb5i|krb5p",
    "lookupcache": "all|none|pos|positive",
    "local_lock": "none|all|flock|posix",
}

EXT: dict[str, str | None] = {
    **dict.fromkeys(
        ["barrier", "nobarrier", "discard", "nodiscard", "acl", "noacl", "user_xattr", "journal_checksum"]
    ),
    "data": "ordered|writeback|journal",
    "commit": _NUM,
    "errors": "continue|remount-ro",
}
XFS: dict[str, str | None] = {
    **dict.fromkeys(
        ["discard", "nodiscard", "inode32", "inode64", "nouuid", "noquota", "largeio", "nolargeio", "wsync"]
    ),
    "logbsize": _SIZE,
    "allocsize": _SIZE,
}
BTRFS: dict[str, str | None] = {
    **dict.fromkeys(["discard", "nodiscard", "ssd", "nossd", "autodefrag", "noautodefrag"]),
    "compress": "(zlib|lzo|zstd)(:[0-9]{1,2})?",
    "compress-force": "(zlib|lzo|zstd)(:[0-9]{1,2})?",
    "subvol": r"[A-Za-z0-9_.@+-]+(/[A-Za-z0-9_.@+-]+)*",
    "subvolid": _NUM,
    "space_cache": "v2",
}
CIFS: dict[str, str | None] = {
    **dict.fromkeys(["seal", "nobrl", "guest", "serverino", "noserverino"]),
    "vers": r"1\.0|2\.0|2\.1|3|3\.0|3\.02|3\.1\.1|default",
    "sec": "none|krb5|krb5i|ntlmssp|ntlmsspi",
    "uid": _NUM,
    "gid": _NUM,
    "file_mode": "0[0-7]{3}",
    "dir_mode": "0[0-7]{3}",
    "cache": "strict|none|loose",
}
GLUSTER: dict[str, str | None] = {
    **dict.fromkeys(["acl", "fopen-keep-cache", "auto_unmount"]),
    "log-level": "CRITICAL|ERROR|WARNING|INFO|DEBUG|TRACE|NONE",
    "transport": "tcp|rdma",
    "direct-io-mode": "enable|disable",
    "attribute-timeout": _NUM,
    "entry-timeout": _NUM,
    "negative-timeout": _NUM,
    "use-readdirp": "yes|no",
    "volfile-max-fetch-attempts": _NUM,
}

# ---- posixfs file system types (VDSM "POSIX compliant FS" domains)
# The built-in allow-list: what VDSM admins run as POSIX domains. An admin extends it per host with
# --allow-vfs-type (HostConfig.extra_vfs_types); an extended type gets the common options only.
CEPH: dict[str, str | None] = {
    # The cephx key comes from the node's /etc/ceph keyring for name=; see POSIXFS_FORBIDDEN.
    **dict.fromkeys(["acl", "noacl", "wsync", "nowsync", "noshare", "dcache", "nodcache"]),
    "name": "[A-Za-z0-9_.-]{1,64}",
    "fs": "[A-Za-z0-9_.-]{1,64}",
    "mds_namespace": "[A-Za-z0-9_.-]{1,64}",
    "recover_session": "no|clean",
    "ms_mode": "legacy|crc|secure|prefer-crc|prefer-secure",
    "rsize": _NUM,
    "wsize": _NUM,
    "rasize": _NUM,
}
POSIXFS_TYPES: dict[str, dict[str, str | None]] = {
    "ext2": EXT,
    "ext3": EXT,
    "ext4": EXT,
    "xfs": XFS,
    "btrfs": BTRFS,
    "cifs": CIFS,
    "smb3": CIFS,
    "ceph": CEPH,
}
# vfsType values a posixfs spec may not use, with what to do instead; an admin cannot allow them either.
POSIXFS_REFUSED_TYPES = {
    "nfs": "use type nfs",
    "nfs4": "use type nfs",
    "glusterfs": "use type glusterfs",
    "fuse": "FUSE helpers of posixfs would run in the agent's cgroup and die with it; use a kernel client",
    "bind": "bind mounts are not allowed",
    "none": "bind mounts are not allowed",
    "tmpfs": "not storage",
    "proc": "not storage",
    "sysfs": "not storage",
    "devtmpfs": "not storage",
    "overlay": "not storage",
}
POSIXFS_FORBIDDEN: dict[str, dict[str, str]] = {
    "ceph": {
        "secret": "secrets never go on a command line (mount.ceph reads the key of name= from /etc/ceph)",
        "secretfile": "it would send any host file to the server the spec names; the key of name= comes "
        "from the node's /etc/ceph keyring",
    },
}
# Filesystems whose source is a network path rather than a device.
NETWORK_POSIXFS = frozenset({"cifs", "smb3"})
VFS_TYPE_PATTERN = "^[a-z0-9][a-z0-9._]*$"
"""The shape of a vfsType (``mount -t``); crds/storageconnection.yaml uses the same pattern."""
MAX_VFS_TYPE = 32
EXTENDED = "posixfs:*"
"""The option allow-list kind of a vfsType the admin added: the common options only."""
FORBIDDEN_BY_KIND.update({f"posixfs:{t}": why for t, why in POSIXFS_FORBIDDEN.items()})


def refused_vfs_type(vfs_type: str) -> str | None:
    """Why ``vfs_type`` may never be a posixfs type (``fuse.*`` included), or None."""
    if vfs_type.startswith("fuse."):
        return POSIXFS_REFUSED_TYPES["fuse"]
    return POSIXFS_REFUSED_TYPES.get(vfs_type)


def check_vfs_type_name(vfs_type: object, *, field: str | None = None) -> str:
    """The shape of a vfsType, and not a refused one; raises InvalidSpec."""
    if not isinstance(vfs_type, str) or not vfs_type:
        raise errors.InvalidSpec("is required (ext4, xfs, btrfs, ceph, ...)", field=field)
    if len(vfs_type) > MAX_VFS_TYPE or not re.match(VFS_TYPE_PATTERN, vfs_type):
        raise errors.InvalidSpec(
            f"{vfs_type!r} is not a file system type name ({VFS_TYPE_PATTERN}, at most {MAX_VFS_TYPE})",
            field=field,
        )
    why = refused_vfs_type(vfs_type)
    if why is not None:
        raise errors.InvalidSpec(f"{vfs_type!r} is not allowed: {why}", field=field)
    return vfs_type


def posixfs_kind(vfs_type: object, *, extra: Iterable[str] = (), field: str | None = None) -> str:
    """The option allow-list kind of a posixfs ``vfsType``: ``posixfs:<type>`` for a built-in type,
    :data:`EXTENDED` for one the admin added (``extra``); InvalidSpec for anything else."""
    name = check_vfs_type_name(vfs_type, field=field)
    if name in POSIXFS_TYPES:
        return f"posixfs:{name}"
    extra = tuple(extra)
    if name in extra:
        return EXTENDED
    known = ", ".join([*POSIXFS_TYPES, *extra])
    raise errors.InvalidSpec(
        f"{name!r} is not one of {known} (an admin may add types with --allow-vfs-type)", field=field
    )


ALLOWED: dict[str, dict[str, str | None]] = {
    "nfs": {**COMMON, **NFS},
    "glusterfs": {**COMMON, **GLUSTER},
    "localfs": {},
    **{f"posixfs:{t}": {**COMMON, **extra} for t, extra in POSIXFS_TYPES.items()},
    EXTENDED: dict(COMMON),
}


def check_option(
    kind: str, option: object, *, allow_suid: bool = False, allow_dev: bool = False, field: str | None = None
) -> str:
    """Validate one option against the kind's allow-list (``nfs``, ``glusterfs``, ``posixfs:ext4``...)."""
    if not isinstance(option, str):
        raise errors.InvalidSpec(f"must be a string, got {type(option).__name__}", field=field)
    if not option:
        raise errors.InvalidSpec("empty mount option", field=field)
    if len(option) > MAX_OPTION:
        raise errors.InvalidSpec(f"mount option longer than {MAX_OPTION} characters", field=field)
    shown = option if option.isprintable() else repr(option)
    if "," in option:
        raise errors.InvalidSpec(
            f"mount option {shown!r} contains a comma: give one option per item", field=field
        )
    if "\0" in option:
        raise errors.InvalidSpec("mount option contains a NUL byte", field=field)
    if any(c.isspace() for c in option):
        raise errors.InvalidSpec(f"mount option {shown!r} contains whitespace", field=field)
    if option.startswith("-"):
        raise errors.InvalidSpec(f"mount option {shown!r} starts with '-'", field=field)
    if not _OPTION_RE.match(option):
        raise errors.InvalidSpec(
            f"mount option {shown!r} contains characters outside [A-Za-z0-9_.:/=@+-]", field=field
        )
    name, eq, value = option.partition("=")
    if (name == "suid" and allow_suid) or (name == "dev" and allow_dev):
        return option
    if name.lower().startswith("x-") or name.startswith("make-"):
        raise errors.InvalidSpec(f"mount option {option!r} is not allowed", field=field)
    why = FORBIDDEN.get(name) or FORBIDDEN_BY_KIND.get(kind, {}).get(name)
    if why:
        raise errors.InvalidSpec(f"mount option {name!r} is not allowed: {why}", field=field)
    allowed = ALLOWED.get(kind)
    if allowed is None:
        raise errors.InvalidSpec(f"no mount options are known for {kind!r}", field=field)
    if name not in allowed:
        listing = ", ".join(sorted(allowed)) or "none"
        raise errors.InvalidSpec(
            f"mount option {name!r} is not allowed for {kind} (allowed: {listing})", field=field
        )
    pattern = allowed[name]
    if pattern is None:
        if eq:
            raise errors.InvalidSpec(f"mount option {name!r} takes no value", field=field)
    elif not eq or not re.fullmatch(pattern, value) or ".." in value.split("/"):
        raise errors.InvalidSpec(
            f"mount option {name!r} needs a value matching {pattern} (no '..')", field=field
        )
    return option


def check_options(
    kind: str,
    options: object,
    *,
    allow_suid: bool = False,
    allow_dev: bool = False,
    field: str = "options",
    limit: int = 64,
) -> tuple[str, ...]:
    if not isinstance(options, (list, tuple)):
        raise errors.InvalidSpec(f"must be a list of strings, got {type(options).__name__}", field=field)
    if len(options) > limit:
        raise errors.InvalidSpec(f"has {len(options)} items, the limit is {limit}", field=field)
    return tuple(
        check_option(kind, o, allow_suid=allow_suid, allow_dev=allow_dev, field=f"{field}[{i}]")
        for i, o in enumerate(options)
    )


def with_policy(options: Iterable[str], *, allow_suid: bool, allow_dev: bool) -> tuple[str, ...]:
    """Options in order, duplicates dropped, ``nosuid``/``nodev`` appended unless the admin allows them."""
    out: list[str] = []
    for o in options:
        if o not in out:
            out.append(o)
    if not allow_suid and "nosuid" not in out:
        out.append("nosuid")
    if not allow_dev and "nodev" not in out:
        out.append("nodev")
    return tuple(out)


# --------------------------------------------------------------------------------- mount / umount


def mount_argv(source: str, target: str, fstype: str, options: Sequence[str]) -> tuple[str, ...]:
    argv = ["mount", "-t", fstype]
    if options:
        argv += ["-o", ",".join(options)]
    return (*argv, source, target)


def umount_argv(target: str, *, lazy: bool = False, force: bool = False) -> tuple[str, ...]:
    """umount(8) of exactly ``target``: ``--no-canonicalize`` keeps umount from resolving the path,
    which stats the mounted file system and blocks in D state on hung NFS or gluster (measured: a
    ``delete`` of a SIGSTOPped gluster volume took over 70 s without it). Callers pass the confined
    mount point as it appears in mountinfo, so nothing needs resolving."""
    argv = ["umount", "--no-canonicalize"]
    if force:
        argv.append("-f")
    if lazy:
        argv.append("-l")
    return (*argv, target)


def mount(
    runner: commands.RunnerProtocol,
    source: str,
    target: str,
    fstype: str,
    options: Sequence[str],
    *,
    timeout: float,
    prefix: Sequence[str] = (),
) -> None:
    """Run mount(8); failure -> MountFailed with the tool's own message.

    A missing tool, or a kernel without the filesystem ("unknown filesystem type", mount.nfs's
    "No such device"), is Unsupported: permanent, retrying would not help.
    """
    argv = (*prefix, *mount_argv(source, target, fstype, options))
    try:
        runner(argv, timeout=timeout)
    except commands.CommandNotFound as exc:
        raise errors.Unsupported(f"cannot mount {source} on {target}: {exc.tool_message}") from exc
    except commands.CommandError as exc:
        text = exc.tool_message
        if exc.timed_out:
            raise errors.MountFailed(f"mount {source} on {target} timed out after {timeout:g}s") from exc
        if "unknown filesystem type" in text or "No such device" in text:
            raise errors.Unsupported(f"mount {source} on {target} failed: {text}") from exc
        raise errors.MountFailed(f"mount {source} on {target} failed: {text}") from exc
    log.info("mounted %s on %s (%s)", source, target, fstype)


def umount(
    runner: commands.RunnerProtocol,
    target: str,
    *,
    timeout: float,
    lazy: bool = False,
    force: bool = False,
) -> None:
    """Run umount(8) on exactly ``target`` (never canonicalised); "target is busy" -> InUse naming the
    holders we can find cheaply; no answer within ``timeout`` -> UnmountFailed saying so (the runner
    abandons a umount stuck in D state: the caller is never held longer than the timeout and 5 s)."""
    try:
        runner(umount_argv(target, lazy=lazy, force=force), timeout=timeout)
    except commands.CommandError as exc:
        if exc.timed_out:
            raise errors.UnmountFailed(
                f"umount {target} timed out after {timeout:g}s: the storage does not answer (hung?); "
                "the mount is left in place (delete --force detaches it lazily)"
            ) from exc
        text = exc.tool_message
        if "busy" in text.lower():
            holders = find_holders(target)
            who = f"; held by {', '.join(holders)}" if holders else ""
            raise errors.InUse(f"{target} is busy{who}") from exc
        raise errors.UnmountFailed(f"umount {target} failed: {text}") from exc
    log.info("unmounted %s%s", target, " (lazy)" if lazy else "")


def find_holders(target: str, *, limit: int = 10, proc: str = "/proc") -> list[str]:
    """Processes with an open file, cwd or root under ``target``, as ``"pid (comm)"``.

    Reads only /proc link texts (never stats the mount), so it cannot hang on dead storage.
    """
    prefix = os.path.normpath(target).rstrip("/") + "/"
    found: list[str] = []
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        links: list[str] = [f"{proc}/{pid}/cwd", f"{proc}/{pid}/root"]
        with contextlib.suppress(OSError):
            links += [f"{proc}/{pid}/fd/{fd}" for fd in os.listdir(f"{proc}/{pid}/fd")]
        for link in links:
            try:
                dest = os.readlink(link)
            except OSError:
                continue
            if dest == prefix[:-1] or dest.startswith(prefix):
                comm = "?"
                with contextlib.suppress(OSError), open(f"{proc}/{pid}/comm", encoding="utf-8") as f:
                    comm = f.read().strip()
                found.append(f"{pid} ({comm})")
                break
        if len(found) >= limit:
            break
    return found
