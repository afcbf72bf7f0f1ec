"""Figures, not assertions: how long ``hoststorage apply`` takes for StorageConnections on this host.

Measures, with the real console script as a user runs it (wall time of the whole process):
- apply of 1 and of 50 new connections, localfs (links to directories) and posixfs (ext4 on loop
  devices: one small sparse image and loop device per connection, since one device has one mount point);
- a no-op apply of the same 50 (converged host: observe only, no host change, "no change");
- delete of the 50;
- the process start-up floor (``hoststorage --version``) and the in-process cost of a no-op apply of 50
  (``controller.engine.apply``), to separate Python start-up from reconcile work.

Run as root: ``.venv/bin/python bench/connect.py [--count 50] [--repeat 3]``. Everything lives in a temp
dir; loop devices and mounts are removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from controller import engine, manifests, settings  # noqa: E402

HOSTSTORAGE = str(pathlib.Path(sys.executable).parent / "hoststorage")


def conn(name: str, spec: dict[str, object]) -> dict[str, object]:
    return {"apiVersion": "hoststorage.io/v1alpha1", "kind": "StorageConnection", "metadata": {"name": name},
            "spec": spec}  # fmt: skip


class Bench:
    def __init__(self, work: pathlib.Path) -> None:
        self.work = work
        self.loops: list[str] = []

    def cli(self, state: str, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
        argv = [HOSTSTORAGE, "--state-dir", state, "--allowed-host-path", str(self.work / "dirs"), *args]
        start = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        return time.perf_counter() - start, proc

    def localfs(self, n: int, tag: str) -> list[dict[str, object]]:
        docs = []
        for i in range(n):
            d = self.work / "dirs" / f"{tag}-{i}"
            d.mkdir(parents=True, exist_ok=True)
            docs.append(conn(f"{tag}-{i}", {"type": "localfs", "localfs": {"path": str(d)}}))
        return docs

    def loop(self) -> str:
        image = self.work / f"img-{len(self.loops)}.img"
        with open(image, "wb") as f:
            f.truncate(8 * 1024 * 1024)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, timeout=60)
        dev = subprocess.run(["losetup", "--find", "--show", str(image)], check=True, capture_output=True,
                             text=True, timeout=60).stdout.strip()  # fmt: skip
        self.loops.append(dev)
        return dev

    def posixfs(self, n: int, tag: str) -> list[dict[str, object]]:
        return [conn(f"{tag}-{i}", {"type": "posixfs", "posixfs": {"source": self.loop(), "vfsType": "ext4"}})
                for i in range(n)]  # fmt: skip

    def cleanup(self) -> None:
        for line in reversed(pathlib.Path("/proc/self/mountinfo").read_text().splitlines()):
            target = line.split(" ")[4]
            if target.startswith(str(self.work) + "/"):
                subprocess.run(["umount", "-l", target], check=False, timeout=60)
        for dev in self.loops:
            subprocess.run(["losetup", "-d", dev], check=False, timeout=60)


@contextlib.contextmanager
def bench_dir() -> Iterator[Bench]:
    work = pathlib.Path(tempfile.mkdtemp(prefix="hs-bench-"))
    work.chmod(0o755)  # like /var/lib: qemu can reach the mount base, so the default qemu check passes
    b = Bench(work)
    try:
        yield b
    finally:
        b.cleanup()
        shutil.rmtree(work, ignore_errors=True)


def measure(b: Bench, kind: str, n: int, repeat: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"apply": [], "noop": [], "delete": [], "noop_inproc": []}
    # One set of directories / loop devices per size, reused by every repeat (each in a fresh state dir).
    docs = b.localfs(n, f"{kind}{n}") if kind == "localfs" else b.posixfs(n, f"{kind}{n}")
    for r in range(repeat):
        tag = f"{kind}{n}r{r}"
        manifest = b.work / f"{tag}.yaml"
        manifest.write_text(yaml.safe_dump_all(docs))
        state = str(b.work / f"state-{tag}")
        t, proc = b.cli(state, "apply", "-f", str(manifest))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out["apply"].append(t)
        t, proc = b.cli(state, "apply", "-f", str(manifest))
        assert proc.returncode == 0 and "no change" in proc.stdout, proc.stdout
        out["noop"].append(t)
        env = {"HOSTSTORAGE_STATE_DIR": state, "HOSTSTORAGE_ALLOWED_HOST_PATHS": str(b.work / "dirs")}
        conf = settings.Settings.build(None, env)
        parsed = manifests.load([str(manifest)]).documents
        start = time.perf_counter()
        outcome = engine.apply(parsed, conf)
        out["noop_inproc"].append(time.perf_counter() - start)
        assert not outcome.changed and all(r.ready for r in outcome.results)
        t, proc = b.cli(state, "delete", "-f", str(manifest))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out["delete"].append(t)
    return out


def fmt(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med * 1000:8.1f} ms  (min {min(values) * 1000:.1f}, n={len(values)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/connect.py needs root (mounts, loop devices)", file=sys.stderr)
        return 2
    with bench_dir() as b:
        startup = []
        for _ in range(5):
            t, _ = b.cli(str(b.work / "state-v"), "--version")
            startup.append(t)
        print(f"{'hoststorage --version (process floor)':48s}{fmt(startup)}")
        for kind in ("localfs", "posixfs"):
            for n in (1, args.count):
                res = measure(b, kind, n, args.repeat)
                print(f"{f'apply {n:3d} new {kind}':48s}{fmt(res['apply'])}   per object "
                      f"{statistics.median(res['apply']) / n * 1000:.1f} ms")  # fmt: skip
                print(f"{f'apply {n:3d} {kind}, converged (no-op)':48s}{fmt(res['noop'])}")
                print(f"{'  same no-op in-process (reconcile only)':48s}{fmt(res['noop_inproc'])}")
                print(f"{f'delete {n:3d} {kind}':48s}{fmt(res['delete'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
