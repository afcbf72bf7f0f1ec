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
import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hostlib import actions, checker, domain_metadata, errors, ledger, paths
from reconcilers import health_policy, kind, selector, spec, status, storage_connection, storage_pool
from reconcilers import host as host_mod

log = logging.getLogger(__name__)

KIND = "DomainMonitor"
DETAIL_KEY = "monitor"
RESULTS = status.Results(KIND, DETAIL_KEY, status.Phase.HEALTHY)
subscribe = kind.no_host_events
SPEC_FIELDS = (
    "nodeSelector", "deletionPolicy", "target", "probeFile", "intervalSeconds", "timeoutSeconds",
    "readDelayWarningSeconds", "freeSpaceWarningPercent", "reportIntervalSeconds", "resumePausedVMs",
    *health_policy.FIELDS,
)

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
    node_selector: selector.NodeSelector = dataclasses.field(default_factory=selector.NodeSelector)
    deletion_policy: str = "Detach"
    """Retain: teardown leaves the probe file hoststorage created in place."""
    probe_file: str = ""
    """Relative to the target; empty means VDSM metadata if found, else hoststorage's own probe file."""
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_INTERVAL
    thresholds: Thresholds = Thresholds()
    report_interval: float = DEFAULT_REPORT_INTERVAL
    resume_paused_vms: bool = True
    """Resume VMs paused on an I/O error with a disk on the target when it turns Healthy (VDSM's way)."""


def _parse_target(raw: object) -> Target:
    field = "spec.target"
    t = spec.mapping(raw, field)
    choices = tuple(k.value for k in TargetKind)
    spec.fields(t, field, allowed=choices)
    which = TargetKind(spec.exactly_one(t, field, choices))
    f = f"{field}.{which.value}"
    if which is TargetKind.CONNECTION:
        ref = spec.mapping(t[which.value], f)
        spec.fields(ref, f, allowed=("name", "path"), required=("name",))
        sub = ref.get("path")
        path = "" if sub in (None, "") else spec.relative_path(sub, f"{f}.path")
        return Target(which, spec.name(ref["name"], f"{f}.name"), path)
    if which is TargetKind.POOL:
        ref = spec.mapping(t[which.value], f)
        spec.fields(ref, f, allowed=("name",), required=("name",))
        return Target(which, spec.name(ref["name"], f"{f}.name"))
    return Target(which, path=spec.abs_path(t[which.value], f))


def parse(obj: Mapping[str, Any]) -> Spec:
    """A DomainMonitor manifest -> :class:`Spec`; InvalidSpec naming the field. No I/O."""
    meta, raw = spec.envelope(obj, KIND)
    spec.fields(raw, "spec", allowed=SPEC_FIELDS, required=("target",))
    target = _parse_target(raw["target"])
    spec.health(raw)
    probe = ""
    if raw.get("probeFile") is not None:
        probe = spec.relative_path(raw["probeFile"], "spec.probeFile")
        if not probe:
            raise spec.invalid("spec.probeFile", "must name a file under the target")

    def seconds(key: str, default: int, bounds: tuple[int, int]) -> int:
        value = raw.get(key)
        return default if value is None else spec.integer(value, f"spec.{key}", low=bounds[0], high=bounds[1])

    interval = seconds("intervalSeconds", DEFAULT_INTERVAL, INTERVAL_RANGE)
    warn = raw.get("readDelayWarningSeconds")
    free = raw.get("freeSpaceWarningPercent")
    resume_vms = spec.boolean(raw.get("resumePausedVMs"), "spec.resumePausedVMs", default=True)
    return Spec(
        name=meta.name,
        target=target,
        uid=meta.uid,
        generation=meta.generation or 0,
        node_selector=spec.node_selector(raw.get("nodeSelector")),
        deletion_policy=spec.deletion_policy(raw),
        probe_file=probe,
        interval=interval,
        timeout=seconds("timeoutSeconds", interval, INTERVAL_RANGE),
        thresholds=Thresholds(
            DEFAULT_READ_DELAY_WARNING
            if warn is None
            else spec.number(warn, "spec.readDelayWarningSeconds", low=0.0, high=3600.0, low_open=True),
            None if free is None else spec.number(free, "spec.freeSpaceWarningPercent", low=0.0, high=100.0),
        ),
        report_interval=seconds("reportIntervalSeconds", DEFAULT_REPORT_INTERVAL, REPORT_INTERVAL_RANGE),
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
    probe_id: tuple[int, int] | None = None
    """(device, inode) of the probe file this check created, if it created one."""


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
    probe_id: tuple[int, int] | None = None
    """(device, inode) of the probe file a check created (kept in the ledger; not reported)."""

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
            probe_id=outcome.probe_id or prev.probe_id,
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
        probe_id=outcome.probe_id or prev.probe_id,
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
        probe_id=result.created,
    )


