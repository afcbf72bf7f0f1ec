"""Real guests for the VM-resume tests (a pytest plugin, see conftest.py).

``guest_boot`` (session) -> Boot(kernel, initrd, workdir)
    libvirtd and virtlogd running, and the guest's busybox initramfs built once (tests/vm_guest.py);
    skips, saying what is missing, when the host has no cloud kernel, qemu or busybox.
``vm_volume`` (session) -> fixtures_storage.GlusterVolume
    A gluster volume of its own with ``network.ping-timeout`` 5 and ``performance.strict-o-direct on``:
    without the latter, write-behind acknowledges the guest's O_DIRECT writes and the failure surfaces a
    minute late (measured here: 57 s instead of 7-10 s). Stopped and deleted at session end.
``brick_stopped(vol)``
    SIGSTOPs the brick; yields a function that SIGCONTs it and returns when (monotonic); SIGCONTs on the
    way out if the test did not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Callable, Iterator

import fixtures_storage
import pytest
import vm_guest

VOLUME_OPTIONS = {"network.ping-timeout": "5", "performance.strict-o-direct": "on"}
PAUSE_TIMEOUT = 60.0
"""Seen here: the guest pauses 7-10 s after the brick stops (ping timeout 5 s plus the write)."""


@dataclasses.dataclass(frozen=True)
class Boot:
    kernel: vm_guest.Kernel
    initrd: str
    workdir: str

    def run(
        self, prefix: str, disks: list[vm_guest.Disk]
    ) -> contextlib.AbstractContextManager[vm_guest.Guest]:
        """:func:`vm_guest.running` with this kernel and initramfs."""
        return vm_guest.running(prefix, self.kernel, self.initrd, disks, self.workdir)


@pytest.fixture(scope="session")
def guest_boot(tmp_path_factory: pytest.TempPathFactory, libvirtd: str, virtlogd: None) -> Boot:
    why = vm_guest.missing()
    if why:
        pytest.skip(why)
    kernel = vm_guest.find_kernel()
    assert kernel is not None
    workdir = str(tmp_path_factory.mktemp("guest"))
    initrd = vm_guest.build_initramfs(os.path.join(workdir, "initrd.cpio"), kernel, workdir)
    return Boot(kernel, initrd, workdir)


@pytest.fixture(scope="session")
def vm_volume(tmp_path_factory: pytest.TempPathFactory) -> Iterator[fixtures_storage.GlusterVolume]:
    why = fixtures_storage.gluster_missing()
    if why:
        pytest.skip(why)
    with fixtures_storage.own_gluster_volume(str(tmp_path_factory.mktemp("vmbrick")), VOLUME_OPTIONS) as vol:
        yield vol


@contextlib.contextmanager
def brick_stopped(vol: fixtures_storage.GlusterVolume) -> Iterator[Callable[[], float]]:
    pid = vol.brick_pid()
    assert pid, "the brick is not running"
    os.kill(pid, signal.SIGSTOP)
    resumed: list[float] = []

    def cont() -> float:
        os.kill(pid, signal.SIGCONT)
        resumed.append(time.monotonic())
        return resumed[-1]

    try:
        yield cont
    finally:
        if not resumed:
            os.kill(pid, signal.SIGCONT)
