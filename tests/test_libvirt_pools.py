"""hostlib.libvirt_pools: exact pool XML, parse-back, and the layer against the real libvirtd.

virsh is the independent witness: what the layer observes must equal ``virsh pool-info --bytes`` and
``virsh pool-dumpxml``. The reconnect test restarts the machine's libvirtd.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import secrets
import signal
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import fixtures_libvirt
import pytest

from hostlib import errors, libvirt_pools

EXACT = [
    (
        libvirt_pools.PoolDefinition(name="p-dir", type="dir", target_path="/srv/pools/p"),
        '<pool type="dir"><name>p-dir</name><source /><target><path>/srv/pools/p</path></target></pool>',
    ),
    (
        libvirt_pools.PoolDefinition(
            name="p-fs",
            type="fs",
            target_path="/m/pools/p-fs",
            source_devices=("/dev/loop3",),
            source_format="ext4",
        ),
        '<pool type="fs"><name>p-fs</name><source><device path="/dev/loop3" /><format type="ext4" /></source>'
        "<target><path>/m/pools/p-fs</path></target></pool>",
    ),
    (
        libvirt_pools.PoolDefinition(
            name="p-gl",
            type="netfs",
            target_path="/m/pools/p-gl",
            source_host="127.0.0.1",
            source_dir="/gv0",
            source_format="glusterfs",
        ),
        '<pool type="netfs"><name>p-gl</name><source><host name="127.0.0.1" /><dir path="/gv0" />'
        '<format type="glusterfs" /></source><target><path>/m/pools/p-gl</path></target></pool>',
    ),
    (
        libvirt_pools.PoolDefinition(
            name="p-id",
            type="iscsi-direct",
            source_host="[fd00::1]",
            source_port=3260,
            source_devices=("iqn.2026-01.io.example:t1",),
            initiator_iqn="iqn.2026-01.io.example:i1",
            auth_username="u",
            auth_secret_usage="hoststorage-pool-p-id",
        ),
        '<pool type="iscsi-direct"><name>p-id</name><source><host name="fd00::1" port="3260" />'
        '<device path="iqn.2026-01.io.example:t1" /><auth type="chap" username="u">'
        '<secret usage="hoststorage-pool-p-id" /></auth><initiator><iqn name="iqn.2026-01.io.example:i1" />'
        "</initiator></source></pool>",
    ),
    (
        libvirt_pools.PoolDefinition(
            name="p-iscsi",
            type="iscsi",
            target_path="/dev/disk/by-path",
            source_host="192.0.2.10",
            source_port=3260,
            source_devices=("iqn.2026-01.io.example:t1",),
        ),
        '<pool type="iscsi"><name>p-iscsi</name><source><host name="192.0.2.10" port="3260" />'
        '<device path="iqn.2026-01.io.example:t1" /></source><target><path>/dev/disk/by-path</path></target>'
        "</pool>",
    ),
    (
        libvirt_pools.PoolDefinition(
            name="p-lvm",
            type="logical",
            target_path="/dev/vg0",
            source_devices=("/dev/sdb", "/dev/sdc"),
            source_name="vg0",
            source_format="lvm2",
        ),
        '<pool type="logical"><name>p-lvm</name><source><device path="/dev/sdb" /><device path="/dev/sdc" />'
        '<name>vg0</name><format type="lvm2" /></source><target><path>/dev/vg0</path></target></pool>',
    ),
]


@pytest.mark.parametrize(("defn", "xml"), EXACT, ids=[d.type for d, _ in EXACT])
def test_pool_xml_is_exact_and_parses_back(defn: libvirt_pools.PoolDefinition, xml: str) -> None:
    assert libvirt_pools.build_pool_xml(defn) == xml
    back = libvirt_pools.parse_pool_xml(xml)
    # IPv6 goes into the XML without brackets; everything else comes back as it went in.
    bare = defn.source_host.strip("[]") if defn.source_host else None
    assert back == dataclasses.replace(defn, source_host=bare)


def test_xml_special_characters_are_data_not_markup() -> None:
    nasty = "a<b>&\"'</name><evil/>"
    defn = libvirt_pools.PoolDefinition(name=nasty, type="dir", target_path=f"/x/{nasty}")
    xml = libvirt_pools.build_pool_xml(defn)
    root = ET.fromstring(xml)
    assert root.find("evil") is None and root.findtext("name") == nasty
    assert libvirt_pools.parse_pool_xml(xml).comparable() == defn.comparable()


def test_secret_xml_is_private_and_persistent() -> None:
    xml = libvirt_pools.build_secret_xml("hoststorage-pool-x", "CHAP <x>")
    assert xml == (
        '<secret ephemeral="no" private="yes"><description>CHAP &lt;x&gt;</description>'
        '<usage type="iscsi"><target>hoststorage-pool-x</target></usage></secret>'
    )


def test_unknown_pool_type_is_refused() -> None:
    with pytest.raises(errors.InvalidSpec):
        libvirt_pools.build_pool_xml(libvirt_pools.PoolDefinition(name="x", type="rbd"))


@pytest.mark.parametrize("pool_type", ["iscsi", "logical"])
def test_preflight_reports_missing_kernel_support_cleanly(pool_type: str) -> None:
    # This machine's kernel has neither an iSCSI initiator nor device-mapper; on a host that has them
    # preflight passes and libvirt does the rest.
    has = {
        "iscsi": os.path.isdir("/sys/module/iscsi_tcp"),
        # /proc/misc, not /dev/mapper/control: lvm2's packages create that node on kernels without dm.
        "logical": "device-mapper" in pathlib.Path("/proc/misc").read_text()
        or subprocess.run(["modinfo", "dm_mod"], capture_output=True, check=False).returncode == 0,
    }[pool_type]
    if has:
        pytest.skip(f"this kernel supports {pool_type} pools")
    with pytest.raises(errors.Unsupported) as info:
        libvirt_pools.preflight(pool_type)
    assert "kernel" in info.value.message


def test_preflight_passes_types_that_need_no_kernel_support() -> None:
    for pool_type in ("dir", "fs", "netfs", "iscsi-direct"):
        libvirt_pools.preflight(pool_type)


# --------------------------------------------------------------------------- against the real libvirtd


def _name() -> str:
    return f"hs-test-{secrets.token_hex(4)}"


@pytest.fixture
def dir_pool(layer: libvirt_pools.PoolLayer, tmp_path: os.PathLike[str]) -> Iterator[str]:
    name = _name()
    layer.define(libvirt_pools.PoolDefinition(name=name, type="dir", target_path=os.path.join(tmp_path, "t")))
    try:
        yield name
    finally:
        if name in fixtures_libvirt.virsh("pool-list", "--all", "--name").split():
            fixtures_libvirt.virsh("pool-destroy", name, check=False)
            fixtures_libvirt.virsh("pool-undefine", name, check=False)


def witness(name: str) -> dict[str, str]:
    info = {}
    for line in fixtures_libvirt.virsh("pool-info", name, "--bytes").splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            info[k.strip()] = v.strip()
    return info


@pytest.mark.host
def test_observe_equals_virsh(layer: libvirt_pools.PoolLayer, dir_pool: str) -> None:
    layer.build(dir_pool)
    layer.start(dir_pool)
    layer.set_autostart(dir_pool, True)
    fixtures_libvirt.virsh("vol-create-as", dir_pool, "v1.img", "1M")
    obs = layer.observe(dir_pool)
    assert obs is not None
    info = witness(dir_pool)
    assert info["UUID"] == obs.uuid and info["State"] == obs.state == "running"
    assert info["Persistent"] == "yes" and info["Autostart"] == "yes" and obs.persistent and obs.autostart
    assert int(info["Capacity"]) == obs.capacity and int(info["Allocation"]) == obs.allocation
    assert int(info["Available"]) == obs.available
    assert obs.volumes == len(fixtures_libvirt.vol_names(dir_pool)) == 1
    dumped = libvirt_pools.parse_pool_xml(fixtures_libvirt.virsh("pool-dumpxml", dir_pool, "--inactive"))
    assert dumped == obs.definition


@pytest.mark.host
def test_observe_absent_pool_is_none(layer: libvirt_pools.PoolLayer) -> None:
    assert layer.observe(_name()) is None
    with pytest.raises(errors.NotFound):
        layer.start(_name())


@pytest.mark.host
def test_lifecycle_events_reach_listener_quickly(layer: libvirt_pools.PoolLayer, dir_pool: str) -> None:
    seen: list[tuple[float, str]] = []
    got = threading.Event()

    def listener(name: str) -> None:
        if name == dir_pool:
            seen.append((time.monotonic(), name))
            got.set()

    layer.add_pool_listener(listener)
    layer.build(dir_pool)
    layer.start(dir_pool)
    assert got.wait(5)
    got.clear()
    t0 = time.monotonic()
    fixtures_libvirt.virsh("pool-destroy", dir_pool)
    assert got.wait(5), "no event after an outside pool-destroy"
    assert seen[-1][0] - t0 < 2.0
    layer.remove_listener(listener)


@pytest.mark.host
def test_teardown_verbs_never_delete_volumes(
    layer: libvirt_pools.PoolLayer, dir_pool: str, tmp_path: os.PathLike[str]
) -> None:
    layer.build(dir_pool)
    layer.start(dir_pool)
    fixtures_libvirt.virsh("vol-create-as", dir_pool, "keep.img", "1M")
    layer.destroy(dir_pool)
    layer.undefine(dir_pool)
    assert layer.observe(dir_pool) is None
    assert os.path.isfile(os.path.join(tmp_path, "t", "keep.img"))


@pytest.mark.host
def test_secret_value_set_once_and_undefined(layer: libvirt_pools.PoolLayer) -> None:
    usage = f"hoststorage-pool-{_name()}"
    try:
        assert layer.set_secret(usage, "test", b"s3cret-value")
        assert not layer.set_secret(usage, "test", b"s3cret-value"), "unchanged value must not be rewritten"
        uuid = layer.secret_uuid(usage)
        assert uuid is not None and uuid in fixtures_libvirt.virsh("secret-list")
        # private: virsh cannot read the value back
        assert "s3cret" not in fixtures_libvirt.virsh("secret-get-value", uuid, check=False)
        assert not layer.set_secret(usage, "test", b"new-value"), "a rewrite is not a new secret"
    finally:
        assert layer.undefine_secret(usage)
    assert layer.secret_uuid(usage) is None


@pytest.mark.host
@pytest.mark.slow
def test_reconnects_after_libvirtd_restart(layer: libvirt_pools.PoolLayer, dir_pool: str) -> None:
    reconnected = threading.Event()
    layer.add_reconnect_listener(reconnected.set)
    before = layer.reconnects
    fixtures_libvirt.stop_libvirtd()
    try:
        deadline = time.monotonic() + 10
        while layer.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not layer.connected, "the close callback did not notice libvirtd going away"
        assert layer.outage is not None
        with pytest.raises(libvirt_pools.LibvirtUnavailable):
            layer.observe(dir_pool)
    finally:
        fixtures_libvirt.start_libvirtd()
    assert reconnected.wait(15), "no reconnect within 15 s of libvirtd coming back"
    assert layer.reconnects == before + 1 and layer.outage is None
    obs = layer.observe(dir_pool)
    assert obs is not None and obs.state == "inactive"
    # events flow again on the new connection
    got = threading.Event()
    layer.add_pool_listener(lambda n: got.set() if n == dir_pool else None)
    layer.build(dir_pool)
    layer.start(dir_pool)
    assert got.wait(5)


@pytest.mark.host
@pytest.mark.slow
def test_a_lost_connection_is_closed_no_descriptor_left_per_reconnect(libvirtd: str) -> None:
    """The chaos soak (issue 14) saw an agent's fds grow with every libvirtd restart: the lost
    connection was dropped unclosed, keeping its descriptors (an eventfd each here) and callbacks."""
    lay = libvirt_pools.PoolLayer(libvirtd, backoff=(0.2, 1.0))
    assert lay.connect()
    try:
        time.sleep(0.5)
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(3):
            reconnected = threading.Event()
            lay.add_reconnect_listener(reconnected.set)
            fixtures_libvirt.restart_libvirtd()
            assert reconnected.wait(20), "no reconnect within 20 s of libvirtd coming back"
            lay.remove_listener(reconnected.set)
            time.sleep(0.5)  # the reconnect thread closes the lost connection before it connects
        after = len(os.listdir("/proc/self/fd"))
        assert after <= before + 1, f"{after - before} descriptors more after 3 reconnects"
        assert lay.observe(_name()) is None  # and the new connection works
    finally:
        lay.close()

@pytest.mark.host
@pytest.mark.slow
def test_a_hung_libvirtd_is_bounded_and_detected_by_keepalive(
    libvirtd: str, tmp_path: os.PathLike[str]
) -> None:
    lay = libvirt_pools.PoolLayer(libvirtd, call_timeout=2.0, keepalive=(1, 1), backoff=(0.2, 1.0))
    assert lay.connect()
    pid = fixtures_libvirt.libvirtd_pid()
    assert pid is not None
    try:
        os.kill(pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises((errors.Timeout, libvirt_pools.LibvirtUnavailable)):
                lay.observe(_name())
            assert time.monotonic() - t0 < 3.0, "a libvirt call was not bounded"
            deadline = time.monotonic() + 10
            while lay.connected:
                assert time.monotonic() < deadline, (
                    "keepalive did not close the connection to a hung libvirtd"
                )
                time.sleep(0.05)
            assert lay.outage is not None
        finally:
            os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 20
        while not lay.connected:
            assert time.monotonic() < deadline, "no reconnect after libvirtd resumed"
            time.sleep(0.05)
        assert lay.observe(_name()) is None
    finally:
        lay.close()


def test_device_mapper_is_what_proc_misc_says_not_a_device_node(tmp_path: pathlib.Path) -> None:
    misc = tmp_path / "misc"
    misc.write_text(" 58 rfkill\n236 device-mapper\n")
    assert libvirt_pools.device_mapper_available(misc=str(misc))
    misc.write_text(" 58 rfkill\n183 hw_random\n")
    loadable = subprocess.run(["modinfo", "dm_mod"], capture_output=True, check=False).returncode == 0
    assert libvirt_pools.device_mapper_available(misc=str(misc)) is loadable
