"""NFS and kernel iSCSI connections for real, on kernels that have the clients.

This machine's kernel has neither an NFS client nor an iSCSI initiator (iscsi_tcp), so here these tests
skip with that reason; their argv and their clean failure on this kernel are tested in
test_connections_argv.py, test_iscsi.py and test_connections_host.py. Where the kernel allows:
- iSCSI logs in to a tgtd target on loopback through iscsiadm (iscsid started if it is not running),
  checks the by-path device, logs out;
- NFS mounts the export named by HOSTSTORAGE_TEST_NFS_EXPORT (``server:/path`` on a loopback or
  test-host address): this suite does not run an NFS server of its own.
"""

from __future__ import annotations

import dataclasses
import os
import stat

import pytest

from hostlib import config, connections, mounts, preflight

pytestmark = pytest.mark.host


def _unsupported_reason(conn_type: str, cfg: config.HostConfig) -> str | None:
    report = preflight.check(cfg)
    if report.supported(conn_type):
        return None
    return str(report.types[conn_type])


def test_iscsi_login_to_a_tgtd_target_where_the_kernel_has_an_initiator(
    hs_host_config: config.HostConfig, request: pytest.FixtureRequest
) -> None:
    reason = _unsupported_reason("iscsi", hs_host_config)
    if reason:
        pytest.skip(f"no kernel iSCSI initiator here ({reason}); argv and clean failure are tested elsewhere")
    request.getfixturevalue("iscsid")
    target = request.getfixturevalue("tgt_target")()
    cfg = dataclasses.replace(hs_host_config, command_timeout=60)
    params = connections.IscsiParams(portal="127.0.0.1:3260", target=target.iqn, lun=1)
    conn = connections.make_connection("iscsi-e2e", params, cfg)
    try:
        assert conn.connect() is True
        assert conn.observe().connected
        assert stat.S_ISBLK(os.stat(conn.target()).st_mode), conn.target()
        assert conn.connect() is False, "a second connect is a no-op"
    finally:
        conn.disconnect(force=True)
    assert not conn.observe().connected


def test_nfs_mount_where_the_kernel_has_a_client(hs_host_config: config.HostConfig) -> None:
    reason = _unsupported_reason("nfs", hs_host_config)
    if reason:
        pytest.skip(f"no NFS client in this kernel ({reason}); argv and clean failure are tested elsewhere")
    export = os.environ.get("HOSTSTORAGE_TEST_NFS_EXPORT")
    if not export:
        pytest.skip("set HOSTSTORAGE_TEST_NFS_EXPORT=server:/path to an NFS export on a test host")
    server, _, path = export.partition(":")
    conn = connections.make_connection("nfs-e2e", connections.NfsParams(server, path), hs_host_config)
    try:
        assert conn.connect() is True
        assert conn.observe().connected
        assert any(r.target == conn.target() for r in mounts.read_mounts())
        assert conn.connect() is False
    finally:
        conn.disconnect(force=True)
    assert not conn.observe().connected
