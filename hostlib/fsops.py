"""Confined file operations: the one way hoststorage creates, changes or removes anything under a root.

hoststorage runs as root; the directories it works in (the mount base, an allowed host path, a mounted
storage domain) can hold names that someone else controls. Acting on a path string lets the kernel
follow whatever link sits at any component *at the moment of the call*, so a checked path is not the
path acted on (issue 9, classes 1 and 6). Here nothing acts on a path string:

- the root is opened once (``open_root``; the root itself is a trusted anchor: an admin-configured
  directory or one hoststorage made) and every component below it is opened relative to the previous
  directory descriptor, refusing symlinks at every step: ``openat2(RESOLVE_BENEATH |
  RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`` where the kernel has it (Linux 5.6), else one
  ``openat(O_NOFOLLOW | O_DIRECTORY)`` per component (:data:`FORCE_FALLBACK` forces that path; tests run
  both). A symlink anywhere below the root is :class:`hostlib.errors.Conflict`: nothing is followed.
- the final step is an ``*at`` call on the parent's descriptor with the last name, never following it
  (``O_CREAT|O_EXCL|O_NOFOLLOW``, ``mkdirat``, ``symlinkat``, ``unlinkat``, ``renameat``, ``fchmod``).
- a thing is hoststorage's only if hoststorage created it: every create returns its :data:`Ident`
  (device, inode), never adopting a name that already exists (``FileExistsError`` is the caller's to
  report). Every remove and chmod takes the recorded ident; the object is first renamed aside to a
  private name in the same directory (so what is compared is exactly what will be removed), compared by
  ``fstatat(AT_SYMLINK_NOFOLLOW)``, and removed only on a match. On a mismatch it is renamed back
  (``renameat2(RENAME_NOREPLACE)``; a check, then ``renameat``, on filesystems without it: gluster's FUSE
  client, NFS) and :class:`~hostlib.errors.Conflict` is raised: nothing removed.

Limit: an inode number freed by a delete can be reused at once (ext4, tmpfs). The type is compared
too, so a link or directory put where our file was is never taken for it; an object of the same type
that someone creates at our name *after deleting ours* may carry our ident, and removing it removes
only that name in a directory they can write (nothing is ever followed, no other name of any inode
is touched).

These calls can hit hung storage when the root is a mount: callers that work on storage run them in
the abandonable helper process (:mod:`hostlib.check_helper`), never in an agent thread. Only the
standard library and :mod:`hostlib.errors` are imported, so that helper still starts fast.

:data:`hook` is a test seam: when set, it is called with a step name (``walked``, ``created``,
``aside``, ``compared``) and the name acted on between the steps, so a test can swap a link in at
each step.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import stat
from collections.abc import Callable, Iterator

from hostlib import errors

Ident = tuple[int, int]
"""(st_dev, st_ino) of something hoststorage created: what proves it is ours later."""

FORCE_FALLBACK = False
"""Never use openat2 (tests set it to cover the per-component fallback)."""
hook: Callable[[str, str], None] | None = None
"""Test seam: ``hook(step, name)`` between steps (see the module docstring)."""

_SYS_OPENAT2 = 437  # the same number on every architecture (new syscalls are unified since 5.1)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RENAME_NOREPLACE = 1
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_ASIDE_PREFIX = ".hoststorage-del-"

_libc = ctypes.CDLL(None, use_errno=True)
_openat2_works: bool | None = None


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


def ident(st: os.stat_result) -> Ident:
    return (st.st_dev, st.st_ino)


def _step(step: str, name: str) -> None:
    if hook is not None:
        hook(step, name)


def parts(rel: str) -> list[str]:
    """The components of a path relative to a root; refuses absolute paths, '.', '..' and NUL."""
    if "\0" in rel:
        raise errors.InvalidSpec(f"{errors.shown(rel)} contains a NUL byte")
    if rel.startswith("/"):
        raise errors.InvalidSpec(f"{errors.shown(rel)} must be relative to its root")
    out = [p for p in rel.split("/") if p]
    if any(p in (".", "..") for p in out):
        raise errors.InvalidSpec(f"{errors.shown(rel)} contains a '.' or '..' component")
    return out


def has_openat2() -> bool:
    """Whether this kernel answers openat2 (probed once per process)."""
    global _openat2_works  # noqa: PLW0603 - one probe per process
    if _openat2_works is None:
        how = _OpenHow(_DIR_FLAGS, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS)
        fd = _libc.syscall(_SYS_OPENAT2, -100, b".", ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            os.close(fd)
            _openat2_works = True
        else:
            _openat2_works = ctypes.get_errno() not in (errno.ENOSYS, errno.EPERM, errno.EINVAL)
    return _openat2_works


def _symlink_conflict(root: str, rel: str) -> errors.Conflict:
    return errors.Conflict(
        f"{os.path.join(root, rel)}: a symlink or a non-directory is in the way; nothing followed"
    )


def _openat2(dir_fd: int, rel: str) -> int:
    how = _OpenHow(_DIR_FLAGS, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
    while True:
        fd = int(_libc.syscall(_SYS_OPENAT2, dir_fd, os.fsencode(rel), ctypes.byref(how), ctypes.sizeof(how)))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err not in (errno.EINTR, errno.EAGAIN):
            raise OSError(err, os.strerror(err), rel)


def open_root(root: str) -> int:
    """Open the root directory (a trusted anchor: the path as configured or made by hoststorage)."""
    return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def open_beneath(root_fd: int, components: list[str], *, root: str = "") -> int:
    """A new descriptor of the directory ``components`` below ``root_fd``; no symlink followed."""
    rel = "/".join(components)
    try:
        if not components:
            return os.dup(root_fd)
        if not FORCE_FALLBACK and has_openat2():
            return _openat2(root_fd, rel)
        fd = os.dup(root_fd)
        for part in components:
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            finally:
                os.close(fd)
            fd = nxt
        return fd
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
            raise _symlink_conflict(root, rel) from None
        raise


@contextlib.contextmanager
def directory(root: str, rel: str = "") -> Iterator[int]:
    """A descriptor of ``root/rel`` (a directory, reached without following any link below root)."""
    root_fd = open_root(root)
    try:
        fd = open_beneath(root_fd, parts(rel), root=root)
    finally:
        os.close(root_fd)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def parent(root: str, rel: str) -> Iterator[tuple[int, str]]:
    """(descriptor of the parent directory, last name) of ``root/rel``; ``rel`` must name something."""
    comps = parts(rel)
    if not comps:
        raise errors.InvalidSpec(f"{errors.shown(rel)} names the root itself, not something below it")
    with directory(root, "/".join(comps[:-1])) as fd:
        _step("walked", comps[-1])
        yield fd, comps[-1]


def lookup(root: str, rel: str) -> os.stat_result | None:
    """``lstat`` of ``root/rel`` through the confined walk; None when the name does not exist."""
    with parent(root, rel) as (fd, name):
        try:
            return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None


def _fstat_name(fd: int, name: str) -> os.stat_result:
    return os.stat(name, dir_fd=fd, follow_symlinks=False)


def create_file(root: str, rel: str, data: bytes = b"", *, mode: int = 0o600, sync: bool = True) -> Ident:
    """Create a new regular file (``O_CREAT|O_EXCL|O_NOFOLLOW``) and write ``data``; its ident.

    Raises ``FileExistsError`` when the name exists (whatever it is, a link included): never adopted."""
    with parent(root, rel) as (dfd, name):
        fd = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd
        )
        try:
            made = ident(os.fstat(fd))
            _step("created", name)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
    return made


def mkdir(root: str, rel: str, *, mode: int = 0o755) -> Ident:
    """Create a new directory (never adopting an existing one: ``FileExistsError``); its ident."""
    with parent(root, rel) as (dfd, name):
        os.mkdir(name, mode, dir_fd=dfd)
        _step("created", name)
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _symlink_conflict(root, rel) from None
            raise
        try:
            st = os.fstat(fd)
            # Swapped between mkdirat and the open: a directory someone else made is not ours.
            if st.st_uid != os.geteuid():
                raise errors.Conflict(
                    f"{os.path.join(root, rel)}: the directory made was replaced by "
                    "someone else's; left alone"
                )
            return ident(st)
        finally:
            os.close(fd)


def makedirs(root: str, rel: str, *, mode: int = 0o755) -> list[tuple[str, Ident]]:
    """Each missing directory of ``rel`` created below ``root`` (existing ones must be directories,
    reached without links); the (relative path, ident) of each one created, outermost first."""
    made: list[tuple[str, Ident]] = []
    comps = parts(rel)
    for i in range(1, len(comps) + 1):
        sub = "/".join(comps[:i])
        try:
            made.append((sub, mkdir(root, sub, mode=mode)))
        except FileExistsError:
            with directory(root, sub):
                pass  # exists: it must be a directory reached without a link (else Conflict)
    return made


def symlink(root: str, rel: str, target: str) -> Ident:
    """Create a new symlink ``root/rel -> target`` (the link itself is never followed); its ident."""
    with parent(root, rel) as (dfd, name):
        os.symlink(target, name, dir_fd=dfd)
        _step("created", name)
        return ident(_fstat_name(dfd, name))


def link(root: str, src: str, dst: str) -> Ident:
    """A new hard link ``dst`` to ``src`` (both below ``root``, ``src`` not followed); its ident."""
    with parent(root, src) as (sfd, sname), parent(root, dst) as (dfd, dname):
        os.link(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
        _step("created", dname)
        return ident(_fstat_name(dfd, dname))


def readlink(root: str, rel: str) -> str | None:
    """What the symlink ``root/rel`` says (None when absent or not a symlink); never followed."""
    with parent(root, rel) as (dfd, name):
        try:
            return os.readlink(name, dir_fd=dfd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return None
            raise


def rename(root: str, src: str, dst: str, *, expect: Ident) -> None:
    """Rename our ``src`` (compared with ``expect`` first) to ``dst`` below ``root``, replacing ``dst``
    only when it is not a directory; Conflict when ``src`` is not what we made."""
    with parent(root, src) as (sfd, sname), parent(root, dst) as (dfd, dname):
        st = _fstat_name(sfd, sname)
        if ident(st) != expect:
            raise _mismatch(root, src, st, expect)
        _step("compared", sname)
        os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)


def _renameat2_noreplace(fd: int, src: str, dst: str) -> None:
    fn = getattr(_libc, "renameat2", None)
    if fn is not None:
        if fn(fd, os.fsencode(src), fd, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err != errno.EINVAL:
            raise OSError(err, os.strerror(err), dst)
        # EINVAL: this filesystem has no RENAME_NOREPLACE (glusterfs's FUSE client, NFS). Found by the
        # chaos soak: every probe file on a gluster mount was left behind on delete. Fall through to a
        # check-then-rename, as without renameat2: the aside names are random, so only putting a
        # mismatched object back under its name has a (narrow) race, and that only loses the name.
    _rename_if_absent(fd, src, dst)


def _rename_if_absent(fd: int, src: str, dst: str) -> None:
    if os.path.lexists(f"/proc/self/fd/{fd}/{dst}"):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
    os.rename(src, dst, src_dir_fd=fd, dst_dir_fd=fd)


def _mismatch(root: str, rel: str, st: os.stat_result, expect: Ident) -> errors.Conflict:
    what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not the one hoststorage created"
    return errors.Conflict(
        f"{os.path.join(root, rel)} is {what} (device:inode {st.st_dev}:{st.st_ino}, recorded "
        f"{expect[0]}:{expect[1]}); nothing removed"
    )


_IS_KIND = {"file": stat.S_ISREG, "link": stat.S_ISLNK, "dir": stat.S_ISDIR}


def _remove(root: str, rel: str, expect: Ident, *, kind: str) -> bool:
    with parent(root, rel) as (dfd, name):
        try:
            _fstat_name(dfd, name)
        except FileNotFoundError:
            return False
        aside = _ASIDE_PREFIX + secrets.token_hex(8)
        try:
            _renameat2_noreplace(dfd, name, aside)
        except FileNotFoundError:
            return False
        _step("aside", name)
        st = _fstat_name(dfd, aside)
        # The type too: an inode number freed by someone who deleted ours can be reused at once for
        # what they put at the name (ext4 and tmpfs do); a hard link to a victim never shares ours.
        if ident(st) != expect or not _IS_KIND[kind](st.st_mode):
            _put_back(dfd, aside, name, root, rel)
            raise _mismatch(root, rel, st, expect)
        _step("compared", aside)
        try:
            if kind == "dir":
                os.rmdir(aside, dir_fd=dfd)
            else:
                os.unlink(aside, dir_fd=dfd)
        except OSError:
            _put_back(dfd, aside, name, root, rel)
            raise
        return True


def _put_back(dfd: int, aside: str, name: str, root: str, rel: str) -> None:
    try:
        _renameat2_noreplace(dfd, aside, name)
    except OSError as exc:
        raise errors.Conflict(
            f"{os.path.join(root, rel)} was replaced while hoststorage removed it; what it found is "
            f"left as {aside} beside it ({exc.strerror}); nothing removed"
        ) from None


def remove(root: str, rel: str, *, expect: Ident, kind: str = "file") -> bool:
    """Unlink the ``kind`` (``file`` or ``link``) ``root/rel`` if it is the one we made (``expect``):
    True removed, False absent; Conflict (nothing removed) when something else is at that name."""
    if kind not in ("file", "link"):
        raise ValueError(f"remove() removes a file or a link, not {kind!r}")
    return _remove(root, rel, expect, kind=kind)


def rmdir(root: str, rel: str, *, expect: Ident) -> bool:
    """Remove the empty directory ``root/rel`` if it is the one we made; as :func:`remove`.

    ``OSError`` (ENOTEMPTY, EBUSY for a mount point) leaves it in place under its name."""
    return _remove(root, rel, expect, kind="dir")


def chmod(root: str, rel: str, mode: int, *, expect: Ident) -> None:
    """Change the mode of our file or directory ``root/rel`` (compared with ``expect``); no link
    followed (a symlink's open fails)."""
    with parent(root, rel) as (dfd, name):
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _mismatch(root, rel, _fstat_name(dfd, name), expect) from None
            raise
        try:
            st = os.fstat(fd)
            if ident(st) != expect:
                raise _mismatch(root, rel, st, expect)
            _step("compared", name)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)


def is_ours(root: str, rel: str, expect: Ident) -> bool:
    """Whether ``root/rel`` is still the object we made (compared without following it)."""
    st = lookup(root, rel)
    return st is not None and ident(st) == expect


def relative(root: str, path: str) -> str:
    """``path`` relative to ``root`` (lexically; InvalidSpec when it is not under it)."""
    r, p = os.path.normpath(root), os.path.normpath(path)
    if p == r:
        return ""
    if not p.startswith(r.rstrip("/") + "/"):
        raise errors.InvalidSpec(f"{errors.shown(path)} is not under {errors.shown(root)}")
    return p[len(r.rstrip("/")) + 1 :]
