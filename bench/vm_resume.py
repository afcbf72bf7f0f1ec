"""Figures for resuming VMs paused on an I/O error (issue 11, part 3); prints them, asserts nothing.

One real guest (tests/vm_guest.py: cloud kernel, busybox initramfs, TCG) writes with O_DIRECT to a disk on
a gluster volume of the bench's own (``network.ping-timeout`` 5 s, ``performance.strict-o-direct on``),
mounted with gluster's FUSE client. A ``MonitorRuntime`` (interval 1 s, timeout 1 s) with a
``DomainTracker`` on its own libvirt connection watches the mount, as the agent and ``hoststorage
monitor -f`` do. Each run SIGSTOPs the brick, waits for ``paused (I/O error)``, SIGCONTs it, and measures:

- SIGSTOP -> guest paused (what gluster's ping timeout costs; not hoststorage's);
- SIGCONT -> storage usable (a direct 4 KiB read of the image with ``dd``, tried every 50 ms from the
  moment of SIGCONT: the floor set by gluster's client reconnecting, not by hoststorage);
- SIGCONT -> monitor Healthy (the runtime's report of the transition);
- Healthy -> resume batch done (listing the paused domains, the decision, ``virDomainResume``);
- SIGCONT -> VM running (``virsh domstate``, polled every 20 ms: the independent witness).

Usage (root; libvirtd, virtlogd and glusterd are started when not running and stopped again):
``.venv/bin/python bench/vm_resume.py [--runs 7]``. Needs linux-image-cloud-amd64, qemu-system-x86,
busybox-static and glusterfs-server (scripts/setup.sh installs them).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import fixtures_libvirt  # noqa: E402
import fixtures_storage  # noqa: E402
import vm_guest  # noqa: E402
from fixtures_vm import VOLUME_OPTIONS  # noqa: E402

from controller import monitoring  # noqa: E402
from hostlib import checker, libvirt_domains, libvirt_pools  # noqa: E402
from reconcilers import domain_monitor as dmon  # noqa: E402


@contextlib.contextmanager
def libvirtd() -> Iterator[None]:
    started = not fixtures_libvirt.libvirtd_answers()
    if started:
        fixtures_libvirt.start_libvirtd()
    try:
        with fixtures_libvirt.virtlogd_running():
            yield
    finally:
        if started:
            fixtures_libvirt.stop_libvirtd()


@contextlib.contextmanager
def mounted(vol: fixtures_storage.GlusterVolume, mnt: str) -> Iterator[str]:
    os.makedirs(mnt, exist_ok=True)
    subprocess.run(["mount", "-t", "glusterfs", vol.remote, mnt], check=True, timeout=60)
    try:
        yield mnt
    finally:
        vol.resume_brick()
        subprocess.run(["umount", "-l", mnt], check=False, timeout=60)


def invalid(rt: monitoring.MonitorRuntime) -> bool:
    st = rt.status("bench")
    return st is not None and st.state is dmon.State.INVALID


def first_good_read(path: str, since: float, out: list[float]) -> None:
    while time.monotonic() - since < 60:
        try:
            proc = subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=4096", "count=1", "iflag=direct"],
                                  capture_output=True, timeout=30, check=False)
        except subprocess.TimeoutExpired:
            continue
        if proc.returncode == 0:
            out.append(time.monotonic() - since)
            return
        time.sleep(0.05)


def fmt(values: list[float]) -> str:
    return (f"median {statistics.median(values):6.2f} s   min {min(values):6.2f} s   "
            f"max {max(values):6.2f} s   (n={len(values)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    why = vm_guest.missing() or fixtures_storage.gluster_missing()
    if why:
        print(f"vm_resume bench: cannot run here: {why}", file=sys.stderr)
        return 2
    kernel = vm_guest.find_kernel()
    assert kernel is not None
    logging.basicConfig(level=logging.ERROR)
    pause: list[float] = []
    usable: list[float] = []
    healthy: list[float] = []
    batch: list[float] = []
    running: list[float] = []
    with tempfile.TemporaryDirectory(prefix="hs-bench-vm-") as work, libvirtd(), \
            fixtures_storage.own_gluster_volume(os.path.join(work, "brick"), VOLUME_OPTIONS) as vol, \
            mounted(vol, os.path.join(work, "mnt")) as mnt:
        initrd = vm_guest.build_initramfs(os.path.join(work, "initrd.cpio"), kernel, work)
        disk = vm_guest.Disk(vm_guest.make_image(os.path.join(mnt, "bench.img")), "vda")
        layer = libvirt_pools.PoolLayer(fixtures_libvirt.URI)
        layer.connect()
        tracker = libvirt_domains.DomainTracker(layer)
        healthy_at: list[float] = []
        batches_done: list[float] = []
        lock = threading.Lock()

        def on_report(_name: str, st: dmon.MonitorStatus, transition: bool) -> None:
            if transition and st.state is dmon.State.HEALTHY:
                with lock:
                    healthy_at.append(time.monotonic())

        def on_resume(b: object) -> None:
            with lock:
                batches_done.append(time.monotonic())

        rt = monitoring.MonitorRuntime(on_report=on_report, vms=tracker, on_resume=on_resume)
        rt.start()
        try:
            with vm_guest.running("hs-bench", kernel, initrd, [disk], work) as vm:
                rt.set(monitoring.MonitorConfig("bench", checker.CheckRequest(target=mnt), interval=1,
                                                timeout=1))
                deadline = time.monotonic() + 30
                while not healthy_at and time.monotonic() < deadline:
                    time.sleep(0.1)
                for i in range(args.runs):
                    time.sleep(2)
                    pid = vol.brick_pid()
                    assert pid
                    with lock:
                        healthy_at.clear()
                        batches_done.clear()
                    os.kill(pid, signal.SIGSTOP)
                    t_stop = time.monotonic()
                    try:
                        vm.wait_state("paused (I/O error)", 90)
                        t_paused = time.monotonic()
                        # Let the monitor see the outage before the brick comes back.
                        while not invalid(rt) and time.monotonic() - t_paused < 30:
                            time.sleep(0.05)
                    finally:
                        os.kill(pid, signal.SIGCONT)
                    t_cont = time.monotonic()
                    reader = threading.Thread(target=first_good_read, args=(disk.path, t_cont, usable))
                    reader.start()
                    while not vm.state().startswith("running"):
                        if time.monotonic() - t_cont > 60:
                            raise SystemExit(f"run {i + 1}: the VM was not resumed within 60 s")
                        time.sleep(0.02)
                    t_running = time.monotonic()
                    reader.join(60)
                    deadline = time.monotonic() + 10
                    while not batches_done and time.monotonic() < deadline:
                        time.sleep(0.02)
                    with lock:
                        h = next((t for t in healthy_at if t >= t_cont), None)
                        b = batches_done[0] if batches_done else None
                    pause.append(t_paused - t_stop)
                    running.append(t_running - t_cont)
                    if h is not None:
                        healthy.append(h - t_cont)
                        if b is not None:
                            batch.append(b - h)
                    print(f"run {i + 1}: paused {t_paused - t_stop:5.2f} s after SIGSTOP, running "
                          f"{t_running - t_cont:5.2f} s after SIGCONT", flush=True)
                    vm.wait_io(vm.counter(), 30)
        finally:
            rt.stop()
            layer.close()
    print()
    print(f"SIGSTOP -> guest paused (I/O error):  {fmt(pause)}")
    if usable:
        print(f"SIGCONT -> storage usable (dd):       {fmt(usable)}")
    if healthy:
        print(f"SIGCONT -> monitor Healthy:           {fmt(healthy)}")
    if batch:
        print(f"Healthy -> resume batch done:         {fmt(batch)}")
    print(f"SIGCONT -> VM running (virsh):        {fmt(running)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
