"""What the local-mode loader costs on hostile and on large input (issue 9, class 7); prints, asserts nothing.

Each case loads one generated file with ``controller.manifests.load`` in a fresh process (so the peak
RSS is the case's own) with each loader PyYAML offers here, and, for comparison, with the loader
local mode used before (``yaml.safe_load_all``, pure Python, no bounds) where that finishes at all.
Printed per case: wall seconds, peak RSS growth over the process after imports, and the outcome.
Before, the alias bomb ran ``apply`` out of memory (over 2 GiB in 28 s, then MemoryError) through a
repr() in the "skipped" message; now it is refused while being read.

Usage: ``.venv/bin/python bench/manifests.py [--objects 5000]``. ``tests/test_trust_input.py`` runs
:func:`measure` on :func:`bomb` as a loose guard.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent

CHILD = """
import resource, sys, time
import yaml
from controller import manifests
def status_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM, the peak RSS of this process, to its RSS now
path, loader = sys.argv[1], sys.argv[2]
# If a bound ever breaks, the case fails fast instead of taking the machine's memory.
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
text = open(path).read()
before = status_kib("VmRSS")
start = time.perf_counter()
try:
    if loader == "old":
        outcome = f"{len(list(yaml.safe_load_all(text)))} documents"
    else:
        loaded = manifests.load([path], loader_class=manifests.LOADERS[loader])
        outcome = f"{len(loaded.documents)} loaded, {len(loaded.refused)} refused"
except Exception as exc:
    outcome = f"{type(exc).__name__}: {str(exc)[:60]}"
seconds = time.perf_counter() - start
peak = status_kib("VmHWM")
print(f"{seconds:.4f} {max(0, peak - before) / 1024:.1f} {outcome}")
"""

OBJECT = """apiVersion: hoststorage.io/v1alpha1
kind: StorageConnection
metadata:
  name: conn-{i}
  labels: {{app: x, tier: "storage"}}
spec:
  type: nfs
  nfs:
    server: nfs.example.com
    export: /exports/a/{i}
    options: [noatime, soft, "timeo=600"]
"""


def bomb() -> str:
    """Billion laughs, 9 levels of 9: 9**9 strings once expanded, under 600 bytes as text.

    Its ``kind`` is the last level: before the bound, local mode echoed ``kind`` with repr() into the
    "skipped" line, and the expansion ran ``apply`` out of memory."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "apiVersion: v1\nmetadata: {name: x}\nx:\n" + "".join(f"  {ln}\n" for ln in lines) + "kind: *i\n"


def measure(path: str | pathlib.Path, loader: str) -> tuple[float, float, str]:
    """(seconds, peak RSS growth in MiB, outcome) of loading ``path`` in a fresh process."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), loader],
        capture_output=True, text=True, check=True, timeout=1800,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    seconds, peak, outcome = proc.stdout.split(" ", 2)
    return float(seconds), float(peak), outcome.strip()


def cases(objects: int) -> list[tuple[str, str, bool]]:
    """(name, text, whether the old loader is worth running on it)."""
    return [
        ("alias bomb (9 levels of 9)", bomb(), False),  # the old loader loads it; the old apply then died
        (f"{objects} valid objects", "---\n".join(OBJECT.format(i=i) for i in range(objects)), True),
        ("100,000 nested '['", "a: " + "[" * 100_000 + "]" * 100_000 + "\n", True),
        ("8 MiB scalar", "a: " + "x" * (8 * 1024 * 1024 - 16) + "\n", True),
        ("5,001 empty documents", "---\n" * 5001, False),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=5000)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from controller import manifests  # noqa: PLC0415 - after the path is set

    loaders = [*sorted(manifests.LOADERS), "old"]
    print(f"{'case':32} {'loader':8} {'seconds':>9} {'peak MiB':>9}  outcome")
    with tempfile.TemporaryDirectory() as work:
        for name, text, with_old in cases(args.objects):
            path = pathlib.Path(work, "m.yaml")
            path.write_text(text)
            for loader in loaders:
                if loader == "old" and not with_old:
                    continue
                try:
                    seconds, peak, outcome = measure(path, loader)
                except subprocess.CalledProcessError as exc:
                    print(f"{name:32} {loader:8} failed: {exc.stderr.strip().splitlines()[-1:]}")
                    continue
                print(f"{name:32} {loader:8} {seconds:9.4f} {peak:9.1f}  {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
