"""DomainMonitor figures: 1,000 monitors on one node, helper-process checker vs VDSM's dd-per-check.

    .venv/bin/python bench/monitors.py [--monitors 1000] [--interval 10] [--seconds 60]

Both designs run in this process, one after the other, on the same probe files (a directory per
monitor on this host's disk), through the same :class:`controller.monitoring.MonitorRuntime`; only the
check backend differs. After one interval of warm-up, measured over ``--seconds``: checks done, CPU %
of one core (user+system of this process, of the dd children it reaped, and of the live helper
processes from /proc), CPU per check, RSS of this process and of the helpers, schedule jitter p50/p99
(how late each check was sent after its due time). Then the detection latency of a hung path: a
monitor whose probe is a FIFO nobody writes to (its open blocks in the helper, as a read of hung
storage would; the real D-state case is a SIGSTOPped gluster brick, in
tests/test_domain_monitor_storage.py), measured from the hang until ``Read timeout``.
Finally the status writes the runtime's report rule makes in 10 minutes of steady state, replayed
through :func:`reconcilers.domain_monitor.report_due` with the read delays measured above.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dd_checker

from controller import monitoring
from hostlib import checker
from reconcilers import domain_monitor as dmon

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _rss_kib(pid: int | str = "self") -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def make_paths(root: str, n: int) -> list[str]:
    dirs = []
    for i in range(n):
        d = os.path.join(root, f"dom{i:04d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, checker.PROBE_NAME), "wb") as f:
            f.write(b"x" * 4096)
        dirs.append(d)
    return dirs


def run_design(name: str, backend: checker.CheckBackend, dirs: list[str], interval: float,
               seconds: float) -> dict[str, float]:
    delays: list[float] = []
    reports = [0]

    def on_report(_n: str, st: dmon.MonitorStatus, _t: bool) -> None:
        reports[0] += 1

    rt = monitoring.MonitorRuntime(backend=backend, on_report=on_report)
    rt.start()
    for i, d in enumerate(dirs):
        req = checker.CheckRequest(target=d, path=os.path.join(d, checker.PROBE_NAME), kind="probe",
                                   create_probe=False)
        rt.set(monitoring.MonitorConfig(f"m{i:04d}", req, interval=interval, timeout=interval))
    # Warm-up: a little over one interval, so every monitor has had its first result (its first status
    # write) and the helper is running; then measure.
    time.sleep(interval * 1.2 + 1)
    helper_pids = getattr(backend, "helper_pids", list)()
    checks0 = sum(int(v["checks"]) for v in rt.snapshot().values())
    helpers0 = sum(_proc_cpu(p) for p in helper_pids)
    rt.jitter.clear()
    reports[0] = 0
    cpu0, t0 = _cpu(), time.monotonic()
    time.sleep(seconds)
    helper_cpu = sum(_proc_cpu(p) for p in helper_pids) - helpers0
    agent_cpu = _cpu() - cpu0  # this process plus its reaped children (every dd)
    elapsed = time.monotonic() - t0
    helper_rss = sum(_rss_kib(p) for p in helper_pids)
    agent_rss = _rss_kib()
    snap = rt.snapshot()
    checks = sum(int(v["checks"]) for v in snap.values()) - checks0
    delays = [float(v["readDelay"]) for v in snap.values() if "readDelay" in v]
    jitter = monitoring.jitter_percentiles(rt.jitter)
    rt.stop()
    cpu = agent_cpu + helper_cpu
    healthy = sum(1 for v in snap.values() if v["state"] == "Healthy")
    out = {
        "checks": checks,
        "healthy": healthy,
        "cpu_pct": 100.0 * cpu / elapsed,
        "cpu_us_per_check": 1e6 * cpu / max(checks, 1),
        "helper_us_per_check": 1e6 * helper_cpu / max(checks, 1),
        "agent_rss_mib": agent_rss / 1024,
        "helper_rss_mib": helper_rss / 1024,
        "jitter_p50_ms": 1000 * jitter["p50"],
        "jitter_p99_ms": 1000 * jitter["p99"],
        "reports": reports[0],
        "median_read_delay_ms": 1000 * sorted(delays)[len(delays) // 2] if delays else 0.0,
    }
    print(f"{name:>8}: {checks} checks in {elapsed:.0f} s ({healthy}/{len(dirs)} Healthy), "
          f"CPU {out['cpu_pct']:.1f}% of one core = {out['cpu_us_per_check']:.0f} us/check "
          f"(helpers {out['helper_us_per_check']:.0f}), "
          f"RSS agent {out['agent_rss_mib']:.0f} MiB + helpers {out['helper_rss_mib']:.0f} MiB, "
          f"jitter p50 {out['jitter_p50_ms']:.2f} ms p99 {out['jitter_p99_ms']:.2f} ms, "
          f"median read delay {out['median_read_delay_ms']:.3f} ms, "
          f"{out['reports']} status writes due in the window", flush=True)
    out["_delays"] = delays  # type: ignore[assignment]
    return out


def detection_latency(root: str, interval: float, timeout: float) -> float:
    """Seconds from the moment a path hangs until its monitor reports Read timeout."""
    d = os.path.join(root, "hung")
    os.makedirs(d, exist_ok=True)
    probe = os.path.join(d, "probe")
    with open(probe, "wb") as f:
        f.write(b"x" * 4096)
    seen: dict[str, float] = {}
    done = threading.Event()

    def on_report(_n: str, st: dmon.MonitorStatus, _t: bool) -> None:
        seen.setdefault(str(st.reason), time.monotonic())
        if st.reason == dmon.Reason.READ_TIMEOUT:
            done.set()

    rt = monitoring.MonitorRuntime(on_report=on_report)
    rt.start()
    req = checker.CheckRequest(target=d, path=probe, kind="file", create_probe=False)
    rt.set(monitoring.MonitorConfig("hung", req, interval=interval, timeout=timeout))
    while "CheckSucceeded" not in seen:
        time.sleep(0.05)
    # Hang it at a random point of the schedule: the probe becomes a FIFO, whose open never returns.
    time.sleep(random.uniform(0, interval))
    os.unlink(probe)
    os.mkfifo(probe)
    hung_at = time.monotonic()
    done.wait(interval + timeout + 5)
    latency = seen.get(str(dmon.Reason.READ_TIMEOUT), float("nan")) - hung_at
    # Unblock the stuck open so the helper can exit.
    # O_RDWR never blocks on a FIFO and releases the stuck open; the data releases the read after it.
    fd = os.open(probe, os.O_RDWR | os.O_NONBLOCK)
    os.write(fd, b"x" * 8192)
    time.sleep(0.2)
    os.close(fd)
    rt.stop()
    return latency


def steady_state_writes(delays: list[float], n: int, interval: float, report_interval: float,
                        minutes: float = 10.0) -> int:
    """Status writes the report rule makes for ``n`` healthy monitors over ``minutes`` of steady state."""
    rng = random.Random(1)
    writes = 0
    total, free = 100 * 2**30, 40 * 2**30
    for _ in range(n):
        st, reported, reported_at = dmon.MonitorStatus(), None, None
        t = 0.0
        while t < minutes * 60:
            delay = rng.choice(delays) if delays else 0.0002
            out = dmon.Outcome(dmon.OutcomeKind.OK, read_delay=delay, total_bytes=total,
                               free_bytes=free - rng.randrange(0, 2**20))
            st = dmon.next_status(st, out, dmon.Thresholds(), t)
            if dmon.report_due(reported, reported_at, st, t, report_interval):
                if reported is not None:  # the first write is start-up, not steady state
                    writes += 1
                reported, reported_at = st, t
            t += interval
    return writes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--monitors", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=60.0, help="measurement time per design")
    ap.add_argument("--dir", default="/var/tmp", help="where the probe directories are made (a real disk)")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="hs-bench-monitors-", dir=args.dir)
    try:
        dirs = make_paths(root, args.monitors)
        print(f"{args.monitors} monitors, interval {args.interval:g} s, {args.seconds:g} s per design, "
              f"probe files under {root} ({os.cpu_count()} CPUs)", flush=True)
        helper = run_design("helper", checker.Checker(), dirs, args.interval, args.seconds)
        dd = run_design("dd", dd_checker.DdChecker(), dirs, args.interval, args.seconds)
        ratio = dd["cpu_us_per_check"] / max(helper["cpu_us_per_check"], 1e-9)
        print(f"CPU per check: dd / helper = {ratio:.1f}x", flush=True)
        lat = detection_latency(root, 2.0, 2.0)
        print(f"hung path (interval 2 s, timeout 2 s): Read timeout {lat:.2f} s after the hang "
              "(bound: interval + timeout = 4 s)", flush=True)
        writes = steady_state_writes(list(helper["_delays"]), args.monitors, args.interval, 300.0)  # type: ignore[arg-type]
        print(f"steady state: {writes} status writes in 10 minutes for {args.monitors} healthy monitors "
              "(reportIntervalSeconds 300)", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