# ------------------------------------------------------------------------------------------- target


@dataclasses.dataclass(frozen=True)
class Resolved:
    target: str
    """The directory checked."""
    root: str
    """The read file must resolve under this root (checked in the helper, where hangs are harmless)."""
    depends_on: tuple[tuple[str, str], ...] = ()


def resolve_target(mon: Spec, host: host_mod.Host) -> Resolved:
    """Where to check; raises :class:`hostlib.errors.Waiting` (the connection or pool is not there yet)
    or InvalidSpec. No storage I/O of its own."""
    t = mon.target
    if t.kind is TargetKind.HOST_PATH:
        roots = [r for r in host.config.allowed_host_paths if paths.is_under(r, t.path)]
        if not roots:
            allowed = ", ".join(host.config.allowed_host_paths) or "none configured"
            raise errors.InvalidSpec(f"{t.path!r} is not under an allowed host path ({allowed})",
                                     field="spec.target.hostPath")
        paths.refuse_own_dirs(t.path, host.config.own_dirs, field="spec.target.hostPath")
        return Resolved(t.path, roots[0])
    if t.kind is TargetKind.CONNECTION:
        path = storage_connection.require(host, t.name, t.path or None)
        return Resolved(path, path, ((storage_connection.KIND, t.name),))
    path = storage_pool.require(host, t.name)
    return Resolved(path, path, ((storage_pool.KIND, t.name),))


def check_request(
    mon: Spec, resolved: Resolved, *, create_probe: bool, probe: str = checker.PROBE_NAME
) -> checker.CheckRequest:
    """The first request for a monitor: an explicit probeFile, else detection in the helper (creating
    the probe file ``probe`` when no domain is found)."""
    if mon.probe_file:
        return checker.CheckRequest(target=resolved.target, root=resolved.root,
                                    path=os.path.join(resolved.target, mon.probe_file), kind="file",
                                    create_probe=False)
    return checker.CheckRequest(target=resolved.target, root=resolved.root, create_probe=create_probe,
                                probe=probe)


def probe_name(host: host_mod.Host) -> str:
    """This node's probe file name (:func:`hostlib.checker.probe_name` of the node, else the host name)."""
    return checker.probe_name(host.node_name or socket.gethostname())


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


def _entry(mon: Spec, resolved: Resolved, probe: str, probe_id: tuple[int, int] | None) -> ledger.LedgerEntry:
    resource: dict[str, Any] = {"target": resolved.target, "root": resolved.root}
    if probe:
        resource["probeFile"] = probe
    if probe and probe_id is not None:
        resource["probeId"] = list(probe_id)
    if mon.deletion_policy != "Detach":
        resource["deletionPolicy"] = mon.deletion_policy
    return ledger.LedgerEntry(KIND, mon.name, mon.uid, resource, resolved.depends_on)


def record(
    host: host_mod.Host, mon: Spec, resolved: Resolved, probe: str, probe_id: tuple[int, int] | None = None
) -> bool:
    """Put the monitor's ledger entry (target, probe file, depends_on); True when it changed.

    ``probe_id`` is the (device, inode) of a probe file hoststorage created: only then will teardown
    remove it. None keeps the one recorded for the same probe file."""
    if probe_id is None and probe and probe == recorded_probe(host, mon.name):
        probe_id = recorded_probe_id(host, mon.name)
    entry = _entry(mon, resolved, probe, probe_id)
    if host.ledger.get(KIND, mon.name) == entry:
        return False
    host.ledger.put(entry)
    return True


def recorded_probe(host: host_mod.Host, name: str) -> str:
    entry = host.ledger.get(KIND, name)
    probe = entry.resource.get("probeFile") if entry is not None else None
    return probe if isinstance(probe, str) else ""


