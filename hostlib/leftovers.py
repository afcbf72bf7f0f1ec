"""Leftovers under the mount base: what a previous run left behind and no ledger entry owns.

A run that died between ``mkdir`` and ``mount``, or connections deleted while the agent was down, leave
empty mount-point directories and dangling localfs links. The agent calls :func:`clean_stale` once at
start-up, under the host lock. Its boundary:

- it never descends into a mount point (it may be hung storage) and never touches anything mounted
  or anything a ledger entry owns;
- the walk goes through directory descriptors (``os.fwalk``, links not followed) and every removal
  through :mod:`hostlib.fsops`, with the (device, inode) just looked at as the expected ident: what is
  removed is exactly what was examined, never something swapped in since, and no link is followed;
- only empty directories (``rmdir`` refuses anything else) and links whose target does not exist go.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat

from hostlib import errors, fsops, ledger, mounts

log = logging.getLogger(__name__)


def clean_stale(mount_base: str, owner: ledger.Ledger) -> list[str]:
    """Remove empty directories and dangling links under ``mount_base`` that ``owner`` does not own;
    the paths removed, deepest first."""
    base = os.path.realpath(mount_base)
    removed: list[str] = []
    if not os.path.isdir(base):
        return removed
    mounted = {rec.target for rec in mounts.read_mounts()}
    candidates: list[str] = []
    for dirpath, dirnames, filenames, _fd in os.fwalk(base, follow_symlinks=False):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in mounted]
        candidates.extend(os.path.join(dirpath, d) for d in dirnames)
        candidates.extend(os.path.join(dirpath, f) for f in filenames)
    for path in reversed(candidates):  # deepest first, so emptied parents go too
        if path in mounted or owner.owns_mount(path):
            continue
        with contextlib.suppress(OSError, errors.HostStorageError):
            if _remove_if_stale(base, path):
                removed.append(path)
    for path in removed:
        log.info("removed stale leftover %s under %s", path, base)
    return removed


def _remove_if_stale(base: str, path: str) -> bool:
    rel = fsops.relative(base, path)
    st = fsops.lookup(base, rel)
    if st is None:
        return False
    if stat.S_ISLNK(st.st_mode):
        target = fsops.readlink(base, rel)
        if target is None or os.path.lexists(os.path.join(os.path.dirname(path), target)):
            return False
        return fsops.remove(base, rel, expect=fsops.ident(st), kind="link")
    if stat.S_ISDIR(st.st_mode):
        return fsops.rmdir(base, rel, expect=fsops.ident(st))
    return False


def remove_empty_dir(base: str, path: str) -> bool:
    """Remove the empty directory ``path`` below ``base`` (e.g. the mount point libvirt built for an fs or
    netfs pool) through :mod:`hostlib.fsops`: no link followed on the way, the directory looked at is the
    one removed; False when it is absent, not a directory, not empty or busy."""
    real = os.path.realpath(base)
    try:
        rel = fsops.relative(real, path)
        st = fsops.lookup(real, rel)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return False
        return fsops.rmdir(real, rel, expect=fsops.ident(st))
    except (OSError, errors.HostStorageError) as exc:
        log.info("leaving %s in place: %s", path, getattr(exc, "message", None) or exc)
        return False
