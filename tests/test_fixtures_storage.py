"""The shared glusterd registry of tests/fixtures_storage.py: one use per volume, not per process.

A CI run left the session's gluster volume (and its brick process) behind: the VM tests' own volume,
released in the same pytest process, removed the process's one registry entry, so glusterd was
stopped while the session volume was still in use, and that volume's stop and delete then failed."""

from __future__ import annotations

import os

import fixtures_storage as fs
import pytest

pytestmark = pytest.mark.host


def test_releasing_one_volume_keeps_the_other_use_of_the_same_process() -> None:
    missing = fs.gluster_missing()
    if missing:
        pytest.skip(missing)
    first = fs._acquire_glusterd()
    second = fs._acquire_glusterd()
    try:
        assert first != second and {first, second} <= set(fs._live_users())
        assert first.split(".")[0] == second.split(".")[0] == str(os.getpid())
        fs._release_glusterd(first)
        assert second in fs._live_users() and first not in fs._live_users()
        assert fs._glusterd_running()  # the other use still has it
    finally:
        fs._release_glusterd(second)
        fs._release_glusterd(first)  # already released: nothing
    assert second not in fs._live_users()
