"""A tiny real guest for the VM-resume tests: Debian's cloud kernel, a busybox initramfs, TCG.

- :func:`find_kernel` locates ``/boot/vmlinuz-<ver>-cloud-amd64`` (package ``linux-image-cloud-amd64``)
  and its ``/lib/modules/<ver>``; ``None`` when it is not installed (tests skip, saying so).
- :func:`build_initramfs` writes a newc cpio (made by busybox's own ``cpio``) with ``busybox-static``,
  the virtio modules in dependency order (read from ``modules.dep``: ``virtio_ring``, ``virtio``,
  ``virtio_pci_legacy_dev``, ``virtio_pci_modern_dev``, ``virtio_pci``, ``virtio_blk`` on Debian 12's
  6.1 cloud kernel, plain ``.ko`` files; ``.ko.xz`` would be decompressed here) and an ``/init`` that
  loads them, then writes a counter to every virtio disk with ``O_DIRECT`` (busybox ``dd oflag=direct``)
  five times a second, each write to the next 4 KiB block (a sparse image grows: the ENOSPC case), and
  prints ``HS-IO <n> <disk> ok|fail`` on the serial console.
- :func:`domain_xml` builds a transient ``type='qemu'`` domain (TCG: KVM guests did not boot on this
  machine) with direct kernel boot, disks with ``cache='none' io='native' error_policy='stop'`` (a failed
  write pauses the VM with ``VIR_DOMAIN_PAUSED_IOERROR`` instead of reaching the guest) and the serial
  console in a file (written by virtlogd). qemu runs as root (a static DAC label, no relabelling): the
  images live on test mounts under pytest's 0700 temp dirs, and qemu's own access is not what is tested.
- :func:`console_counter` reads the highest counter the guest printed for a disk.
- :func:`missing` says why this host cannot boot the guest (no kernel, qemu or busybox); :func:`running`
  starts a guest (unique name), waits for its first write and destroys it afterwards, even on failure;
  :class:`Guest` reads its state (``virsh domstate --reason``, the independent witness) and console.
"""

from __future__ import annotations

import contextlib
import glob
import lzma
import os
import re
import secrets
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from fixtures_libvirt import virsh

BUSYBOX = "/bin/busybox"
MODULES = ("virtio_pci", "virtio_blk")
"""What the guest needs; their dependencies come from modules.dep."""

INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.order); do insmod "/lib/modules/$m" || echo "HS-INSMOD-FAIL $m"; done
n=0
while [ ! -b /dev/vda ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
echo "HS-GUEST-READY $(ls /dev | grep '^vd' | tr '\n' ' ')"
i=0
while true; do
  i=$((i+1))
  for d in /dev/vd?; do
    blocks=$(( $(cat /sys/block/${d#/dev/}/size) / 8 ))
    if echo "hs-$i" | dd of="$d" bs=4096 count=1 seek=$(( i % blocks )) conv=sync,notrunc oflag=direct \
        2>/dev/null; then
      echo "HS-IO $i ${d#/dev/} ok"
    else
      echo "HS-IO $i ${d#/dev/} fail"
    fi
  done
  sleep 0.2
done
"""


@dataclass(frozen=True)
class Kernel:
    version: str
    vmlinuz: str
    modules_dir: str


def find_kernel() -> Kernel | None:
    for vmlinuz in sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"), reverse=True):
        version = os.path.basename(vmlinuz)[len("vmlinuz-"):]
        modules_dir = os.path.join("/lib/modules", version)
        if os.path.exists(os.path.join(modules_dir, "modules.dep")):
            return Kernel(version, vmlinuz, modules_dir)
    return None


def _module_deps(modules_dir: str) -> dict[str, tuple[str, list[str]]]:
    """module name -> (relative path, dependency paths) from modules.dep."""
    out: dict[str, tuple[str, list[str]]] = {}
    with open(os.path.join(modules_dir, "modules.dep"), encoding="utf-8") as f:
        for line in f:
            path, _, deps = line.partition(":")
            name = re.sub(r"\.ko(\.\w+)?$", "", os.path.basename(path)).replace("-", "_")
            out[name] = (path.strip(), deps.split())
    return out


def module_load_order(modules_dir: str, wanted: Sequence[str] = MODULES) -> list[str]:
    """Relative module paths in an order insmod accepts (every dependency before its user)."""
    deps = _module_deps(modules_dir)
    by_path = {path: name for name, (path, _) in deps.items()}
    order: list[str] = []

    def visit(name: str) -> None:
        if name not in deps:
            raise FileNotFoundError(f"module {name} is not in {modules_dir}/modules.dep (built in?)")
        path, needs = deps[name]
        # modules.dep lists a module's dependencies innermost last: load from the end.
        for dep in reversed(needs):
            visit(by_path[dep])
        if path not in order:
            order.append(path)

    for name in wanted:
        visit(name)
    return order


def build_initramfs(dest: str, kernel: Kernel, workdir: str) -> str:
    """Write the guest's initramfs (newc cpio) to ``dest``; returns ``dest``."""
    root = os.path.join(workdir, "initramfs-root")
    shutil.rmtree(root, ignore_errors=True)
    for d in ("bin", "lib/modules"):
        os.makedirs(os.path.join(root, d))
    shutil.copy2(BUSYBOX, os.path.join(root, "bin", "busybox"))
    names = []
    for rel in module_load_order(kernel.modules_dir):
        src = os.path.join(kernel.modules_dir, rel)
        name = os.path.basename(rel)
        if name.endswith(".ko.xz"):
            name = name[: -len(".xz")]
            with lzma.open(src) as f, open(os.path.join(root, "lib/modules", name), "wb") as out:
                shutil.copyfileobj(f, out)
        elif name.endswith(".ko"):
            shutil.copy2(src, os.path.join(root, "lib/modules", name))
        else:
            raise ValueError(f"cannot unpack module {src} for busybox insmod (only .ko and .ko.xz)")
        names.append(name)
    with open(os.path.join(root, "modules.order"), "w", encoding="ascii") as f:
        f.write("\n".join(names) + "\n")
    init = os.path.join(root, "init")
    with open(init, "w", encoding="ascii") as f:
        f.write(INIT)
    os.chmod(init, 0o755)
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for n in sorted(dirnames) + sorted(filenames):
            files.append(os.path.normpath(os.path.join(rel, n)))
    with open(dest, "wb") as out:
        subprocess.run([BUSYBOX, "cpio", "-o", "-H", "newc"], input="\n".join(files).encode() + b"\n",
                       stdout=out, stderr=subprocess.DEVNULL, cwd=root, check=True, timeout=60)
    return dest


@dataclass(frozen=True)
class Disk:
    path: str
    dev: str
    """The guest's name for it: vda, vdb, ..."""


def domain_xml(name: str, kernel: Kernel, initrd: str, console: str, disks: Sequence[Disk],
               memory_mib: int = 160) -> str:
    dom = ET.Element("domain", {"type": "qemu"})
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "memory", {"unit": "MiB"}).text = str(memory_mib)
    ET.SubElement(dom, "vcpu").text = "1"
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", {"arch": "x86_64", "machine": "pc"}).text = "hvm"
    ET.SubElement(os_el, "kernel").text = kernel.vmlinuz
    ET.SubElement(os_el, "initrd").text = initrd
    ET.SubElement(os_el, "cmdline").text = "console=ttyS0 rdinit=/init panic=-1 quiet loglevel=3"
    for what in ("on_poweroff", "on_reboot", "on_crash"):
        ET.SubElement(dom, what).text = "destroy"
    devices = ET.SubElement(dom, "devices")
    for disk in disks:
        d = ET.SubElement(devices, "disk", {"type": "file", "device": "disk"})
        ET.SubElement(d, "driver", {"name": "qemu", "type": "raw", "cache": "none", "io": "native",
                                    "error_policy": "stop"})
        ET.SubElement(d, "source", {"file": disk.path})
        ET.SubElement(d, "target", {"dev": disk.dev, "bus": "virtio"})
    serial = ET.SubElement(devices, "serial", {"type": "file"})
    ET.SubElement(serial, "source", {"path": console})
    ET.SubElement(serial, "target", {"port": "0"})
    ET.SubElement(devices, "controller", {"type": "usb", "model": "none"})
    ET.SubElement(devices, "memballoon", {"model": "none"})
    label = ET.SubElement(dom, "seclabel", {"type": "static", "model": "dac", "relabel": "no"})
    ET.SubElement(label, "label").text = "+0:+0"
    return ET.tostring(dom, encoding="unicode")


_IO = re.compile(r"^HS-IO (\d+) (\w+) ok", re.MULTILINE)


def read_console(console: str) -> str:
    try:
        with open(console, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def console_counter(console: str, dev: str = "vda") -> int:
    """The highest write counter the guest reported as done on ``dev`` (0: none yet)."""
    return max((int(n) for n, d in _IO.findall(read_console(console)) if d == dev), default=0)


QEMU = "/usr/bin/qemu-system-x86_64"


def missing() -> str | None:
    """Why this host cannot boot the test guest, or None."""
    if os.geteuid() != 0:
        return "needs root: libvirt guests"
    if find_kernel() is None:
        return "no /boot/vmlinuz-*-cloud-amd64 with its modules: apt-get install linux-image-cloud-amd64"
    if not os.path.exists(QEMU):
        return "no qemu-system-x86_64: apt-get install qemu-system-x86"
    if not os.path.exists(BUSYBOX):
        return "no /bin/busybox: apt-get install busybox-static"
    return None


@dataclass(frozen=True)
class Guest:
    name: str
    console: str

    def state(self) -> str:
        """``virsh domstate --reason``: ``running (unpaused)``, ``paused (I/O error)``, ``paused (user)``."""
        return virsh("domstate", "--reason", self.name).strip()

    def counter(self, dev: str = "vda") -> int:
        return console_counter(self.console, dev)

    def wait_state(self, want: str, timeout: float) -> float:
        """Seconds until ``state()`` starts with ``want``; AssertionError (console tail) after ``timeout``."""
        start = time.monotonic()
        while True:
            st = self.state()
            if st.startswith(want):
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise AssertionError(f"{self.name} is {st!r}, not {want!r} after {timeout:g} s; console: "
                                     f"{read_console(self.console)[-500:]!r}")
            time.sleep(0.05)

    def wait_io(self, beyond: int, timeout: float, dev: str = "vda") -> int:
        """Wait until the guest reports a write numbered above ``beyond`` on ``dev``; returns the counter."""
        deadline = time.monotonic() + timeout
        while (n := self.counter(dev)) <= beyond:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no write on {dev} after #{beyond} within {timeout:g} s; "
                                     f"console: {read_console(self.console)[-500:]!r}")
            time.sleep(0.1)
        return n


def make_image(path: str, size_mib: int = 16) -> str:
    with open(path, "wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    return path


@contextlib.contextmanager
def running(prefix: str, kernel: Kernel, initrd: str, disks: Sequence[Disk], workdir: str,
            boot_timeout: float = 120.0) -> Iterator[Guest]:
    """A transient guest ``<prefix>-<random>`` doing I/O on ``disks``; destroyed on the way out."""
    name = f"{prefix}-{secrets.token_hex(3)}"
    console = os.path.join(workdir, f"{name}.console")
    xml_path = os.path.join(workdir, f"{name}.xml")
    with open(xml_path, "w", encoding="utf-8") as f:
        f.write(domain_xml(name, kernel, initrd, console, disks))
    virsh("create", xml_path, timeout=60)
    guest = Guest(name, console)
    try:
        for disk in disks:
            guest.wait_io(0, boot_timeout, disk.dev)
        yield guest
    finally:
        virsh("destroy", name, check=False, timeout=60)
