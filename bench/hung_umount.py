"""Figure for issue 9, class 9: how long umount(8) takes on a hung gluster mount, with and without
``--no-canonicalize``; prints them, asserts nothing.

A one-brick gluster volume on loopback (``tests/fixtures_storage.own_gluster_volume``) is mounted twice
(two FUSE clients); the brick is SIGSTOPped; then ``umount <target>`` (canonicalising: umount resolves
the path, which stats the hung mount) and ``umount --no-canonicalize <target>`` (what hoststorage
runs) are each timed, with a bound of ``--bound`` seconds. The brick is resumed and every mount removed
afterwards, even on failure.

Usage (root, under the heavy lock): ``flock /tmp/hs-heavy.lock .venv/bin/python bench/hung_umount.py``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import fixtures_storage  # noqa: E402


def timed(argv: list[str], bound: float) -> str:
    start = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=bound, check=False)
    except subprocess.TimeoutExpired:
        return f"still running after {bound:.0f} s (abandoned)"
    took = time.monotonic() - start
    return f"rc {proc.returncode} in {took:.2f} s {proc.stderr.strip()[:80]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bound", type=float, default=90.0, help="seconds before a umount is abandoned")
    args = parser.parse_args()
    missing = fixtures_storage.gluster_missing()
    if missing:
        print(f"cannot run: {missing}")
        return 1
    with tempfile.TemporaryDirectory(prefix="hs-hung-") as tmp:
        brick = os.path.join(tmp, "brick")
        os.mkdir(brick)
        with fixtures_storage.own_gluster_volume(brick) as vol:
            targets = {}
            for how in ("canonicalising", "no-canonicalize"):
                targets[how] = os.path.join(tmp, how)
                os.mkdir(targets[how])
                subprocess.run(["mount", "-t", "glusterfs", vol.remote, targets[how]], check=True, timeout=60)
            pid = vol.brick_pid()
            assert pid
            os.kill(pid, signal.SIGSTOP)
            try:
                time.sleep(1)
                print(f"gluster volume {vol.volume}, brick {pid} stopped, network.ping-timeout "
                      f"{fixtures_storage.GLUSTER_PING_TIMEOUT} s")  # fmt: skip
                print(
                    "umount <target>:                  ",
                    timed(["umount", targets["canonicalising"]], args.bound),
                )
                print(
                    "umount --no-canonicalize <target>:",
                    timed(["umount", "--no-canonicalize", targets["no-canonicalize"]], args.bound),
                )
            finally:
                vol.resume_brick()
                for target in targets.values():
                    subprocess.run(["umount", "--no-canonicalize", "-l", target], check=False, timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
