"""iSCSI: exact iscsiadm argv, output parsing, CHAP secrecy, and the clean failure on this kernel."""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Mapping

import pytest
from fake_runner import FakeRunner

from hostlib import commands, config, connections, errors, iscsi

T = "iqn.2003-01.org.example:store.t1"
P = "10.0.0.5:3260"


class IscsiadmRecorder(FakeRunner):
    """Replaces commands.Runner for iscsiadm: records argv and secrets, answers per (mode, op)."""

    def __init__(self, sessions: str = "", rcs: Mapping[str, tuple[int, str]] | None = None) -> None:
        super().__init__()
        self.sessions = sessions
        self.rcs = dict(rcs or {})

    def answer(self, argv: tuple[str, ...], secrets: tuple[str, ...]) -> tuple[int, str, str]:
        key = " ".join(argv[1:3]) + (" " + argv[-1] if argv[-1] in ("-l", "-u", "delete", "new") else "")
        rc, out = self.rcs.get(key, (0, ""))
        stdout = ""
        if argv[:3] == ("iscsiadm", "-m", "session"):
            rc, stdout = (0, self.sessions) if self.sessions else (21, "")
            out = "" if self.sessions else "iscsiadm: No active sessions."
        return rc, stdout, commands.redact(out, secrets)


def make(tmp_path: pathlib.Path, runner: IscsiadmRecorder, **kw: object) -> connections.IscsiConnection:
    host = config.HostConfig(state_dir=str(tmp_path), runner=runner)
    params = connections.IscsiParams(kw.pop("portal", "10.0.0.5"), T, **kw)  # type: ignore[arg-type]
    conn = connections.make_connection("i", params, host)
    assert isinstance(conn, connections.IscsiConnection)
    return conn


def test_argv_builders() -> None:
    assert iscsi.discovery_argv(P) == ("iscsiadm", "-m", "discovery", "-t", "sendtargets", "-p", P)
    assert iscsi.discovery_argv(P, "if0")[-2:] == ("-I", "if0")
    assert iscsi.login_argv(T, P) == ("iscsiadm", "-m", "node", "-T", T, "-p", P, "-l")
    assert iscsi.logout_argv(T, P) == ("iscsiadm", "-m", "node", "-T", T, "-p", P, "-u")
    assert iscsi.node_delete_argv(T, P) == ("iscsiadm", "-m", "node", "-T", T, "-p", P, "-o", "delete")
    assert iscsi.node_update_argv(T, P, "k", "v") == (
        "iscsiadm", "-m", "node", "-T", T, "-p", P, "-o", "update", "-n", "k", "-v", "v",
    )  # fmt: skip
    assert iscsi.session_argv() == ("iscsiadm", "-m", "session")
    assert iscsi.iface_update_argv("if0", "iqn.2024-01.io.x:h") == (
        "iscsiadm", "-m", "iface", "-I", "if0", "-o", "update",
        "-n", "iface.initiatorname", "-v", "iqn.2024-01.io.x:h",
    )  # fmt: skip
    assert iscsi.by_path(P, T, 2) == f"/dev/disk/by-path/ip-{P}-iscsi-{T}-lun-2"


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        (T, True),
        ("iqn.2003-01.org.example", True),
        ("eui.02004567a425678d", True),
        ("naa.52004567ba64678d", True),
        # RFC 3720's own examples, and names as vendors write them: upper case is the same name.
        ("eui.02004567A425678D", True),
        ("naa.52004567BA64678D", True),
        ("naa.6006016034a02500d0e30b6d6a91e411", True),
        ("iqn.1992-08.com.NetApp:sn.84211978", True),
        ("IQN.2003-01.org.x:t", True),
        ("iqn.2001-04.com.example:storage:diskarrays-sn-a8675309", True),
        ("iqn.2003-01.org.x:" + "a" * 201, True),
        ("iqn.2003-01.org.x:" + "a" * 206, False),
        ("iqn.03-01.org.x", False),
        ("iqn.2003-13.org.x", False),
        ("iqn.2003-00.org.x", False),
        ("iqn.2003-01.-org.x", False),
        ("iqn.2003-01.org..x", False),
        ("iqn.2003-01.org.x:", False),
        ("iqn.2003-01.org.x:t_1", False),
        ("iqn.2003-01.org.x:t;reboot", False),
        ("iqn.2003-01.org.x:t t", False),
        ("-iqn.2003-01.org.x", False),
        ("eui.123", False),
        ("eui.02004567a425678dd", False),
        ("naa.52004567ba64678d1", False),
        ("naa." + "a" * 24, False),
        ("iqn.2003-01.org.ex\u00e4mple", False),
        ("iqn.2003-01." + "a" * 300, False),
    ],
)
def test_iscsi_names_follow_rfc_3720(name: str, ok: bool) -> None:
    assert iscsi.valid_name(name) is ok
    if ok:
        assert iscsi.check_name(name, field="spec.x") == name
    else:
        with pytest.raises(errors.InvalidSpec):
            iscsi.check_name(name, field="spec.x")


def test_iscsi_names_compare_case_insensitively() -> None:
    assert iscsi.same_name("iqn.1992-08.com.NetApp:sn.1", "IQN.1992-08.com.netapp:SN.1")
    assert not iscsi.same_name("iqn.1992-08.com.netapp:sn.1", "iqn.1992-08.com.netapp:sn.2")


