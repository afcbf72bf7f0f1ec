"""Which file systems posixfs mounts: the built-in list VDSM admins run, the admin's additions, and the
types that are never posixfs (hostlib.mounts owns the list; the CRD mirrors the refused ones)."""

from __future__ import annotations

import pytest

from controller import cli, settings
from hostlib import config, connections, errors, mounts


@pytest.mark.parametrize("vfs_type", ["ext4", "xfs", "btrfs", "cifs", "smb3", "ceph"])
def test_the_built_in_types_have_their_own_option_lists(vfs_type: str) -> None:
    assert mounts.posixfs_kind(vfs_type) == f"posixfs:{vfs_type}"


def test_an_admin_added_type_gets_the_common_options_only() -> None:
    assert mounts.posixfs_kind("gfs2", extra=("gfs2",)) == mounts.EXTENDED
    assert mounts.check_option(mounts.EXTENDED, "noatime") == "noatime"
    with pytest.raises(errors.InvalidSpec, match="not allowed for posixfs:\\*"):
        mounts.check_option(mounts.EXTENDED, "data=writeback")


def test_an_unknown_type_names_the_list_and_the_way_to_extend_it() -> None:
    with pytest.raises(errors.InvalidSpec) as info:
        mounts.posixfs_kind("gfs2", extra=("ocfs2",), field="spec.posixfs.vfsType")
    assert info.value.field == "spec.posixfs.vfsType"
    assert (
        "ceph" in info.value.message
        and "ocfs2" in info.value.message
        and "--allow-vfs-type" in info.value.message
    )


@pytest.mark.parametrize(
    "vfs_type", ["glusterfs", "nfs", "nfs4", "fuse", "fuse.sshfs", "fuse.ceph", "tmpfs", "bind"]
)
def test_some_types_are_never_posixfs_even_if_an_admin_lists_them(vfs_type: str) -> None:
    with pytest.raises(errors.InvalidSpec, match="is not allowed"):
        mounts.posixfs_kind(vfs_type, extra=(vfs_type,))
    with pytest.raises(settings.SettingsError, match="allow-vfs-type"):
        settings.Settings.build(None, {"HOSTSTORAGE_EXTRA_VFS_TYPES": f"gfs2:{vfs_type}"})


@pytest.mark.parametrize(
    ("option", "ok"),
    [
        ("name=hoststorage", True),
        ("fs=cephfs", True),
        ("mds_namespace=vms", True),
        ("recover_session=clean", True),
        ("ms_mode=secure", True),
        ("rasize=8388608", True),
        ("noacl", True),
        ("secret=AQBzNTxj", False),
        ("secretfile=/etc/shadow", False),
        ("recover_session=yes", False),
        ("name=a b", False),
    ],
)
def test_cephfs_options(option: str, ok: bool) -> None:
    if ok:
        assert mounts.check_option("posixfs:ceph", option) == option
    else:
        with pytest.raises(errors.InvalidSpec):
            mounts.check_option("posixfs:ceph", option)


def test_a_secret_on_the_command_line_is_refused_with_the_reason() -> None:
    with pytest.raises(errors.InvalidSpec, match="never go on a command line"):
        mounts.check_option("posixfs:ceph", "secret=AQBzNTxj")
    with pytest.raises(errors.InvalidSpec, match="any host file"):
        mounts.check_option("posixfs:ceph", "secretfile=/etc/ceph/admin.secret")


def test_the_setting_reaches_the_validation_of_a_connection(tmp_path: object) -> None:
    conf = settings.Settings.build(
        None, {"HOSTSTORAGE_EXTRA_VFS_TYPES": "gfs2:ocfs2", "HOSTSTORAGE_STATE_DIR": "/var/lib/h"}
    )
    assert conf.extra_vfs_types == ("gfs2", "ocfs2")
    host = conf.host_config()
    assert host.extra_vfs_types == ("gfs2", "ocfs2")
    connections.validate(connections.PosixfsParams("/dev/sdb1", "gfs2", ("noatime",)), host)
    with pytest.raises(errors.InvalidSpec, match="not one of"):
        connections.validate(connections.PosixfsParams("/dev/sdb1", "gfs2"), config.HostConfig())
    ceph = connections.PosixfsParams(
        "mon1.example.com:6789:/volumes/vms", "ceph", ("name=hoststorage", "fs=cephfs")
    )
    connections.validate(ceph, config.HostConfig())


def test_the_flag_is_repeatable_and_wins_over_the_environment() -> None:
    words = ["--allow-vfs-type", "gfs2", "--allow-vfs-type", "ocfs2", "status"]
    args = cli.build_parser("status").parse_args(words)
    conf = settings.Settings.build(args, {"HOSTSTORAGE_EXTRA_VFS_TYPES": "lustre"})
    assert conf.extra_vfs_types == ("gfs2", "ocfs2")
