"""The trust property of issue 9, run long: many generated layouts, specs and attacker moves.

    flock /tmp/hs-heavy.lock .venv/bin/python bench/trust_property.py [--examples 1000] [--seed N]

The same property as ``tests/test_trust_property.py`` (see ``tests/trust_world.py``), as root, in a
temp dir that is removed afterwards. Prints the seed, the cases tried, how often each attacker move hit
each kind of name, the results hoststorage reported, the time taken and the outcome (exit 1 on a
violation, with the seed to rerun).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(here))
sys.path.insert(0, os.path.join(os.path.dirname(here), "tests"))

import test_trust_property  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root: the attacker mounts tmpfs", file=sys.stderr)
        return 2
    os.environ.setdefault("HOSTSTORAGE_QEMU_USER", "none")
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    base = tempfile.mkdtemp(prefix="hs-trust-bench-")
    print(f"seed {seed}, {args.examples} examples")
    start = time.monotonic()
    outcome = "no violation"
    try:
        hits = test_trust_property.run_property(base, args.examples, seed)
    except AssertionError as exc:
        outcome = f"VIOLATION (rerun with --seed {seed}): {str(exc)[:2000]}"
        hits = None
    finally:
        shutil.rmtree(base, ignore_errors=True)
    took = time.monotonic() - start
    if hits is not None:
        print(f"cases tried: {hits['examples']} in {took:.0f} s")
        for key in sorted(hits):
            if "@" in key:
                print(f"  move {key}: {hits[key]}")
        for key in sorted(hits):
            if key.startswith(("hs:", "result:", "created:")):
                print(f"  {key}: {hits[key]}")
    print(f"outcome: {outcome}")
    return 0 if hits is not None else 1


if __name__ == "__main__":
    sys.exit(main())