def test_parse_sessions_and_discovery() -> None:
    text = (
        "tcp: [1] 10.0.0.5:3260,1 iqn.2003-01.org.example:store.t1 (non-flash)\n"
        "tcp: [12] [fd00::5]:3260,2 iqn.2003-01.org.example:t2 (non-flash)\n"
        "garbage line\n"
    )
    assert iscsi.parse_sessions(text) == [
        iscsi.Session(1, "tcp", "10.0.0.5:3260", 1, T),
        iscsi.Session(12, "tcp", "[fd00::5]:3260", 2, "iqn.2003-01.org.example:t2"),
    ]
    assert iscsi.parse_discovery(f"{P},1 {T}\n[fd00::5]:3260,1 iqn.x:y\nnoise\n") == [
        (P, T),
        ("[fd00::5]:3260", "iqn.x:y"),
    ]


def test_connect_runs_discovery_chap_login_and_keeps_the_password_secret(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rec = IscsiadmRecorder()
    conn = make(tmp_path, rec, lun=3, chap=connections.ChapCredentials("alice", "hunter2-secret"))
    assert conn.target() == f"/dev/disk/by-path/ip-{P}-iscsi-{T}-lun-3"
    plan = conn.plan_connect(conn.observe())
    assert [a.verb for a in plan] == ["discover", "update", "update", "update", "login"]
    assert all("hunter2-secret" not in " ".join(a.argv or ()) for a in plan)
    assert plan[3].argv is not None and plan[3].argv[-1] == "***"
    assert conn.connect() is True
    assert rec.calls[:2] == [iscsi.session_argv()] * 2
    assert rec.calls[2:] == [
        iscsi.discovery_argv(P),
        iscsi.node_update_argv(T, P, "node.session.auth.authmethod", "CHAP"),
        iscsi.node_update_argv(T, P, "node.session.auth.username", "alice"),
        iscsi.node_update_argv(T, P, "node.session.auth.password", "hunter2-secret"),
        iscsi.login_argv(T, P),
        ("udevadm", "settle", "--timeout=5"),
    ]
    assert rec.secrets[5] == ("hunter2-secret",), "the password argv is declared a secret"
    assert "hunter2-secret" not in caplog.text


def test_initiator_name_uses_an_iface(tmp_path: pathlib.Path) -> None:
    rec = IscsiadmRecorder()
    conn = make(tmp_path, rec, initiator_name="iqn.2024-01.io.hoststorage:node1")
    iface = iscsi.iface_name("iqn.2024-01.io.hoststorage:node1")
    conn.connect()
    assert rec.calls[1:5] == [
        iscsi.iface_new_argv(iface),
        iscsi.iface_update_argv(iface, "iqn.2024-01.io.hoststorage:node1"),
        iscsi.discovery_argv(P, iface),
        iscsi.login_argv(T, P, iface),
    ]


def test_connect_is_idempotent_when_logged_in(tmp_path: pathlib.Path) -> None:
    rec = IscsiadmRecorder(sessions=f"tcp: [1] {P},1 {T} (non-flash)\n")
    conn = make(tmp_path, rec)
    observed = conn.observe()
    assert observed.connected
    assert conn.plan_connect(observed) == []
    assert conn.connect() is False
    assert rec.calls == [iscsi.session_argv(), iscsi.session_argv()]


def test_disconnect_logs_out_and_deletes_the_node(tmp_path: pathlib.Path) -> None:
    rec = IscsiadmRecorder(sessions=f"tcp: [1] {P},1 {T} (non-flash)\n")
    conn = make(tmp_path, rec, portal="10.0.0.5:3260")
    assert [a.argv for a in conn.plan_disconnect(conn.observe())] == [
        iscsi.logout_argv(T, P),
        iscsi.node_delete_argv(T, P),
    ]
    assert conn.disconnect() is True
    assert rec.calls[-2:] == [iscsi.logout_argv(T, P), iscsi.node_delete_argv(T, P)]
    assert make(tmp_path, IscsiadmRecorder()).disconnect() is False


def test_chap_refusal_is_login_failed_and_undone(tmp_path: pathlib.Path) -> None:
    rec = IscsiadmRecorder(
        rcs={"-m node -l": (24, "iscsiadm: Login failed: authorization failure (hunter2)")}
    )
    conn = make(tmp_path, rec, chap=connections.ChapCredentials("alice", "hunter2"))
    with pytest.raises(errors.LoginFailed, match="CHAP authentication failed") as info:
        conn.connect()
    assert "hunter2" not in str(info.value)
    assert rec.calls[-1] == iscsi.node_delete_argv(T, P), "the half-made node record is removed"


def test_missing_initiator_driver_is_unsupported(tmp_path: pathlib.Path) -> None:
    msg = "iscsiadm: iSCSI driver tcp is not loaded. Load the module then retry the command."
    rec = IscsiadmRecorder(rcs={"-m discovery": (12, msg)})
    with pytest.raises(errors.Unsupported, match="no iSCSI initiator"):
        make(tmp_path, rec).connect()


@pytest.mark.host
def test_real_iscsiadm_fails_cleanly_on_this_kernel(tmp_path: pathlib.Path, require_root: None) -> None:
    if commands.which("iscsiadm") is None:
        pytest.skip("open-iscsi is not installed")
    if pathlib.Path("/sys/class/iscsi_transport/tcp").exists():
        pytest.skip("this kernel has an iSCSI initiator; the clean-failure case does not apply")
    host = config.HostConfig(state_dir=str(tmp_path), command_timeout=30)
    params = connections.IscsiParams("127.0.0.1:3260", "iqn.2003-01.org.example:hoststorage-none",
                                     chap=connections.ChapCredentials("u", "pa55-secret"))  # fmt: skip
    conn = connections.make_connection("i", params, host)
    assert conn.observe().connected is False
    with pytest.raises((errors.Unsupported, errors.LoginFailed)) as info:
        conn.connect()
    assert "iscsiadm" in str(info.value)
    assert "pa55-secret" not in str(info.value)
    assert conn.disconnect() is False