def recorded_probe_id(host: host_mod.Host, name: str) -> tuple[int, int] | None:
    entry = host.ledger.get(KIND, name)
    return _probe_id(entry.resource) if entry is not None else None


def _probe_id(resource: Mapping[str, Any]) -> tuple[int, int] | None:
    value = resource.get("probeId")
    if isinstance(value, list) and len(value) == 2 and all(type(n) is int for n in value):
        return (value[0], value[1])
    return None


_PHASES = {
    State.UNKNOWN: status.Phase.UNKNOWN,
    State.HEALTHY: status.Phase.HEALTHY,
    State.DEGRADED: status.Phase.DEGRADED,
    State.INVALID: status.Phase.INVALID,
}


def result_for_status(name: str, st: MonitorStatus) -> status.NodeResult:
    """The per-node result of a monitor in a given status (Ready when Healthy)."""
    return RESULTS.make(name, _PHASES[st.state], st.reason, st.message, detail=st.detail(),
                        retry=st.state is State.INVALID)


def run_once(
    request: checker.CheckRequest, timeout: float, host: host_mod.Host
) -> checker.CheckResult | None:
    """One check through a checker of ``host.checker`` (closed again)."""
    one = host.checker()
    try:
        return one.check(request, timeout=timeout)
    finally:
        one.close()


def first_request(mon: Spec, resolved: Resolved, host: host_mod.Host) -> checker.CheckRequest:
    """The request a monitor starts with: the probe file recorded earlier, else :func:`check_request`."""
    recorded = recorded_probe(host, mon.name)
    request = check_request(mon, resolved, create_probe=not recorded, probe=probe_name(host))
    if recorded and not mon.probe_file:
        request = dataclasses.replace(request, path=recorded, kind="probe")
    return request


def reconcile(mon: Spec, host: host_mod.Host, *, dry_run: bool = False) -> status.NodeResult:
    """Resolve the target, keep it InUse (ledger), and in local mode run one check cycle."""
    try:
        resolved = resolve_target(mon, host)
    except errors.HostStorageError as exc:
        return RESULTS.error(mon.name, exc)
    probe_recorded = recorded_probe(host, mon.name)
    request = first_request(mon, resolved, host)
    if dry_run:
        what = request.path or (
            f"VDSM metadata under {resolved.target}, else {resolved.target}/{request.probe}"
        )
        act = actions.Action("check", f"read 4 KiB of {what} every {mon.interval:g} s", path=resolved.target)
        return RESULTS.make(mon.name, status.Phase.PENDING, "DryRun", "would start monitoring", plan=(act,))
    changed = record(host, mon, resolved, probe_recorded)
    result = run_once(request, mon.timeout, host)
    now = time.time()
    if result is None:
        outcome = Outcome(OutcomeKind.TIMEOUT, message=f"Read timeout (no answer in {mon.timeout:g} s)")
    else:
        outcome = outcome_from_result(result)
        if result.ok and result.kind == "probe" and result.path and result.path != probe_recorded:
            changed = record(host, mon, resolved, result.path, result.created) or changed
    st = next_status(MonitorStatus(), outcome, mon.thresholds, now)
    return dataclasses.replace(result_for_status(mon.name, st), changed=changed)


