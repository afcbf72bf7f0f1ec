"""Shared test set-up. Fixtures for real host components live in plugin modules next to this file:

- ``fixtures_storage``: loop devices with ext4/xfs, glusterd with a volume on loopback, temp mount bases.
- ``fixtures_libvirt``: libvirtd, tgtd iSCSI targets.
- ``fixtures_kube``: the kmock API emulator, kubeconfig, agent/controller processes.
- ``fixtures_vm``: real guests (cloud kernel, busybox initramfs, TCG) and their gluster volume.

Every fixture that starts a daemon stops it again unless it found it already running; every fixture
that makes a mount or loop device removes it even when the test failed.
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["fixtures_storage", "fixtures_libvirt", "fixtures_kube", "fixtures_vm"]


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("HOSTSTORAGE_TEST", "1")
    # The CLI and agent processes the tests start keep their mount bases under pytest's temp dirs,
    # which are 0700 root: qemu could never reach them. Their subject is not qemu's access, so they
    # run with the check off; test_connections_host and test_connections_argv cover it (on and off).
    os.environ.setdefault("HOSTSTORAGE_QEMU_USER", "none")


@pytest.fixture
def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts, loop devices and daemons are real here")
