"""DomainMonitor: "these nodes watch the health of this storage domain".

Three parts, so that each can be tested alone:

- :func:`parse`: a manifest to a frozen :class:`Spec` (InvalidSpec names the field; no I/O).
- The state machine, pure: :func:`next_status` maps (previous status, one check's :class:`Outcome`,
  :class:`Thresholds`, now) to the next :class:`MonitorStatus`; :func:`report_due` decides whether a
  status write is due (a transition or threshold crossing at once, numbers alone at most once per
  ``reportIntervalSeconds``). A monitor is ``Unknown`` until a real result arrives: never a false alarm
  at start-up (VDSM's ``actual=False``).
- :func:`reconcile` / :func:`teardown`: resolve the target (a connection's mount plus sub-path, a pool's
  path, or an allowed host path), record the ledger entry that keeps the target ``InUse`` while the monitor
  exists, and in local mode run one check cycle. The long-running schedule lives in
  ``controller.monitoring``; every touch of the storage itself goes through :mod:`hostlib.checker`.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import errno
import importlib
import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any

from hostlib import actions, checker, domain_metadata, errors, ledger, paths
from reconcilers import status, storage_connection

log = logging.getLogger(__name__)

KIND = "DomainMonitor"
DETAIL_KEY = "monitor"
ORDER = 2

INTERVAL_RANGE = (1, 3600)
REPORT_INTERVAL_RANGE = (1, 86400)
DEFAULT_INTERVAL = 10
DEFAULT_READ_DELAY_WARNING = 5.0
DEFAULT_REPORT_INTERVAL = 300

# ---------------------------------------------------------------------------------------------- spec


class TargetKind(enum.StrEnum):
    CONNECTION = "connectionRef"
    POOL = "poolRef"
    HOST_PATH = "hostPath"


@dataclasses.dataclass(frozen=True)
class Target:
    kind: TargetKind
    name: str = ""
    """The connection or pool name."""
    path: str = ""
    """connectionRef: the sub-path (relative, may be empty); hostPath: the absolute path."""


@dataclasses.dataclass(frozen=True)
class Thresholds:
    read_delay_warning: float = DEFAULT_READ_DELAY_WARNING
    free_space_warning_percent: float | None = None


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str
    target: Target
    uid: str = ""
    generation: int = 0
    node_selector: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    probe_file: str = ""
    """Relative to the target; empty means VDSM metadata if found, else hoststorage's own probe file."""
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_INTERVAL
    thresholds: Thresholds = Thresholds()
    report_interval: float = DEFAULT_REPORT_INTERVAL
    resume_paused_vms: bool = True
    """Resume VMs paused on an I/O error with a disk on the target when it turns Healthy (VDSM's way)."""