def teardown(
    spec_or_entry: Spec | ledger.LedgerEntry,
    host: host_mod.Host,
    *,
    force: bool = False,
    dry_run: bool = False,
) -> status.NodeResult:
    """Stop keeping the target InUse and remove the probe file hoststorage created (if reachable).

    The probe file is removed only if it is still the one created (its recorded device and inode,
    compared in the helper without following any link); anything else at its name is ``Conflict``,
    nothing removed, and the entry stays until ``force`` forgets it (the host untouched). ``dry_run``
    changes nothing and lists the planned actions (reason ``WouldDetach``)."""

    def prepare(entry: ledger.LedgerEntry) -> status.Undo:
        probe = entry.resource.get("probeFile")
        probe_id = _probe_id(entry.resource)
        root = entry.resource.get("root")
        policy = (
            spec_or_entry.deletion_policy
            if isinstance(spec_or_entry, Spec)
            else str(entry.resource.get("deletionPolicy", "Detach"))
        )

        def plan() -> list[actions.Action]:
            if isinstance(probe, str) and probe and probe_id is not None:
                return [actions.Action("unlink", f"remove the probe file {probe}", path=probe)]
            return []

        def run() -> tuple[bool, str]:
            if not (isinstance(probe, str) and probe):
                return True, "monitor removed"
            left = f"monitor removed; probe file {probe} left in place"
            if probe_id is None:
                return True, f"{left} (hoststorage did not create it)"
            if not isinstance(root, str):
                return True, "monitor removed"
            try:
                removed = _remove_probe(host, root, probe, probe_id)
            except OSError as exc:
                # The storage answered with an error: retried (TeardownFailed) while it may be a blip.
                why = probe_left(entry, host, exc, force=force, now=time.time())
            else:
                if removed:
                    return True, f"monitor removed with its probe file {probe}"
                if removed is not None:
                    return True, "monitor removed"  # it was gone already
                # The storage does not answer; a 4 KiB probe left behind is harmless, a hung teardown
                # is not.
                why = "storage did not answer"
            log.warning("DomainMonitor/%s: %s (%s)", entry.name, left, why)
            return True, f"{left} ({why})"

        return status.Undo(
            detail={}, policy=policy, plan=plan, run=run, would="would stop monitoring",
            retained="deletionPolicy Retain: monitor removed, its probe file left in place",
        )

    return status.teardown(RESULTS, spec_or_entry.name, host.ledger, prepare, dry_run=dry_run, force=force)


PROBE_REMOVE_RETRY_SECONDS = 120.0
"""How long a teardown retries removing a probe file the storage refuses to remove (a gluster brick
stopped for seconds answers ENOTCONN) before the monitor goes anyway and leaves the file: a blip leaves
nothing behind, storage gone for good does not hold the monitor (and its connection, InUse) forever."""


def probe_left(
    entry: ledger.LedgerEntry, host: host_mod.Host, exc: OSError, *, force: bool, now: float
) -> str:
    """A probe removal the storage refused: raise it again (the teardown fails and is retried) until
    :data:`PROBE_REMOVE_RETRY_SECONDS` have passed since the first refusal (recorded in the ledger
    entry), or at once with ``force``; then why the probe file is left in place."""
    first = entry.resource.get("probeRemoveFailedAt")
    if not isinstance(first, (int, float)) or isinstance(first, bool) or first > now:
        first = now
        host.ledger.put(dataclasses.replace(entry, resource={**entry.resource, "probeRemoveFailedAt": now}))
    waited = now - first
    if not force and waited < PROBE_REMOVE_RETRY_SECONDS:
        raise exc
    error = os.strerror(exc.errno) if exc.errno else str(exc.strerror or exc)
    return f"{error}; --force" if force else f"{error}; refused for {waited:.0f} s"


def _remove_probe(host: host_mod.Host, root: str, probe: str, probe_id: tuple[int, int]) -> bool | None:
    one = host.checker()
    try:
        return one.remove_probe(root, probe, expect=probe_id, timeout=10.0)
    finally:
        one.close()


def observe(entry: ledger.LedgerEntry, host: host_mod.Host) -> status.NodeResult:
    """``hoststorage status``: one check of what the ledger records, creating nothing."""
    target, root = entry.resource.get("target"), entry.resource.get("root")
    if not isinstance(target, str) or not isinstance(root, str):
        return RESULTS.make(entry.name, status.Phase.UNKNOWN, "Recorded", "ledger entry without a target")
    probe = entry.resource.get("probeFile")
    request = checker.CheckRequest(target=target, root=root, create_probe=False)
    if isinstance(probe, str) and probe:
        request = dataclasses.replace(request, path=probe, kind="probe")
    result = run_once(request, DEFAULT_INTERVAL, host)
    outcome = (Outcome(OutcomeKind.TIMEOUT, message="Read timeout") if result is None
               else outcome_from_result(result))
    st = next_status(MonitorStatus(), outcome, Thresholds(), time.time())
    return result_for_status(entry.name, st)


if TYPE_CHECKING:  # mypy checks that this module is a Kind
    from reconcilers import domain_monitor as _self  # noqa: PLW0406 - mypy checks this module against Kind

    _kind: kind.Kind[Spec] = _self
