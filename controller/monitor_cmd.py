"""``hoststorage monitor -f FILE``: watch the DomainMonitors of some manifests in the foreground.

First it makes the host match everything else the files declare (connections, pools: the same
:func:`controller.engine.apply` as ``hoststorage apply``), then runs the monitors on
:class:`controller.monitoring.MonitorRuntime` and prints one line per transition::

    2026-11-25T11:20:03Z  gluster-data  Invalid  ReadTimeout  Read timeout

(time, monitor name, state, reason, message). A monitor whose connection or pool is not there yet is
printed as Pending and retried every few seconds. VMs paused on an I/O error are resumed when their
storage turns Healthy again, as in the agent (unless every monitor has ``resumePausedVMs: false``, in
which case libvirt is not even contacted), and each resume batch is one more line, with ``VMs`` in the
state column and the Event reason the agent would post::

    2026-11-25T11:21:40Z  gluster-data  VMs  VMsResumed  storage Healthy again; resumed 1 VM(s) ...
 SIGTERM or SIGINT ends it cleanly (exit 0): the schedule
stops, the check helpers are retired without waiting on hung storage. The monitors stay recorded in the
ledger, as after ``apply`` (their targets stay InUse until ``hoststorage delete -f FILE``).

The host lock is taken only around ledger changes, never for the whole run: ``hoststorage apply`` in
another terminal keeps working while this runs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType

from controller import engine, manifests, monitoring, settings, vm_resume
from hostlib import errors, ledger, libvirt_domains, libvirt_pools
from reconcilers import domain_monitor as dmon
from reconcilers import host as host_mod

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0
"""How often monitors waiting for their connection or pool are resolved again."""

USER_ERRORS = (engine.InputError,)

Item = tuple[str, dmon.MonitorStatus, bool] | vm_resume.ResumeBatch | None
"""What the runtime hands the main loop: a report, a resume batch, or None (stop)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f", "--filename", dest="filenames", action="append", required=True, metavar="FILE",
        help="a YAML manifest (multi-document); - reads stdin; repeatable",
    )
    parser.add_argument(
        "--duration", type=float, default=None, metavar="SECONDS",
        help="stop after this many seconds (default: until SIGTERM or Ctrl-C)",
    )


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _line(name: str, state: str, reason: str, message: str) -> None:
    print(f"{_now()}  {name}  {state}  {reason}  {message}", flush=True)


@contextlib.contextmanager
def _locked_host(conf: settings.Settings) -> Iterator[host_mod.Host]:
    """A Host with the ledger freshly loaded under the host lock (another command may have changed it)."""
    with ledger.host_lock(conf.state_dir, timeout=conf.lock_timeout):
        yield engine.make_host(conf)


def run(args: argparse.Namespace, conf: settings.Settings) -> int:
    loaded = manifests.load(args.filenames)
    manifests.report(loaded.refused)
    docs = loaded.documents
    others = [d for d in docs if d.obj.get("kind") != dmon.KIND]
    if any(d.obj.get("kind") not in (None, "Secret") for d in others):
        outcome = engine.apply(others, conf)
        for r in outcome.results:
            if not r.ready:
                print(f"hoststorage: {r.kind}/{r.name}: {r.phase} {r.reason}: {r.message}", file=sys.stderr)
    specs: list[dmon.Spec] = []
    for doc in docs:
        if doc.obj.get("kind") != dmon.KIND:
            continue
        try:
            specs.append(dmon.parse(doc.obj))
        except errors.InvalidSpec as exc:
            meta = doc.obj.get("metadata")
            name = meta.get("name") if isinstance(meta, dict) else None
            _line(str(name or doc.source), "Failed", exc.reason, f"{doc.source}: {exc}")
    if not specs:
        print("hoststorage: no DomainMonitor to run", file=sys.stderr)
        return engine.EXIT_NOT_READY

    events: queue.SimpleQueue[Item] = queue.SimpleQueue()
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()
        events.put(None)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    vms = None
    if any(s.resume_paused_vms for s in specs):
        vms = libvirt_domains.DomainTracker(lambda: libvirt_pools.shared(conf.libvirt_uri))
    runtime = monitoring.MonitorRuntime(on_report=lambda n, st, t: events.put((n, st, t)), vms=vms,
                                        on_resume=events.put)
    runtime.start()
    try:
        _loop(runtime, specs, conf, events, stop, duration=args.duration)
    finally:
        runtime.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return engine.EXIT_OK


def _ensure(runtime: monitoring.MonitorRuntime, specs: list[dmon.Spec], conf: settings.Settings,
            shown: dict[str, tuple[str, str]]) -> list[dmon.Spec]:
    """Start every monitor whose target resolves; print the others; return those still waiting."""
    waiting: list[dmon.Spec] = []
    with _locked_host(conf) as host:
        for spec in specs:
            result = monitoring.ensure(runtime, spec, host)
            if result.phase in ("Pending", "Failed"):
                if shown.get(spec.name) != (result.phase, result.reason):
                    shown[spec.name] = (result.phase, result.reason)
                    _line(spec.name, result.phase, result.reason, result.message)
                if result.phase == "Pending":
                    waiting.append(spec)
    return waiting


def _loop(runtime: monitoring.MonitorRuntime, specs: list[dmon.Spec], conf: settings.Settings,
          events: queue.SimpleQueue[Item], stop: threading.Event,
          *, duration: float | None) -> None:
    by_name = {s.name: s for s in specs}
    shown: dict[str, tuple[str, str]] = {}
    waiting = _ensure(runtime, specs, conf, shown)
    end = time.monotonic() + duration if duration is not None else None
    retry_at = time.monotonic() + RETRY_SECONDS
    while not stop.is_set():
        now = time.monotonic()
        if end is not None and now >= end:
            break
        if waiting and now >= retry_at:
            waiting = _ensure(runtime, waiting, conf, shown)
            retry_at = now + RETRY_SECONDS
        timeout = 1.0
        if waiting:
            timeout = min(timeout, retry_at - now)
        if end is not None:
            timeout = min(timeout, end - now)
        try:
            item = events.get(timeout=max(0.01, timeout))
        except queue.Empty:
            continue
        if item is None:
            break
        if isinstance(item, vm_resume.ResumeBatch):
            _event_type, reason, message = item.event()
            _line(item.monitor, "VMs", reason, message)
            continue
        name, st, transition = item
        if transition:
            _line(name, str(st.state), str(st.reason), st.message)
        spec = by_name.get(name)
        if spec is not None and st.path_kind == "probe":
            _remember_probe(conf, spec, st)


def _remember_probe(conf: settings.Settings, spec: dmon.Spec, st: dmon.MonitorStatus) -> None:
    try:
        with _locked_host(conf) as host:
            monitoring.record_probe(host, spec, st)
    except errors.HostStorageError as exc:
        log.warning("DomainMonitor/%s: cannot record the probe file: %s", spec.name, exc)
