"""VMs paused on an I/O error are resumed when their DomainMonitor turns Healthy: real guests, real faults.

The guest (tests/vm_guest.py: Debian's cloud kernel, a busybox initramfs, TCG) writes a counter with
O_DIRECT to its virtio disks, which have ``error_policy='stop'``. Their images live on a gluster volume
of this module's own (``network.ping-timeout`` 5 s, ``performance.strict-o-direct on`` so a direct write
really waits for the brick instead of write-behind acknowledging it). SIGSTOP of the brick: the guest's
write fails after the ping timeout and qemu pauses the VM (``virsh domstate --reason`` says ``paused
(I/O error)``, the independent witness), the monitor goes Invalid; SIGCONT: the monitor turns Healthy
and the runtime resumes the VM, whose console shows its writes going on.

The first three tests run ``hoststorage monitor -f`` (local mode: the same runtime as the agent, with
the StorageConnection mounted by hoststorage itself); the ENOSPC and reconnect test drives
``MonitorRuntime`` and ``DomainTracker`` directly on a full ext4 loop filesystem. Everything runs under
the heavy lock; domains, mounts and volumes are removed even when a test fails.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import fixtures_libvirt
import fixtures_storage
import pytest
import vm_guest
from fixtures_libvirt import wait_for
from fixtures_vm import PAUSE_TIMEOUT, Boot, brick_stopped

from controller import monitoring
from hostlib import checker, libvirt_domains, libvirt_pools
from reconcilers import domain_monitor as dmon

pytestmark = [pytest.mark.host, pytest.mark.slow]

HOSTSTORAGE = str(pathlib.Path(sys.executable).parent / "hoststorage")
LINE_RE = re.compile(r"^(\S+)  (\S+)  (\S+)  (\S+)  (.*)$")
# ------------------------------------------------------------------------------ hoststorage monitor -f


class Hs:
    """The hoststorage CLI on a state dir of the test's own; ``monitor -f`` in the background."""

    def __init__(self, tmp: pathlib.Path) -> None:
        self.state = tmp / "state"
        self.allowed = tmp / "allowed"
        self.allowed.mkdir()
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[tuple[str, ...]] = []
        self.stray: list[str] = []
        self.cond = threading.Condition()

    def argv(self, *args: str) -> list[str]:
        return [HOSTSTORAGE, "--state-dir", str(self.state), "--allowed-host-path", str(self.allowed), *args]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=120, check=False)

    def apply(self, path: pathlib.Path) -> list[dict[str, Any]]:
        proc = self.run("apply", "-f", str(path), "-o", "json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return list(json.loads(proc.stdout))

    def monitor(self, path: pathlib.Path) -> None:
        self.proc = subprocess.Popen(self.argv("monitor", "-f", str(path)), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            m = LINE_RE.match(line.rstrip("\n"))
            with self.cond:
                if m:
                    self.lines.append(m.groups())
                else:
                    self.stray.append(line)
                self.cond.notify_all()

    def wait_line(self, pred: Callable[[tuple[str, ...]], bool], timeout: float, what: str,
                  after: int = 0) -> tuple[int, tuple[str, ...]]:
        """The first line (index, fields) from index ``after`` on that matches ``pred``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i, line in enumerate(self.lines[after:], after):
                    if pred(line):
                        return i, line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line {what} within {timeout:g} s; got {self.lines}")
                self.cond.wait(left)

    def since(self, index: int) -> list[tuple[str, ...]]:
        with self.cond:
            return list(self.lines[index:])

    def stop(self) -> str:
        if self.proc is None:
            return ""
        self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


def state_is(monitor: str, state: str) -> Callable[[tuple[str, ...]], bool]:
    return lambda line: line[1] == monitor and line[2] == state


def vms_line(monitor: str, reason: str) -> Callable[[tuple[str, ...]], bool]:
    return lambda line: line[1] == monitor and line[2] == "VMs" and line[3] == reason


def connection(vol: fixtures_storage.GlusterVolume) -> str:
    return f"""
apiVersion: hoststorage.io/v1alpha1
kind: StorageConnection
metadata: {{name: gl}}
spec:
  type: glusterfs
  glusterfs: {{server: {vol.server}, volume: {vol.volume}}}
"""


def monitor_doc(name: str, target: str, **extra: Any) -> str:
    fields = "".join(f"\n  {k}: {json.dumps(v)}" for k, v in extra.items())
    return f"""
---
apiVersion: hoststorage.io/v1alpha1
kind: DomainMonitor
metadata: {{name: {name}}}
spec:
  target: {target}
  intervalSeconds: 1
  timeoutSeconds: 1{fields}
"""


@pytest.fixture
def hs(tmp_path: pathlib.Path, vm_volume: fixtures_storage.GlusterVolume) -> Iterator[Hs]:
    h = Hs(tmp_path)
    conn = tmp_path / "conn.yaml"
    conn.write_text(connection(vm_volume))
    try:
        yield h
    finally:
        vm_volume.resume_brick()
        err = h.stop()
        assert "Traceback" not in err, err
        h.run("delete", "--force", "-f", str(conn))
        fixtures_storage.unmount_all_under(str(h.state))


def mount_point(hs: Hs, tmp_path: pathlib.Path) -> pathlib.Path:
    (result,) = hs.apply(tmp_path / "conn.yaml")
    assert result["ready"], result
    return pathlib.Path(result["connection"]["mountPoint"])


def test_paused_on_an_io_error_is_resumed_when_the_brick_is_back_an_admins_pause_stays(
    hs: Hs, guest_boot: Boot, vm_volume: fixtures_storage.GlusterVolume, tmp_path: pathlib.Path,
) -> None:
    mnt = mount_point(hs, tmp_path)
    io_disk = vm_guest.Disk(vm_guest.make_image(str(mnt / "io.img")), "vda")
    admin_disk = vm_guest.Disk(vm_guest.make_image(str(mnt / "admin.img")), "vda")
    with guest_boot.run("hs-io", [io_disk]) as io_vm, \
            guest_boot.run("hs-adm", [admin_disk]) as admin_vm:
        fixtures_libvirt.virsh("suspend", admin_vm.name)
        assert admin_vm.state() == "paused (user)"
        manifest = tmp_path / "all.yaml"
        manifest.write_text(connection(vm_volume) + monitor_doc("gl-mon", "{connectionRef: {name: gl}}"))
        hs.monitor(manifest)
        start, _ = hs.wait_line(state_is("gl-mon", "Healthy"), 30, "gl-mon Healthy")
        with brick_stopped(vm_volume) as cont:
            stopped = time.monotonic()
            io_vm.wait_state("paused (I/O error)", PAUSE_TIMEOUT)
            paused_after = time.monotonic() - stopped
            frozen = io_vm.counter()
            hs.wait_line(state_is("gl-mon", "Invalid"), 30, "gl-mon Invalid", after=start)
            time.sleep(1)
            assert io_vm.counter() == frozen, "a paused guest wrote"
            assert io_vm.state() == "paused (I/O error)"
            sent = cont()
            io_vm.wait_state("running", 60)
            resumed_after = time.monotonic() - sent
        i, line = hs.wait_line(vms_line("gl-mon", "VMsResumed"), 10, "VMsResumed", after=start)
        assert io_vm.name in line[4] and admin_vm.name not in line[4], line
        # The guest goes on writing where it stopped.
        io_vm.wait_io(frozen + 3, 30)
        assert admin_vm.state() == "paused (user)"
        time.sleep(2)
        assert admin_vm.state() == "paused (user)"
        assert not [x for x in hs.since(i + 1) if x[2] == "VMs"], "one batch per recovery"
        print(f"\nguest paused {paused_after:.1f} s after SIGSTOP of the brick; "
              f"resumed {resumed_after:.2f} s after SIGCONT")


def test_a_vm_whose_other_disk_is_on_a_target_still_invalid_stays_paused(
    hs: Hs, guest_boot: Boot, vm_volume: fixtures_storage.GlusterVolume, tmp_path: pathlib.Path,
) -> None:
    mnt = mount_point(hs, tmp_path)
    local = hs.allowed / "local"
    local.mkdir()
    disks = [vm_guest.Disk(vm_guest.make_image(str(mnt / "two-a.img")), "vda"),
             vm_guest.Disk(vm_guest.make_image(str(local / "two-b.img")), "vdb")]
    with guest_boot.run("hs-two", disks) as vm:
        manifest = tmp_path / "all.yaml"
        manifest.write_text(connection(vm_volume) + monitor_doc("on-gl", "{connectionRef: {name: gl}}")
                            + monitor_doc("on-local", json.dumps({"hostPath": str(local)})))
        hs.monitor(manifest)
        hs.wait_line(state_is("on-gl", "Healthy"), 30, "on-gl Healthy")
        start, _ = hs.wait_line(state_is("on-local", "Healthy"), 30, "on-local Healthy")
        probe = local / checker.probe_name(socket.gethostname())
        with brick_stopped(vm_volume) as cont:
            vm.wait_state("paused (I/O error)", PAUSE_TIMEOUT)
            # The second target fails too (its probe vanishes): Invalid.
            data = probe.read_bytes()
            os.unlink(probe)
            hs.wait_line(state_is("on-local", "Invalid"), 10, "on-local Invalid", after=start)
            mark = len(hs.since(0))
            cont()
            hs.wait_line(state_is("on-gl", "Healthy"), 30, "on-gl Healthy again", after=mark)
        _, held = hs.wait_line(vms_line("on-gl", "VMsLeftPaused"), 10, "VMsLeftPaused", after=mark)
        assert "OtherTargetNotHealthy" in held[4] and "on-local" in held[4] and "Invalid" in held[4], held
        time.sleep(2)
        assert vm.state() == "paused (I/O error)"
        frozen = vm.counter("vdb")
        # The second target recovers: its own recovery resumes the VM.
        probe.write_bytes(data)
        hs.wait_line(vms_line("on-local", "VMsResumed"), 15, "on-local's VMsResumed", after=mark)
        vm.wait_state("running", 10)
        vm.wait_io(frozen + 3, 30, "vdb")


def test_opt_out_leaves_the_vm_paused(
    hs: Hs, guest_boot: Boot, vm_volume: fixtures_storage.GlusterVolume, tmp_path: pathlib.Path,
) -> None:
    mnt = mount_point(hs, tmp_path)
    disk = vm_guest.Disk(vm_guest.make_image(str(mnt / "kept.img")), "vda")
    with guest_boot.run("hs-kept", [disk]) as vm:
        manifest = tmp_path / "all.yaml"
        manifest.write_text(connection(vm_volume)
                            + monitor_doc("kept", "{connectionRef: {name: gl}}", resumePausedVMs=False))
        hs.monitor(manifest)
        start, _ = hs.wait_line(state_is("kept", "Healthy"), 30, "kept Healthy")
        with brick_stopped(vm_volume) as cont:
            vm.wait_state("paused (I/O error)", PAUSE_TIMEOUT)
            hs.wait_line(state_is("kept", "Invalid"), 30, "kept Invalid", after=start)
            cont()
        hs.wait_line(state_is("kept", "Healthy"), 30, "kept Healthy again", after=start + 1)
        time.sleep(3)
        assert vm.state() == "paused (I/O error)"
        assert not [x for x in hs.since(start) if x[2] == "VMs"]
        # libvirt can resume it: hoststorage chose not to.
        fixtures_libvirt.virsh("resume", vm.name)
        vm.wait_state("running", 10)


# ------------------------------------------------------------------- ENOSPC, start-up, reconnect


@pytest.fixture
def full_fs(loop_device: Any, tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    """An ext4 loop filesystem of 64 MiB, mounted (at teardown lazily unmounted)."""
    dev = loop_device("ext4", 64)
    mnt = tmp_path / "full"
    mnt.mkdir()
    subprocess.run(["mount", dev, str(mnt)], check=True, timeout=30)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=30)


def fill(mnt: pathlib.Path, leave: int = 128 * 1024) -> pathlib.Path:
    """Leave ``leave`` bytes free, counting the blocks reserved for root (qemu runs as root here)."""
    st = os.statvfs(mnt)
    filler = mnt / "filler"
    size = st.f_bfree * st.f_frsize - leave
    with open(filler, "wb") as f:
        while size > 0:
            try:
                os.posix_fallocate(f.fileno(), 0, size)
                break
            except OSError as exc:  # the extent tree needs blocks of its own: a little less
                if exc.errno != errno.ENOSPC:
                    raise
                size -= 256 * 1024
    return filler



def test_enospc_is_never_resumed_and_the_tracker_survives_a_libvirtd_restart(
    guest_boot: Boot, full_fs: pathlib.Path, libvirtd: str,
) -> None:
    # The probe first: the checker must be able to create it before the disk is full.
    rt_probe = checker.Checker()
    try:
        first = rt_probe.check(checker.CheckRequest(target=str(full_fs), create_probe=True), timeout=10)
    finally:
        rt_probe.close()
    assert first is not None and first.ok, first
    image = vm_guest.make_image(str(full_fs / "grow.img"), 48)
    with guest_boot.run("hs-nospc", [vm_guest.Disk(image, "vda")]) as vm:
        filler = fill(full_fs)  # the guest writes on into new blocks of its sparse image: ENOSPC
        vm.wait_state("paused (I/O error)", 120)
        # Found at start-up, by listing: the tracker starts after the pause.
        layer = libvirt_pools.PoolLayer(libvirtd, backoff=(0.1, 1.0))
        assert layer.connect()
        tracker = libvirt_domains.DomainTracker(layer)
        batches: list[Any] = []
        rt = monitoring.MonitorRuntime(vms=tracker, on_resume=batches.append)
        rt.start()
        try:
            wait_for(tracker.synced.is_set, 20, "the first listing")
            (rec,) = [r for r in tracker.records() if r.name == vm.name]
            assert (rec.paused_on_io_error, rec.io_error, rec.paused_since) == (True, "enospc", None), rec
            assert rec.disks == (image,)
            request = checker.CheckRequest(target=str(full_fs), create_probe=False)
            rt.set(monitoring.MonitorConfig("full", request, interval=1, timeout=2))
            wait_for(lambda: bool(batches), 20, "the start-up recovery's batch")
            assert batches[0].held[0][:2] == (vm.name, "NoSpace"), batches[0]
            assert (rt.status("full") or dmon.MonitorStatus()).detail()["pausedVMs"] == {
                "count": 1, "names": [vm.name]}
            assert rt.registry.get_sample_value("hoststorage_monitor_paused_vms", {"monitor": "full"}) == 1
            time.sleep(1)
            assert vm.state() == "paused (I/O error)"
            # libvirtd restarts; the tracker lists again and its domain events are registered again:
            # with space freed and the VM resumed from outside, the tracker hears of it.
            reconnects = layer.reconnects
            fixtures_libvirt.restart_libvirtd()
            wait_for(lambda: layer.reconnects > reconnects, 60, "the layer to reconnect")
            time.sleep(1)
            os.unlink(filler)
            fixtures_libvirt.virsh("resume", vm.name)
            vm.wait_state("running", 10)
            wait_for(lambda: not [r for r in tracker.records() if r.name == vm.name and r.paused_on_io_error],
                     10, "the tracker to see the resume (events after the reconnect)")
            wait_for(lambda: (rt.status("full") or dmon.MonitorStatus()).paused_vm_count == 0, 10,
                     "pausedVMs to clear")
            assert rt.registry.get_sample_value("hoststorage_vm_resumes_total", {"result": "resumed"}) == 0
        finally:
            rt.stop()
            layer.close()


def test_guest_helpers_know_the_kernel_modules() -> None:
    kernel = vm_guest.find_kernel()
    if kernel is None:
        pytest.skip("no cloud kernel installed (linux-image-cloud-amd64)")
    order = [os.path.basename(p).split(".ko")[0] for p in vm_guest.module_load_order(kernel.modules_dir)]
    assert order.index("virtio_ring") < order.index("virtio") < order.index("virtio_pci") < order.index(
        "virtio_blk")
    assert {"virtio_pci_legacy_dev", "virtio_pci_modern_dev"} <= set(order)
    assert shutil.which("virsh")