def _int_in(value: object, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise errors.InvalidSpec(f"must be a whole number of seconds, got {value!r}", field=field)
    if not lo <= value <= hi:
        raise errors.InvalidSpec(f"{int(value)} is out of range {lo}..{hi}", field=field)
    return int(value)


def _number_in(value: object, field: str, lo: float, hi: float, *, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise errors.InvalidSpec(f"must be a number, got {value!r}", field=field)
    v = float(value)
    if math.isnan(v) or v > hi or v < lo or (lo_open and v == lo):
        raise errors.InvalidSpec(f"{value} is out of range {'(' if lo_open else '['}{lo}, {hi}]", field=field)
    return v


def _mapping(value: object, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise errors.InvalidSpec(f"must be an object, got {type(value).__name__}", field=field)
    return value


def _no_extra(obj: Mapping[str, Any], allowed: set[str], field: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise errors.InvalidSpec(f"unknown field(s) {', '.join(map(str, extra))}", field=field)


def _parse_target(raw: object) -> Target:
    t = _mapping(raw, "spec.target")
    _no_extra(t, {k.value for k in TargetKind}, "spec.target")
    given = [k for k in TargetKind if t.get(k.value) is not None]
    if len(given) != 1:
        raise errors.InvalidSpec(
            "exactly one of connectionRef, poolRef or hostPath must be set"
            + (f" (got {', '.join(given)})" if given else ""),
            field="spec.target",
        )
    kind = given[0]
    if kind is TargetKind.CONNECTION:
        ref = _mapping(t[kind.value], "spec.target.connectionRef")
        _no_extra(ref, {"name", "path"}, "spec.target.connectionRef")
        name = paths.validate_name(ref.get("name"), field="spec.target.connectionRef.name")
        sub = ref.get("path") or ""
        sub = paths.validate_relative_path(sub, field="spec.target.connectionRef.path") if sub else ""
        return Target(kind, name, "" if sub == "." else sub)
    if kind is TargetKind.POOL:
        ref = _mapping(t[kind.value], "spec.target.poolRef")
        _no_extra(ref, {"name"}, "spec.target.poolRef")
        return Target(kind, paths.validate_name(ref.get("name"), field="spec.target.poolRef.name"))
    return Target(kind, path=paths.validate_abs_path(t[kind.value], field="spec.target.hostPath"))


def parse(obj: Mapping[str, Any]) -> Spec:
    meta = _mapping(obj.get("metadata") or {}, "metadata")
    name = paths.validate_name(meta.get("name"), field="metadata.name")
    uid = meta.get("uid") or ""
    generation = meta.get("generation") or 0
    spec = _mapping(obj.get("spec"), "spec") if obj.get("spec") is not None else None
    if spec is None:
        raise errors.InvalidSpec("is required", field="spec")
    _no_extra(
        spec,
        {"nodeSelector", "target", "probeFile", "intervalSeconds", "timeoutSeconds",
         "readDelayWarningSeconds", "freeSpaceWarningPercent", "reportIntervalSeconds", "deletionPolicy",
         "resumePausedVMs"},
        "spec",
    )
    selector = _mapping(spec.get("nodeSelector") or {}, "spec.nodeSelector")
    storage_connection.parse_node_selector(selector)
    if spec.get("target") is None:
        raise errors.InvalidSpec("is required", field="spec.target")
    target = _parse_target(spec["target"])
    probe = spec.get("probeFile") or ""
    if probe:
        probe = paths.validate_relative_path(probe, field="spec.probeFile")
        if probe in ("", "."):
            raise errors.InvalidSpec("must name a file under the target", field="spec.probeFile")
    interval = _int_in(spec.get("intervalSeconds", DEFAULT_INTERVAL), "spec.intervalSeconds", *INTERVAL_RANGE)
    timeout = _int_in(spec.get("timeoutSeconds", interval), "spec.timeoutSeconds", *INTERVAL_RANGE)
    warn = _number_in(
        spec.get("readDelayWarningSeconds", DEFAULT_READ_DELAY_WARNING), "spec.readDelayWarningSeconds",
        0.0, 3600.0, lo_open=True,
    )
    free = spec.get("freeSpaceWarningPercent")
    free_pct = None if free is None else _number_in(free, "spec.freeSpaceWarningPercent", 0.0, 100.0)
    report = _int_in(
        spec.get("reportIntervalSeconds", DEFAULT_REPORT_INTERVAL), "spec.reportIntervalSeconds",
        *REPORT_INTERVAL_RANGE,
    )
    resume_vms = spec.get("resumePausedVMs", True)
    if not isinstance(resume_vms, bool):
        raise errors.InvalidSpec(f"must be true or false, got {resume_vms!r}", field="spec.resumePausedVMs")
    return Spec(
        name=name,
        target=target,
        uid=uid if isinstance(uid, str) else "",
        generation=generation if isinstance(generation, int) else 0,
        node_selector=dict(selector),
        probe_file=probe,
        interval=interval,
        timeout=timeout,
        thresholds=Thresholds(warn, free_pct),
        report_interval=report,
        resume_paused_vms=resume_vms,
    )


# --------------------------------------------------------------------------------------- state machine


class State(enum.StrEnum):
    UNKNOWN = "Unknown"
    HEALTHY = "Healthy"
    DEGRADED = "Degraded"
    INVALID = "Invalid"


class Reason(enum.StrEnum):
    NO_RESULT_YET = "NoResultYet"
    HEALTHY = "CheckSucceeded"
    READ_DELAY_HIGH = "ReadDelayHigh"
    LOW_FREE_SPACE = "LowFreeSpace"
    READ_TIMEOUT = "ReadTimeout"
    READ_ERROR = "ReadError"
    TARGET_MISSING = "TargetMissing"
    BROKEN_SEAL = "BrokenSeal"
    METADATA_INVALID = "MetadataInvalid"
    AMBIGUOUS_DOMAIN = "AmbiguousDomain"
    PATH_OUTSIDE_TARGET = "PathOutsideTarget"
    CHECK_REFUSED = "CheckRefused"
    """No check could start: every check helper this node may keep is stuck on hung storage."""


class OutcomeKind(enum.StrEnum):
    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    """The check outlived its timeout (reported once)."""
    BLOCKED = "blocked"
    """Still the same check, one more interval later: "blocked for N s"."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One check as the state machine sees it."""

    kind: OutcomeKind
    read_delay: float | None = None
    total_bytes: int | None = None
    free_bytes: int | None = None
    reason: str = ""
    message: str = ""
    metadata: domain_metadata.DomainMetadata | None = None
    blocked_seconds: float = 0.0
    path: str = ""
    path_kind: str = ""


@dataclasses.dataclass(frozen=True)
class MonitorStatus:
    state: State = State.UNKNOWN
    reason: str = Reason.NO_RESULT_YET
    message: str = "no check has finished yet"
    since: float = 0.0
    """Wall-clock time the monitor entered this state."""
    read_delay: float | None = None
    total_bytes: int | None = None
    free_bytes: int | None = None
    consecutive_failures: int = 0
    domain: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """VDSM fields when a domain is found: sdUUID, version, type, class, role, poolUUID, description."""
    seal: str = ""
    last_check: float | None = None
    path: str = ""
    path_kind: str = ""
    blocked_seconds: float = 0.0
    paused_vms: tuple[str, ...] = ()
    """Names of the VMs paused on an I/O error with a disk on the target (the first few, sorted)."""
    paused_vm_count: int = 0

    @property
    def valid(self) -> bool:
        return self.state in (State.HEALTHY, State.DEGRADED)

    def detail(self) -> dict[str, Any]:
        """The ``monitor`` block of a StorageNodeState (camelCase, RFC 3339 times)."""
        out: dict[str, Any] = {
            "state": str(self.state),
            "reason": str(self.reason),
            "message": self.message,
            "consecutiveFailures": self.consecutive_failures,
        }
        if self.since:
            out["since"] = _rfc3339(self.since)
        if self.last_check is not None:
            out["lastCheck"] = _rfc3339(self.last_check)
        if self.read_delay is not None:
            out["readDelay"] = round(self.read_delay, 6)
        if self.total_bytes is not None:
            out["totalBytes"] = self.total_bytes
        if self.free_bytes is not None:
            out["freeBytes"] = self.free_bytes
        if self.path:
            out["path"] = self.path
            out["pathKind"] = self.path_kind
        if self.seal:
            out["metadataChecksum"] = self.seal
        if self.paused_vm_count:
            out["pausedVMs"] = {"count": self.paused_vm_count, "names": list(self.paused_vms)}
        out.update(self.domain)
        return out


def _rfc3339(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _free_percent(total: int | None, free: int | None) -> float | None:
    if not total or free is None:
        return None
    return 100.0 * free / total


def _health(outcome: Outcome, thresholds: Thresholds) -> tuple[State, str, str]:
    md = outcome.metadata
    if md is not None and md.seal is domain_metadata.Seal.BROKEN:
        return (State.INVALID, Reason.BROKEN_SEAL,
                f"metadata checksum {md.checksum} does not match the computed {md.computed}")
    problems: list[tuple[str, str]] = []
    warn = thresholds.read_delay_warning
    if outcome.read_delay is not None and outcome.read_delay > warn:
        problems.append((Reason.READ_DELAY_HIGH, f"read delay {outcome.read_delay:.3f} s is over {warn:g} s"))
    pct = _free_percent(outcome.total_bytes, outcome.free_bytes)
    low = thresholds.free_space_warning_percent
    if low is not None and pct is not None and pct < low:
        problems.append((Reason.LOW_FREE_SPACE, f"free space {pct:.1f}% is under {low:g}%"))
    if problems:
        return State.DEGRADED, problems[0][0], "; ".join(m for _, m in problems)
    delay = f"{outcome.read_delay * 1000:.3f} ms" if outcome.read_delay is not None else "n/a"
    return State.HEALTHY, Reason.HEALTHY, f"read delay {delay}"


def next_status(prev: MonitorStatus, outcome: Outcome, thresholds: Thresholds, now: float) -> MonitorStatus:
    """The status after one check. Pure: no I/O, no clock (``now`` is wall-clock seconds)."""
    if outcome.kind is OutcomeKind.OK:
        state, reason, message = _health(outcome, thresholds)
        md = outcome.metadata
        return dataclasses.replace(
            prev,
            state=state,
            reason=reason,
            message=message,
            since=prev.since if state == prev.state else now,
            read_delay=outcome.read_delay,
            total_bytes=outcome.total_bytes if outcome.total_bytes is not None else prev.total_bytes,
            free_bytes=outcome.free_bytes if outcome.free_bytes is not None else prev.free_bytes,
            consecutive_failures=0 if state is not State.INVALID else prev.consecutive_failures + 1,
            domain=md.detail() if md is not None else {},
            seal=str(md.seal) if md is not None else "",
            last_check=now,
            path=outcome.path or prev.path,
            path_kind=outcome.path_kind or prev.path_kind,
            blocked_seconds=0.0,
        )
    if outcome.kind is OutcomeKind.TIMEOUT:
        reason, message = Reason.READ_TIMEOUT, outcome.message or "Read timeout"
    elif outcome.kind is OutcomeKind.BLOCKED:
        reason, message = Reason.READ_TIMEOUT, f"blocked for {outcome.blocked_seconds:.0f} s"
    else:
        reason, message = outcome.reason or Reason.READ_ERROR, outcome.message
    return dataclasses.replace(
        prev,
        state=State.INVALID,
        reason=reason,
        message=message,
        since=prev.since if prev.state is State.INVALID else now,
        consecutive_failures=prev.consecutive_failures + 1,
        last_check=now,
        path=outcome.path or prev.path,
        path_kind=outcome.path_kind or prev.path_kind,
        blocked_seconds=outcome.blocked_seconds,
    )


def is_transition(before: MonitorStatus | None, after: MonitorStatus) -> bool:
    """A state change or a threshold crossing (the reason changes): written at once, with an Event."""
    if before is None:
        return True
    return before.state != after.state or before.reason != after.reason


def report_due(
    reported: MonitorStatus | None, reported_at: float | None, current: MonitorStatus, now: float,
    report_interval: float,
) -> bool:
    """Whether ``current`` must be written now, given what was last written (and when)."""
    if reported is None or reported_at is None:
        return True
    if is_transition(reported, current) or reported.domain != current.domain or reported.seal != current.seal:
        return True
    if (reported.paused_vms, reported.paused_vm_count) != (current.paused_vms, current.paused_vm_count):
        return True
    if now - reported_at < report_interval:
        return False
    return _numbers(current) != _numbers(reported)


def _numbers(s: MonitorStatus) -> tuple[Any, ...]:
    # Noise is not news. The read delay alone never causes a write (Prometheus has it live; it rides
    # along with any other write), free space only when it moved by a whole percent of the disk, and
    # an Invalid message ("blocked for N s") at most once per report interval like the numbers.
    free = None
    if s.free_bytes is not None and s.total_bytes:
        free = round(100.0 * s.free_bytes / s.total_bytes)
    return (s.total_bytes, free, s.message if s.state is State.INVALID else "")


def _reason_for_error(result: checker.CheckResult) -> str:
    if result.stage == "confine":
        return Reason.PATH_OUTSIDE_TARGET
    if result.stage == "detect" and result.errno is None:
        return Reason.AMBIGUOUS_DOMAIN
    if result.errno in (errno.ENOENT, errno.ENOTDIR):
        return Reason.TARGET_MISSING
    return Reason.READ_ERROR


def outcome_from_result(result: checker.CheckResult) -> Outcome:
    """Turn a checker answer into an :class:`Outcome` (parsing VDSM metadata when it was read)."""
    if not result.ok:
        return Outcome(OutcomeKind.ERROR, reason=_reason_for_error(result), message=result.error,
                       path=result.path or "", path_kind=result.kind)
    md: domain_metadata.DomainMetadata | None = None
    if result.kind == "metadata":
        if result.truncated:
            return Outcome(OutcomeKind.ERROR, reason=Reason.METADATA_INVALID,
                           message=f"{result.path}: larger than {domain_metadata.MAX_METADATA_BYTES} bytes",
                           path=result.path or "", path_kind=result.kind)
        try:
            md = domain_metadata.parse(result.data or b"")
        except domain_metadata.MetadataError as exc:
            return Outcome(OutcomeKind.ERROR, reason=Reason.METADATA_INVALID, message=f"{result.path}: {exc}",
                           path=result.path or "", path_kind=result.kind)
    return Outcome(
        OutcomeKind.OK,
        read_delay=result.read_delay,
        total_bytes=result.total_bytes,
        free_bytes=result.free_bytes,
        metadata=md,
        path=result.path or "",
        path_kind=result.kind,
    )


# ------------------------------------------------------------------------------------------- target


@dataclasses.dataclass(frozen=True)
class Resolved:
    target: str
    """The directory checked."""
    root: str
    """The read file must resolve under this root (checked in the helper, where hangs are harmless)."""
    depends_on: tuple[tuple[str, str], ...] = ()


class Waiting(Exception):
    """The target is not there yet on this node (connection not Connected, pool not running)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _resolver(module: str) -> Any:
    # Looked up at call time: the connection and pool kinds are sibling modules, and this keeps the
    # monitor independent of their import graph.
    return importlib.import_module(f"reconcilers.{module}").resolve


def resolve_target(spec: Spec, host: Any) -> Resolved:
    """Where to check; raises :class:`Waiting` or InvalidSpec. No storage I/O of its own."""
    t = spec.target
    if t.kind is TargetKind.HOST_PATH:
        roots = [r for r in host.config.allowed_host_paths if paths.is_under(r, t.path)]
        if not roots:
            allowed = ", ".join(host.config.allowed_host_paths) or "none configured"
            raise errors.InvalidSpec(f"{t.path!r} is not under an allowed host path ({allowed})",
                                     field="spec.target.hostPath")
        return Resolved(t.path, roots[0])
    if t.kind is TargetKind.CONNECTION:
        path = _resolver("storage_connection")(host, t.name, t.path or None)
        if path is None:
            raise Waiting("WaitingForConnection", f"StorageConnection {t.name} is not connected on this node")
        return Resolved(path, path, (("StorageConnection", t.name),))
    path = _resolver("storage_pool")(host, t.name)
    if path is None:
        raise Waiting("WaitingForPool", f"StoragePool {t.name} is not running on this node")
    return Resolved(path, path, (("StoragePool", t.name),))


def check_request(spec: Spec, resolved: Resolved, *, create_probe: bool) -> checker.CheckRequest:
    """The first request for a monitor: an explicit probeFile, else detection in the helper."""
    if spec.probe_file:
        return checker.CheckRequest(target=resolved.target, root=resolved.root,
                                    path=os.path.join(resolved.target, spec.probe_file), kind="file",
                                    create_probe=False)
    return checker.CheckRequest(target=resolved.target, root=resolved.root, create_probe=create_probe)


def followup_request(first: checker.CheckRequest, result: checker.CheckResult) -> checker.CheckRequest:
    """After a successful check, read the same file again without detection or creation.

    Created once: if the file vanishes later (the storage was unmounted underneath, leaving an empty
    directory), the next check fails with TargetMissing instead of silently creating a new probe.
    """
    if not result.ok or not result.path:
        return first
    if first.path == result.path and first.kind == result.kind and not first.create_probe:
        return first
    return dataclasses.replace(first, path=result.path, kind=result.kind, create_probe=False)


# ------------------------------------------------------------------------------------------- reconcile


def make_result(spec: Spec, phase: str, ready: bool, reason: str, message: str, *,
            detail: Mapping[str, Any] | None = None, changed: bool = False,
            acts: tuple[actions.Action, ...] = (), retry: bool = False) -> status.NodeResult:
    cond = status.Condition("Ready", status.ConditionStatus.TRUE if ready else status.ConditionStatus.FALSE,
                            reason, message)
    return status.NodeResult(KIND, spec.name, phase, ready, reason, message, DETAIL_KEY,
                             detail=dict(detail or {}), conditions=(cond,), actions=acts, changed=changed,
                             retry=retry)


def _entry(spec: Spec, resolved: Resolved, probe: str) -> ledger.LedgerEntry:
    resource: dict[str, Any] = {"target": resolved.target, "root": resolved.root}
    if probe:
        resource["probeFile"] = probe
    return ledger.LedgerEntry(KIND, spec.name, spec.uid, resource, resolved.depends_on)


def record(host: Any, spec: Spec, resolved: Resolved, probe: str) -> bool:
    """Put the monitor's ledger entry (target, probe file, depends_on); True when it changed."""
    entry = _entry(spec, resolved, probe)
    if host.ledger.get(KIND, spec.name) == entry:
        return False
    host.ledger.put(entry)
    return True


def recorded_probe(host: Any, name: str) -> str:
    entry = host.ledger.get(KIND, name)
    probe = entry.resource.get("probeFile") if entry is not None else None
    return probe if isinstance(probe, str) else ""


def result_for_status(spec: Spec, st: MonitorStatus) -> status.NodeResult:
    """The per-node result of a monitor in a given status (Ready when Healthy)."""
    return make_result(spec, str(st.state), st.state is State.HEALTHY, st.reason, st.message,
                       detail=st.detail(), retry=st.state is State.INVALID)


def run_once(request: checker.CheckRequest, timeout: float, host: Any) -> checker.CheckResult | None:
    """One check through the host's checker, or a private one (closed again) when there is none."""
    shared = getattr(host, "checker", None)
    if isinstance(shared, checker.Checker):
        return shared.check(request, timeout=timeout)
    own = checker.Checker()
    try:
        return own.check(request, timeout=timeout)
    finally:
        own.close()


def reconcile(spec: Spec, host: Any, *, dry_run: bool = False) -> status.NodeResult:
    """Resolve the target, keep it InUse (ledger), and in local mode run one check cycle."""
    try:
        resolved = resolve_target(spec, host)
    except errors.InvalidSpec as exc:
        return make_result(spec, "Failed", False, exc.reason, exc.message)
    except Waiting as exc:
        return make_result(spec, "Pending", False, exc.reason, exc.message, retry=True)
    probe_recorded = recorded_probe(host, spec.name)
    request = check_request(spec, resolved, create_probe=not probe_recorded)
    if probe_recorded and not spec.probe_file:
        request = dataclasses.replace(request, path=probe_recorded, kind="probe")
    if dry_run:
        what = request.path or (
            f"VDSM metadata under {resolved.target}, else {resolved.target}/{request.probe}"
        )
        act = actions.Action("check", f"read 4 KiB of {what} every {spec.interval:g} s", path=resolved.target)
        return make_result(spec, "Pending", False, "DryRun", "would start monitoring", acts=(act,))
    changed = record(host, spec, resolved, probe_recorded)
    result = run_once(request, spec.timeout, host)
    now = time.time()
    if result is None:
        outcome = Outcome(OutcomeKind.TIMEOUT, message=f"Read timeout (no answer in {spec.timeout:g} s)")
    else:
        outcome = outcome_from_result(result)
        if result.ok and result.kind == "probe" and result.path and result.path != probe_recorded:
            changed = record(host, spec, resolved, result.path) or changed
    st = next_status(MonitorStatus(), outcome, spec.thresholds, now)
    return dataclasses.replace(result_for_status(spec, st), changed=changed)


def teardown(
    spec_or_entry: Spec | ledger.LedgerEntry, host: Any, *, force: bool = False, dry_run: bool = False
) -> status.NodeResult:
    """Stop keeping the target InUse and remove the probe file hoststorage created (if reachable).

    ``dry_run`` changes nothing and lists the planned actions (reason ``WouldDetach``)."""
    name = spec_or_entry.name
    spec = spec_or_entry if isinstance(spec_or_entry, Spec) else Spec(name, Target(TargetKind.HOST_PATH))
    entry = host.ledger.get(KIND, name)
    if entry is None:
        return make_result(spec, "Detached", False, "Detached", "not monitored on this host")
    message = "monitor removed"
    probe = entry.resource.get("probeFile")
    root = entry.resource.get("root")
    if dry_run:
        acts = [actions.Action("forget", f"remove {KIND}/{name} from the ledger")]
        if isinstance(probe, str) and probe:
            acts.insert(0, actions.Action("unlink", f"remove the probe file {probe}", path=probe))
        return make_result(
            spec, "Detaching", False, "WouldDetach", "dry run: would stop monitoring", acts=tuple(acts)
        )
    if isinstance(probe, str) and probe and isinstance(root, str):
        removed = _remove_probe(host, root, probe)
        if removed is None:
            # The storage does not answer; a 4 KiB probe left behind is harmless, a hung teardown is not.
            message = f"monitor removed; probe file {probe} left in place (storage did not answer)"
            log.warning("DomainMonitor/%s: %s", name, message)
        elif removed:
            message = f"monitor removed with its probe file {probe}"
    host.ledger.remove(KIND, name)
    return make_result(spec, "Detached", False, "Detached", message, changed=True)


def _remove_probe(host: Any, root: str, probe: str) -> bool | None:
    shared = getattr(host, "checker", None)
    if isinstance(shared, checker.Checker):
        return shared.remove_probe(root, probe, timeout=10.0)
    own = checker.Checker()
    try:
        return own.remove_probe(root, probe, timeout=10.0)
    finally:
        own.close()


def observe(entry: ledger.LedgerEntry, host: Any) -> status.NodeResult:
    """``hoststorage status``: one check of what the ledger records, creating nothing."""
    spec = Spec(entry.name, Target(TargetKind.HOST_PATH))
    target, root = entry.resource.get("target"), entry.resource.get("root")
    if not isinstance(target, str) or not isinstance(root, str):
        return make_result(spec, "Unknown", False, "Recorded", "ledger entry without a target")
    probe = entry.resource.get("probeFile")
    request = checker.CheckRequest(target=target, root=root, create_probe=False)
    if isinstance(probe, str) and probe:
        request = dataclasses.replace(request, path=probe, kind="probe")
    result = run_once(request, DEFAULT_INTERVAL, host)
    outcome = (Outcome(OutcomeKind.TIMEOUT, message="Read timeout") if result is None
               else outcome_from_result(result))
    st = next_status(MonitorStatus(), outcome, spec.thresholds, time.time())
    return result_for_status(spec, st)
