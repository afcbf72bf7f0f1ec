"""Live API writes of DomainMonitors in steady state (issue 5's figure); prints them, asserts nothing.

Runs the e2e world of ``tests/fixtures_kube.py`` (kmock emulator, three real agents on this host, one
controller). ``--monitors`` (default 1,000) DomainMonitors, each on its own hostPath directory, are
selected onto one node (node-a) at ``--interval`` (default 10 s) with the default reportIntervalSeconds
(300 s), so that node's agent runs them all. Once every monitor is Ready (rolled up by the controller),
it counts every request the agents and the controller make during ``--steady-seconds`` (default 600 s,
the issue's 10 minutes) with nothing changing on the storage: writes (POST, PATCH, PUT, DELETE, Events
included) and GETs. It also prints the agent's RSS and the run's wall time.

Usage (root): ``.venv/bin/python bench/monitor_writes.py [--monitors N] [--steady-seconds S]``.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import fixtures_kube  # noqa: E402
from agent import ready, rss_mb  # noqa: E402  (bench/agent.py: the same readiness and RSS)

DMON = ("hoststorage.io", "v1alpha1", "domainmonitors")
NODE = "node-a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--monitors", type=int, default=1000)
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--steady-seconds", type=float, default=600)
    parser.add_argument("--resync-seconds", type=float, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hs-bench-") as tmp:
        cluster = fixtures_kube.Cluster(pathlib.Path(tmp), resync_seconds=args.resync_seconds)
        try:
            cluster.start_world()
            assert cluster.runner is not None and cluster.emulator is not None
            emulator, runner = cluster.emulator, cluster.runner
            names = [f"mon-{i:04d}" for i in range(args.monitors)]
            for name in names:
                (cluster.allowed / name).mkdir()

            def put_all() -> None:
                for name in names:
                    emulator.put_object(
                        DMON,
                        {
                            "apiVersion": "hoststorage.io/v1alpha1",
                            "kind": "DomainMonitor",
                            "metadata": {"name": name},
                            "spec": {
                                "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": NODE}},
                                "target": {"hostPath": str(cluster.allowed / name)},
                                "intervalSeconds": args.interval,
                            },
                        },
                    )

            start = time.monotonic()
            runner.call(put_all)
            pending = set(names)
            while pending and time.monotonic() - start < 900:
                wanted = sorted(pending)
                objs = runner.call(lambda w=wanted: {n: emulator.get_object(DMON, n) for n in w})
                pending -= {n for n, o in objs.items() if ready(o)}
                time.sleep(0.5)
            print(
                f"{args.monitors} monitors at {args.interval} s on {NODE}: "
                f"{args.monitors - len(pending)} Ready after {time.monotonic() - start:.1f} s"
            )
            # Let the first reports and Events settle, then count.
            time.sleep(2 * args.interval)
            before = len(runner.requests())
            window_start = time.monotonic()
            time.sleep(args.steady_seconds)
            window = [r for r in runner.requests()[before:] if r["who"] != "kubectl"]
            elapsed = time.monotonic() - window_start
            writes = [r for r in window if r["method"] in ("POST", "PATCH", "PUT", "DELETE")]
            reads = [r for r in window if r["method"] == "GET"]
            by_who = collections.Counter((r["who"], r["method"]) for r in writes)
            print(
                f"steady state, {elapsed:.0f} s window, resync every {args.resync_seconds:.0f} s: "
                f"{len(writes)} API writes, {len(reads)} GETs (watch reconnects)"
            )
            for (who, method), n in sorted(by_who.items()):
                print(f"  {who} {method}: {n}")
            agent = cluster.agents[NODE]
            assert agent.popen is not None
            print(f"agent on {NODE} with {args.monitors} monitors: RSS {rss_mb(agent.popen.pid):.1f} MiB")
        finally:
            cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
