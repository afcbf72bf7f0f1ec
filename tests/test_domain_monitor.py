"""DomainMonitor: spec parsing (bad input -> InvalidSpec), the pure state machine and the report rule."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from controller import monitoring
from hostlib import domain_metadata, errors, ledger
from reconcilers import domain_monitor as dmon

SD = "3b5b1f5e-0d6c-4a3c-9a8a-2c0f6b1e9d11"


def manifest(spec: dict[str, Any], name: str = "mon") -> dict[str, Any]:
    return {"apiVersion": "hoststorage.io/v1alpha1", "kind": "DomainMonitor", "metadata": {"name": name},
            "spec": spec}


# ------------------------------------------------------------------------------------------- parse


def test_parse_applies_the_documented_defaults() -> None:
    spec = dmon.parse(manifest({"target": {"hostPath": "/srv/data"}}))
    assert spec.target == dmon.Target(dmon.TargetKind.HOST_PATH, path="/srv/data")
    assert (spec.interval, spec.timeout, spec.report_interval) == (10, 10, 300)
    assert spec.thresholds == dmon.Thresholds(5.0, None)
    assert spec.probe_file == ""


def test_timeout_defaults_to_the_interval() -> None:
    spec = dmon.parse(manifest({"target": {"poolRef": {"name": "p"}}, "intervalSeconds": 30}))
    assert spec.timeout == 30


def test_connection_ref_with_sub_path() -> None:
    spec = dmon.parse(manifest({"target": {"connectionRef": {"name": "nfs1", "path": "a/b/"}},
                                "probeFile": "dir/probe", "freeSpaceWarningPercent": 10,
                                "readDelayWarningSeconds": 0.5}))
    assert spec.target == dmon.Target(dmon.TargetKind.CONNECTION, "nfs1", "a/b")
    assert spec.probe_file == "dir/probe"
    assert spec.thresholds == dmon.Thresholds(0.5, 10.0)


T = {"hostPath": "/srv/data"}
BAD: list[tuple[str, dict[str, Any], str]] = [
    ("no spec", {}, "spec"),
    ("no target", {"intervalSeconds": 10}, "spec.target"),
    ("two targets", {"target": {"hostPath": "/a", "poolRef": {"name": "p"}}}, "exactly one"),
    ("empty target", {"target": {}}, "exactly one"),
    ("unknown target kind", {"target": {"nfs": {}}}, "unknown field"),
    ("relative hostPath", {"target": {"hostPath": "srv"}}, "absolute"),
    ("hostPath traversal", {"target": {"hostPath": "/srv/../etc"}}, "'..'"),
    ("hostPath NUL", {"target": {"hostPath": "/srv/\0x"}}, "NUL"),
    ("sub-path traversal", {"target": {"connectionRef": {"name": "c", "path": "../../etc"}}}, "'..'"),
    ("sub-path absolute", {"target": {"connectionRef": {"name": "c", "path": "/etc"}}}, "relative"),
    ("sub-path newline", {"target": {"connectionRef": {"name": "c", "path": "a\nb"}}}, "control"),
    ("bad connection name", {"target": {"connectionRef": {"name": "Bad_Name"}}}, "not a valid name"),
    ("pool without name", {"target": {"poolRef": {}}}, "poolRef.name"),
    ("probeFile traversal", {"target": T, "probeFile": "../../etc/shadow"}, "'..'"),
    ("probeFile absolute", {"target": T, "probeFile": "/etc/shadow"}, "relative"),
    ("probeFile dot", {"target": T, "probeFile": "."}, "must name a file"),
    ("interval zero", {"target": T, "intervalSeconds": 0}, "out of range 1..3600"),
    ("interval negative", {"target": T, "intervalSeconds": -5}, "out of range"),
    ("interval huge", {"target": T, "intervalSeconds": 86400}, "out of range"),
    ("interval fraction", {"target": T, "intervalSeconds": 1.5}, "must be an integer, got number"),
    ("interval string", {"target": T, "intervalSeconds": "10"}, "must be an integer, got string"),
    ("interval bool", {"target": T, "intervalSeconds": True}, "must be an integer, got boolean"),
    ("timeout zero", {"target": T, "timeoutSeconds": 0}, "spec.timeoutSeconds"),
    ("delay warning zero", {"target": T, "readDelayWarningSeconds": 0}, "out of range"),
    ("delay warning nan", {"target": T, "readDelayWarningSeconds": float("nan")}, "out of range"),
    ("free percent over 100", {"target": T, "freeSpaceWarningPercent": 101}, "out of range"),
    ("free percent negative", {"target": T, "freeSpaceWarningPercent": -1}, "out of range"),
    ("report interval zero", {"target": T, "reportIntervalSeconds": 0}, "out of range"),
    ("unknown field", {"target": T, "intervalSecs": 5}, "unknown field"),
    ("selector not a map", {"target": T, "nodeSelector": ["a"]}, "spec.nodeSelector"),
    ("selector operator",
     {"target": T, "nodeSelector": {"matchExpressions": [{"key": "a", "operator": "X"}]}},
     "'X' is not one of In, NotIn, Exists, DoesNotExist"),
    ("selector Exists with values",
     {"target": T, "nodeSelector": {"matchExpressions": [
         {"key": "a", "operator": "Exists", "values": ["v"]}]}},
     "must be empty for operator Exists"),
]


@pytest.mark.parametrize(("spec", "message"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_specs_are_invalid_spec(spec: dict[str, Any], message: str) -> None:
    obj = manifest(spec)
    if not spec:
        del obj["spec"]
    with pytest.raises(errors.InvalidSpec, match=message.replace("(", r"\(").replace(".", r"\.")):
        dmon.parse(obj)


def test_bad_name_is_invalid_spec() -> None:
    with pytest.raises(errors.InvalidSpec, match=r"metadata\.name"):
        dmon.parse(manifest({"target": T}, name="../x"))


# ------------------------------------------------------------------------------------ state machine

TH = dmon.Thresholds(read_delay_warning=1.0, free_space_warning_percent=10.0)
GIB = 2**30
OK = dmon.Outcome(dmon.OutcomeKind.OK, read_delay=0.001, total_bytes=100 * GIB, free_bytes=50 * GIB)
SLOW = dataclasses.replace(OK, read_delay=2.0)
FULL = dataclasses.replace(OK, free_bytes=5 * GIB)
SLOW_AND_FULL = dataclasses.replace(SLOW, free_bytes=5 * GIB)
ERR = dmon.Outcome(dmon.OutcomeKind.ERROR, reason="ReadError",
                   message="read /m/p: Transport endpoint is not connected")
TIMEOUT = dmon.Outcome(dmon.OutcomeKind.TIMEOUT, message="Read timeout", blocked_seconds=10)
BLOCKED = dmon.Outcome(dmon.OutcomeKind.BLOCKED, blocked_seconds=20)
SEALED = dataclasses.replace(OK, metadata=domain_metadata.parse(domain_metadata.dump(
    {"SDUUID": SD, "VERSION": "5", "TYPE": "GLUSTERFS", "CLASS": "Data", "ROLE": "Master",
     "POOL_UUID": "", "DESCRIPTION": "gluster-data"})))
BROKEN = dataclasses.replace(OK, metadata=domain_metadata.parse(
    domain_metadata.dump({"SDUUID": SD, "VERSION": "5"}).replace(b"VERSION=5", b"VERSION=4")))

UNKNOWN = dmon.MonitorStatus()
HEALTHY = dmon.next_status(UNKNOWN, OK, TH, 100.0)
INVALID = dmon.next_status(HEALTHY, TIMEOUT, TH, 110.0)

STEPS: list[tuple[str, dmon.MonitorStatus, dmon.Outcome, str, str, str | None, int]] = [
    # name, previous, outcome, state, reason, message part, consecutive failures
    ("first ok is healthy", UNKNOWN, OK, "Healthy", "CheckSucceeded", "read delay", 0),
    ("slow read degrades", HEALTHY, SLOW, "Degraded", "ReadDelayHigh", "over 1 s", 0),
    ("low space degrades", HEALTHY, FULL, "Degraded", "LowFreeSpace", "5.0% is under 10%", 0),
    ("both name both", HEALTHY, SLOW_AND_FULL, "Degraded", "ReadDelayHigh", "free space", 0),
    ("error invalidates", HEALTHY, ERR, "Invalid", "ReadError", "Transport endpoint", 1),
    ("timeout invalidates", HEALTHY, TIMEOUT, "Invalid", "ReadTimeout", "Read timeout", 1),
    ("blocked stays invalid", INVALID, BLOCKED, "Invalid", "ReadTimeout", "blocked for 20 s", 2),
    ("recovery resets failures", INVALID, OK, "Healthy", "CheckSucceeded", None, 0),
    ("first result an error", UNKNOWN, ERR, "Invalid", "ReadError", None, 1),
    ("vdsm domain found", UNKNOWN, SEALED, "Healthy", "CheckSucceeded", None, 0),
    ("broken seal invalidates", HEALTHY, BROKEN, "Invalid", "BrokenSeal", "does not match", 1),
]


@pytest.mark.parametrize(("prev", "outcome", "state", "reason", "message", "failures"),
                         [s[1:] for s in STEPS], ids=[s[0] for s in STEPS])
def test_next_status(prev: dmon.MonitorStatus, outcome: dmon.Outcome, state: str, reason: str,
                     message: str | None, failures: int) -> None:
    after = dmon.next_status(prev, outcome, TH, 200.0)
    assert (after.state, after.reason, after.consecutive_failures) == (state, reason, failures)
    if message is not None:
        assert message in after.message
    assert after.last_check == 200.0
    assert after.since == (prev.since if prev.state == after.state else 200.0)


def test_unknown_until_a_real_result() -> None:
    st = dmon.MonitorStatus()
    assert st.state is dmon.State.UNKNOWN and not st.valid
    assert st.detail()["reason"] == "NoResultYet"


def test_vdsm_fields_reach_the_detail_block() -> None:
    detail = dmon.next_status(UNKNOWN, SEALED, TH, 1.0).detail()
    assert detail["sdUUID"] == SD
    assert (detail["version"], detail["type"], detail["class"], detail["role"]) == (
        "5", "GLUSTERFS", "Data", "Master")
    assert detail["description"] == "gluster-data"
    assert detail["metadataChecksum"] == "Ok"
    assert detail["totalBytes"] == 100 * GIB and detail["freeBytes"] == 50 * GIB
    assert detail["since"] == "1970-01-01T00:00:01Z"


def test_failure_keeps_the_last_known_numbers() -> None:
    after = dmon.next_status(HEALTHY, ERR, TH, 120.0)
    assert (after.total_bytes, after.free_bytes) == (HEALTHY.total_bytes, HEALTHY.free_bytes)


def test_no_free_space_threshold_means_never_low_space() -> None:
    after = dmon.next_status(UNKNOWN, FULL, dmon.Thresholds(1.0, None), 1.0)
    assert after.state is dmon.State.HEALTHY


# -------------------------------------------------------------------------------------- report rule


def test_report_rule_transitions_at_once_numbers_rarely_noise_never() -> None:
    first = dmon.next_status(UNKNOWN, OK, TH, 0.0)
    assert dmon.report_due(None, None, first, 0.0, 300)
    # Same state, read delay wobbling: never due, not even after the report interval.
    wobble = dmon.next_status(first, dataclasses.replace(OK, read_delay=0.0012), TH, 10.0)
    assert not dmon.report_due(first, 0.0, wobble, 10.0, 300)
    assert not dmon.report_due(first, 0.0, wobble, 1000.0, 300)
    # A real change of numbers (free space down 20 points): due only once the interval has passed.
    moved = dmon.next_status(first, dataclasses.replace(OK, free_bytes=30 * GIB), TH, 20.0)
    assert not dmon.report_due(first, 0.0, moved, 20.0, 300)
    assert dmon.report_due(first, 0.0, moved, 300.0, 300)
    # A transition and a threshold crossing: at once.
    slow = dmon.next_status(first, SLOW, TH, 30.0)
    assert dmon.report_due(first, 0.0, slow, 30.0, 300)
    full = dmon.next_status(slow, SLOW_AND_FULL, TH, 40.0)
    assert not dmon.is_transition(slow, full)  # same reason first: ReadDelayHigh
    lowonly = dmon.next_status(slow, FULL, TH, 50.0)
    assert dmon.is_transition(slow, lowonly) and dmon.report_due(slow, 30.0, lowonly, 50.0, 300)


def test_blocked_messages_refresh_at_most_once_per_report_interval() -> None:
    blocked = dmon.next_status(INVALID, BLOCKED, TH, 120.0)
    assert not dmon.report_due(INVALID, 110.0, blocked, 120.0, 300)
    assert dmon.report_due(INVALID, 110.0, blocked, 410.0, 300)


# ------------------------------------------------------------------------------ reconcile (no storage)


@dataclasses.dataclass
class FakeConfig:
    allowed_host_paths: tuple[str, ...] = ("/srv/allowed",)
    own_dirs: tuple[str, ...] = ("/srv/allowed/state", "/srv/allowed/state/mnt")


@dataclasses.dataclass
class FakeHost:
    """Replaces reconcilers.host.Host: the config, a real Ledger in a temp dir, no checker."""

    config: FakeConfig
    ledger: ledger.Ledger
    checker: Any = None
    node_name: str = "node-a"


@pytest.mark.parametrize("path", ["/srv/allowed", "/srv/allowed/state", "/srv/allowed/state/mnt/x"])
def test_host_path_that_is_holds_or_lies_in_the_state_dir_is_invalid_spec(tmp_path: Any, path: str) -> None:
    host = FakeHost(FakeConfig(), ledger.Ledger(str(tmp_path)))
    result = dmon.reconcile(dmon.parse(manifest({"target": {"hostPath": path}})), host)
    assert (result.phase, result.reason) == ("Failed", "InvalidSpec")
    assert "hoststorage's own directory" in result.message and host.ledger.entries() == []


def test_host_path_outside_allowed_roots_is_invalid_spec(tmp_path: Any) -> None:
    host = FakeHost(FakeConfig(), ledger.Ledger(str(tmp_path)))
    spec = dmon.parse(manifest({"target": {"hostPath": "/srv/allowedX/data"}}))
    result = dmon.reconcile(spec, host)
    assert (result.phase, result.reason) == ("Failed", "InvalidSpec")
    assert "not under an allowed host path" in result.message
    assert host.ledger.entries() == []


def test_waiting_for_connection_and_pool(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost(FakeConfig(), ledger.Ledger(str(tmp_path)))
    # Neither is there on this host: the connection and the pool have no ledger entries.
    conn = dmon.reconcile(dmon.parse(manifest({"target": {"connectionRef": {"name": "c1"}}})), host)
    pool = dmon.reconcile(dmon.parse(manifest({"target": {"poolRef": {"name": "p1"}}})), host)
    assert (conn.phase, conn.reason, conn.ready) == ("Pending", "WaitingForConnection", False)
    assert (pool.phase, pool.reason) == ("Pending", "WaitingForPool")
    assert host.ledger.entries() == []


def test_dry_run_plans_a_check_and_changes_nothing(tmp_path: Any) -> None:
    host = FakeHost(FakeConfig((str(tmp_path),)), ledger.Ledger(str(tmp_path / "state")))
    spec = dmon.parse(manifest({"target": {"hostPath": str(tmp_path / "d")}}))
    result = dmon.reconcile(spec, host, dry_run=True)
    assert [a.verb for a in result.actions] == ["check"]
    assert host.ledger.entries() == []
    assert not (tmp_path / "d").exists()


def test_the_created_probe_ident_rides_through_the_state_machine_and_is_never_reported() -> None:
    ok = dmon.Outcome(dmon.OutcomeKind.OK, read_delay=0.001, path="/t/p", path_kind="probe", probe_id=(7, 9))
    first = dmon.next_status(dmon.MonitorStatus(), ok, dmon.Thresholds(), 100.0)
    assert first.probe_id == (7, 9)
    err = dmon.Outcome(dmon.OutcomeKind.ERROR, message="EIO")
    failed = dmon.next_status(first, err, dmon.Thresholds(), 101.0)
    assert failed.probe_id == (7, 9)
    assert "probeId" not in str(first.detail()) and "7" not in str(first.detail().get("path"))


def test_record_keeps_the_ident_of_the_same_probe_and_drops_it_for_another(tmp_path: Any) -> None:
    host = FakeHost(FakeConfig((str(tmp_path),)), ledger.Ledger(str(tmp_path / "state")))
    spec = dmon.parse(manifest({"target": {"hostPath": str(tmp_path / "d")}}))
    resolved = dmon.Resolved(str(tmp_path / "d"), str(tmp_path))
    dmon.record(host, spec, resolved, "/t/p", (7, 9))
    assert dmon.recorded_probe_id(host, spec.name) == (7, 9)
    dmon.record(host, spec, resolved, "/t/p")  # the agent's periodic record: the ident stays
    assert dmon.recorded_probe_id(host, spec.name) == (7, 9)
    dmon.record(host, spec, resolved, "/t/other")  # a probe we did not create: no ident, never removed
    assert dmon.recorded_probe_id(host, spec.name) is None


def test_teardown_of_a_probe_without_a_recorded_ident_removes_nothing(tmp_path: Any) -> None:
    host = FakeHost(FakeConfig((str(tmp_path),)), ledger.Ledger(str(tmp_path / "state")))
    spec = dmon.parse(manifest({"target": {"hostPath": str(tmp_path / "d")}}))
    dmon.record(host, spec, dmon.Resolved(str(tmp_path / "d"), str(tmp_path)), "/t/p")
    result = dmon.teardown(spec, host)  # no checker: a removal attempt would fail loudly
    assert (result.phase, result.reason) == ("Detached", "Detached")
    assert "did not create it" in result.message and host.ledger.entries() == []


class RefusingChecker:
    """The removal half of :class:`hostlib.checker.Checker`: answers each remove_probe with the next of
    ``answers`` (an OSError is raised, as the real one raises the storage's error; pinned in
    test_checker.py::test_remove_probe_raises_the_error_the_storage_answers)."""

    def __init__(self, answers: list[bool | OSError | None]) -> None:
        self.answers = answers
        self.calls = 0

    def remove_probe(self, root: str, path: str, *, expect: tuple[int, int], timeout: float) -> bool | None:
        answer = self.answers[self.calls]
        self.calls += 1
        if isinstance(answer, OSError):
            raise answer
        return answer

    def close(self) -> None:
        pass


Recorded = tuple[FakeHost, dmon.Spec, RefusingChecker]


def _recorded(tmp_path: Any, answers: list[bool | OSError | None]) -> Recorded:
    refusing = RefusingChecker(answers)
    state = ledger.Ledger(str(tmp_path / "state"))
    host = FakeHost(FakeConfig((str(tmp_path),)), state, checker=lambda: refusing)
    spec = dmon.parse(manifest({"target": {"hostPath": str(tmp_path / "d")}}))
    dmon.record(host, spec, dmon.Resolved(str(tmp_path / "d"), str(tmp_path)), "/t/p", (7, 9))
    return host, spec, refusing


ENOTCONN = OSError(107, "remove /t/p: Transport endpoint is not connected")  # what the helper answers


def test_a_probe_removal_the_storage_refuses_is_retried_then_succeeds(tmp_path: Any) -> None:
    host, spec, refusing = _recorded(tmp_path, [ENOTCONN, ENOTCONN, True])
    for _ in range(2):  # a gluster brick stopped for seconds: the teardown fails and is retried
        result = dmon.teardown(spec, host)
        assert (result.phase, result.reason, result.retry) == ("TeardownFailed", "HostError", True)
        assert "Transport endpoint is not connected" in result.message and "/t/p" in result.message
        assert host.ledger.get(dmon.KIND, spec.name) is not None
    result = dmon.teardown(spec, host)
    assert (result.phase, result.message) == ("Detached", "monitor removed with its probe file /t/p")
    assert host.ledger.entries() == [] and refusing.calls == 3


def test_a_probe_removal_refused_past_the_retry_window_leaves_the_file_and_goes(tmp_path: Any) -> None:
    host, spec, _ = _recorded(tmp_path, [ENOTCONN, ENOTCONN, ENOTCONN])
    assert dmon.teardown(spec, host).phase == "TeardownFailed"
    entry = host.ledger.get(dmon.KIND, spec.name)
    assert entry is not None
    first = entry.resource["probeRemoveFailedAt"]
    # The first refusal's time is kept across attempts; the window is counted from it.
    assert dmon.teardown(spec, host).phase == "TeardownFailed"
    entry = host.ledger.get(dmon.KIND, spec.name)
    assert entry is not None and entry.resource["probeRemoveFailedAt"] == first
    host.ledger.put(dataclasses.replace(
        entry, resource={**entry.resource, "probeRemoveFailedAt": first - dmon.PROBE_REMOVE_RETRY_SECONDS}))
    result = dmon.teardown(spec, host)
    assert (result.phase, result.reason) == ("Detached", "Detached")
    left = "probe file /t/p left in place (Transport endpoint is not connected; refused for 12"
    assert left in result.message
    assert host.ledger.entries() == []


def test_force_leaves_a_refused_probe_at_once(tmp_path: Any) -> None:
    host, spec, _ = _recorded(tmp_path, [ENOTCONN])
    result = dmon.teardown(spec, host, force=True)
    assert (result.phase, result.reason) == ("Detached", "Detached")
    assert "left in place (Transport endpoint is not connected; --force)" in result.message


@pytest.mark.parametrize(
    ("first", "now", "retried"),
    [
        (1000.0, 1000.0, True),
        (1000.0, 1000.0 + dmon.PROBE_REMOVE_RETRY_SECONDS - 0.001, True),
        (1000.0, 1000.0 + dmon.PROBE_REMOVE_RETRY_SECONDS, False),  # the window ends at its bound
        (5000.0, 1000.0, True),  # a first refusal "in the future" (a clock set back): counted from now
        ("soon", 1000.0, True),  # a malformed record: counted from now
    ],
)
def test_probe_left_counts_the_window_from_the_first_refusal(
    tmp_path: Any, first: Any, now: float, retried: bool
) -> None:
    host = FakeHost(FakeConfig((str(tmp_path),)), ledger.Ledger(str(tmp_path / "state")))
    entry = ledger.LedgerEntry(dmon.KIND, "mon", resource={"probeFile": "/t/p", "probeRemoveFailedAt": first})
    host.ledger.put(entry)
    if retried:
        with pytest.raises(OSError, match="not connected"):
            dmon.probe_left(entry, host, ENOTCONN, force=False, now=now)
    else:
        assert dmon.probe_left(entry, host, ENOTCONN, force=False, now=now) == (
            "Transport endpoint is not connected; refused for 120 s")
    assert dmon.probe_left(entry, host, ENOTCONN, force=True, now=now).endswith("; --force")


def test_a_probe_the_storage_does_not_answer_for_is_left_at_once(tmp_path: Any) -> None:
    host, spec, _ = _recorded(tmp_path, [None])
    result = dmon.teardown(spec, host)
    assert (result.phase, result.message) == (
        "Detached", "monitor removed; probe file /t/p left in place (storage did not answer)")


def test_a_created_probe_is_recorded_while_the_target_cannot_be_resolved(tmp_path: Any) -> None:
    """The chaos soak (issue 14, seed 1491245078): a probe created just before the monitor's pool went
    away (libvirtd restarted, the pool restarted) lost its ident, and the teardown left the file as
    not hoststorage's. The ident is recorded against the target the ledger entry holds."""
    host = FakeHost(FakeConfig((str(tmp_path),)), ledger.Ledger(str(tmp_path / "state")))
    spec = dmon.parse(manifest({"target": {"poolRef": {"name": "gone"}}}))  # resolving it fails here
    with pytest.raises(errors.HostStorageError):
        dmon.resolve_target(spec, host)  # type: ignore[arg-type]
    dmon.record(host, spec, dmon.Resolved("/pools/p", "/pools/p"), "")  # type: ignore[arg-type]
    created = dmon.MonitorStatus(path="/pools/p/probe", path_kind="probe", probe_id=(7, 9))
    monitoring.record_probe(host, spec, created)
    entry = host.ledger.get(dmon.KIND, spec.name)
    assert entry is not None and entry.resource["probeId"] == [7, 9]
    assert (entry.resource["target"], entry.resource["root"]) == ("/pools/p", "/pools/p")
    # read again later (not created): the ident stays; a new file at the same name replaces it
    monitoring.record_probe(host, spec, dataclasses.replace(created, probe_id=None))
    assert dmon.recorded_probe_id(host, spec.name) == (7, 9)  # type: ignore[arg-type]
    monitoring.record_probe(host, spec, dataclasses.replace(created, probe_id=(7, 10)))
    assert dmon.recorded_probe_id(host, spec.name) == (7, 10)  # type: ignore[arg-type]
    # another file read (not created) is recorded without an ident: never removed
    monitoring.record_probe(host, spec, dmon.MonitorStatus(path="/pools/p/other", path_kind="probe"))
    assert dmon.recorded_probe_id(host, spec.name) is None  # type: ignore[arg-type]
