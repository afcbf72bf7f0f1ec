"""StoragePool figures against this host's libvirtd (root): apply latency, event latency, no-op resync cost.

    .venv/bin/python bench/pools.py [--runs 10] [--pools 100]

1. apply -> running: ``storage_pool.reconcile`` of a new pool until it returns Running (define, build,
   start, autostart, observe), for dir pools and for fs pools on a loop-device ext4 (mount included).
2. event -> status: a pool is destroyed from a second, independent libvirt connection (as ``virsh
   pool-destroy`` would); hoststorage's lifecycle event enqueues the key and a worker reconciles. Printed:
   destroy -> event delivered, and destroy -> reconcile result Running again (the pool restarted).
3. no-op resync: with N converged dir pools, one pass of ``reconcile`` over all of them (what a resync
   tick costs): wall time, per pool, and CPU time of this process.
Everything the bench creates (pools, loop devices, temp dirs) is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import queue
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import libvirt

from hostlib import config, libvirt_pools
from reconcilers import api, storage_pool
from reconcilers import host as host_mod


def manifest(name: str, spec: dict[str, object]) -> dict[str, object]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": storage_pool.KIND,
        "metadata": {"name": name},
        "spec": spec,
    }


def fmt(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
    return (
        f"median {statistics.median(ms):7.1f} ms   p90 {p90:7.1f} ms   max {ms[-1]:7.1f} ms   (n={len(ms)})"
    )


def make_loop(workdir: str) -> tuple[str, str]:
    image = os.path.join(workdir, f"fs-{secrets.token_hex(3)}.img")
    with open(image, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", image], check=True, timeout=60)
    dev = subprocess.run(
        ["losetup", "--find", "--show", image], check=True, capture_output=True, text=True
    ).stdout
    return dev.strip(), image


def bench_apply(host: host_mod.Host, runs: int, workdir: str) -> None:
    root = host.config.allowed_host_paths[0]
    dir_times: list[float] = []
    for i in range(runs):
        spec = storage_pool.parse(manifest(f"bench-dir-{i}", {"dir": {"path": os.path.join(root, f"d{i}")}}))
        t0 = time.perf_counter()
        res = storage_pool.reconcile(spec, host)
        dir_times.append(time.perf_counter() - t0)
        assert res.ready, res.message
        storage_pool.teardown(spec, host)
    print(f"apply -> running, dir pool:            {fmt(dir_times)}")

    fs_times: list[float] = []
    loops: list[str] = []
    try:
        for i in range(runs):
            dev, _ = make_loop(workdir)
            loops.append(dev)
            spec = storage_pool.parse(manifest(f"bench-fs-{i}", {"fs": {"device": dev, "format": "ext4"}}))
            t0 = time.perf_counter()
            res = storage_pool.reconcile(spec, host)
            fs_times.append(time.perf_counter() - t0)
            assert res.ready, res.message
            storage_pool.teardown(spec, host)
    finally:
        for dev in loops:
            subprocess.run(["losetup", "-d", dev], check=False, timeout=30)
    print(f"apply -> running, fs pool (loop ext4): {fmt(fs_times)}")


def bench_events(host: host_mod.Host, runs: int) -> None:
    layer = storage_pool.layer_for(host)
    root = host.config.allowed_host_paths[0]
    spec = storage_pool.parse(manifest("bench-event", {"dir": {"path": os.path.join(root, "ev")}}))
    assert storage_pool.reconcile(spec, host).ready
    keys: queue.Queue[float | None] = queue.Queue()
    event_at: list[float] = []
    running_at: list[float] = []

    def on_event(name: str) -> None:
        if name == spec.libvirt_name:
            now = time.perf_counter()
            event_at.append(now)
            keys.put(now)

    def worker() -> None:
        while keys.get() is not None:
            res = storage_pool.reconcile(spec, host)
            if res.ready and res.changed:
                running_at.append(time.perf_counter())

    layer.add_pool_listener(on_event)
    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    outside = libvirt.open(host.config.libvirt_uri)
    to_event: list[float] = []
    to_running: list[float] = []
    try:
        for _ in range(runs):
            time.sleep(0.3)  # let the previous round's own events settle
            event_at.clear()
            running_at.clear()
            t0 = time.perf_counter()
            outside.storagePoolLookupByName(spec.libvirt_name).destroy()
            deadline = time.perf_counter() + 10
            while not running_at and time.perf_counter() < deadline:
                time.sleep(0.001)
            assert running_at, "the pool was not restarted"
            to_event.append(min(t for t in event_at if t >= t0) - t0)
            to_running.append(running_at[0] - t0)
    finally:
        outside.close()
        layer.remove_listener(on_event)
        keys.put(None)
        thread.join(10)
        storage_pool.teardown(spec, host)
    print(f"outside destroy -> event delivered:    {fmt(to_event)}")
    print(f"outside destroy -> running again:      {fmt(to_running)}")


def bench_resync(host: host_mod.Host, count: int) -> None:
    root = host.config.allowed_host_paths[0]
    specs = [
        storage_pool.parse(manifest(f"bench-many-{i}", {"dir": {"path": os.path.join(root, f"m{i}")}}))
        for i in range(count)
    ]
    t0 = time.perf_counter()
    for spec in specs:
        assert storage_pool.reconcile(spec, host).ready
    first = time.perf_counter() - t0
    print(
        f"first apply of {count} dir pools:          {first:7.2f} s ({first / count * 1000:.1f} ms per pool)"
    )
    try:
        passes: list[float] = []
        cpu: list[float] = []
        for _ in range(5):
            c0, t0 = time.process_time(), time.perf_counter()
            for spec in specs:
                res = storage_pool.reconcile(spec, host)
                assert res.ready and not res.changed
            passes.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        best = min(passes)
        print(
            f"no-op resync of {count} pools:            median {statistics.median(passes) * 1000:7.1f} ms, "
            f"best {best * 1000:.1f} ms ({best / count * 1000:.2f} ms per pool), "
            f"CPU {statistics.median(cpu) * 1000:.1f} ms per pass"
        )
    finally:
        t0 = time.perf_counter()
        for spec in specs:
            storage_pool.teardown(spec, host)
        print(f"teardown of {count} pools:                 {time.perf_counter() - t0:7.2f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--pools", type=int, default=100)
    parser.add_argument("--uri", default="qemu:///system")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/pools.py needs root (libvirtd, loop devices)", file=sys.stderr)
        return 2
    workdir = tempfile.mkdtemp(prefix="hs-bench-pools-")
    allowed = os.path.join(workdir, "allowed")
    os.makedirs(allowed)
    conf = config.HostConfig(
        state_dir=os.path.join(workdir, "state"), mount_base=os.path.join(workdir, "mnt"),
        allowed_host_paths=(allowed,), libvirt_uri=args.uri,
    )  # fmt: skip
    layer = libvirt_pools.PoolLayer(args.uri)
    if not layer.connect():
        print(f"libvirtd at {args.uri} does not answer", file=sys.stderr)
        return 2
    host = host_mod.Host.for_config(conf, pools=lambda: layer)
    try:
        print(f"libvirt {libvirt.getVersion()}, {os.cpu_count()} CPUs")
        bench_apply(host, args.runs, workdir)
        bench_events(host, args.runs)
        bench_resync(host, args.pools)
    finally:
        for entry in host.ledger.entries(storage_pool.KIND):
            storage_pool.teardown(entry, host, force=True)
        layer.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
