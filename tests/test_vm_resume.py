"""The resume policy (reconcilers.vm_resume), pure: which VMs a recovery resumes, which it holds, why.

Tables with a clock: every VM's pause time and every recovery's proof time are explicit numbers.
"""

from __future__ import annotations

import dataclasses

import pytest

from controller import vm_resume as runtime_side
from hostlib.libvirt_domains import VmRecord
from reconcilers import vm_resume as policy

A, B, C = "/mnt/a", "/mnt/b", "/mnt/c"


def vm(name: str, *disks: str, state: str = "paused", reason: str = "ioerror", io_error: str = "eio",
       since: float | None = 100.0, seq: int = 1) -> VmRecord:
    return VmRecord(f"uuid-{name}", name, state, reason if state == "paused" else "", io_error, tuple(disks),
                    (), since, seq)


def monitors(**states: str) -> dict[str, policy.MonitorView]:
    """a="Healthy" -> monitor a on /mnt/a; a suffix "-optout" turns resumePausedVMs off."""
    out = {}
    for name, st in states.items():
        state, _, flag = st.partition("-")
        out[name] = policy.MonitorView(name, f"/mnt/{name}", state, flag != "optout")
    return out


# --------------------------------------------------------------------------------------- path matching

ON_TARGET = [
    ("/mnt/a/disk.img", "/mnt/a", True),
    ("/mnt/a/sub/dir/disk.img", "/mnt/a", True),
    ("/mnt/a", "/mnt/a", True),
    ("/mnt/a/disk.img", "/mnt/a/", True),
    ("/mnt/a2/disk.img", "/mnt/a", False),
    ("/mnt/ab", "/mnt/a", False),
    ("/mnt/a2", "/mnt/a", False),
    ("/mnt/b/disk.img", "/mnt/a", False),
    ("/mnt/disk.img", "/mnt/a", False),
    ("/mnt/a/../b/disk.img", "/mnt/a", False),
    ("/dev/sdb", "/dev/sdb", True),
    ("/dev/sdb1", "/dev/sdb", False),
]


@pytest.mark.parametrize(("path", "target", "expected"), ON_TARGET)
def test_a_disk_is_on_a_target_by_path_components(path: str, target: str, expected: bool) -> None:
    assert policy.on_target(path, target) is expected


def test_paused_on_lists_io_error_pauses_including_enospc_by_name() -> None:
    vms = [vm("z", f"{A}/z"), vm("y", f"{A}/y", io_error="enospc"), vm("user", f"{A}/u", reason="user"),
           vm("run", f"{A}/r", state="running"), vm("other", f"{B}/o"), vm("near", "/mnt/a2/n")]
    assert [v.name for v in policy.paused_on(A, vms)] == ["y", "z"]


# ------------------------------------------------------------------------------------------------- plan

R = policy.Recovery("a", 1, proven_at=200.0)

PLAN: list[tuple[str, list[VmRecord], dict[str, policy.MonitorView], list[str], list[tuple[str, str]]]] = [
    ("resumes a VM paused on an I/O error on the recovered target",
     [vm("v", f"{A}/v.img")], monitors(a="Healthy"), ["v"], []),
    ("an admin's pause is never a candidate",
     [vm("v", f"{A}/v.img", reason="user")], monitors(a="Healthy"), [], []),
    ("a migration pause is never a candidate",
     [vm("v", f"{A}/v.img", reason="migration")], monitors(a="Healthy"), [], []),
    ("a snapshot pause is never a candidate",
     [vm("v", f"{A}/v.img", reason="snapshot")], monitors(a="Healthy"), [], []),
    ("a running VM is not a candidate",
     [vm("v", f"{A}/v.img", state="running")], monitors(a="Healthy"), [], []),
    ("ENOSPC is held for whoever extends the disk",
     [vm("v", f"{A}/v.img", io_error="enospc")], monitors(a="Healthy"), [], [("v", "NoSpace")]),
    ("a VM on /mnt/a2 is not on /mnt/a",
     [vm("v", "/mnt/a2/v.img")], monitors(a="Healthy", a2="Invalid"), [], []),
    ("a second disk on an Invalid target holds the VM",
     [vm("v", f"{A}/v.img", f"{B}/w.img")], monitors(a="Healthy", b="Invalid"), [],
     [("v", "OtherTargetNotHealthy")]),
    ("a second disk on a Degraded target holds it too (not Healthy)",
     [vm("v", f"{A}/v.img", f"{B}/w.img")], monitors(a="Healthy", b="Degraded"), [],
     [("v", "OtherTargetNotHealthy")]),
    ("a second disk on a monitor still Unknown holds it",
     [vm("v", f"{A}/v.img", f"{B}/w.img")], monitors(a="Healthy", b="Unknown"), [],
     [("v", "OtherTargetNotHealthy")]),
    ("a backing file on an Invalid target holds it",
     [vm("v", f"{A}/overlay.qcow2", f"{C}/base.qcow2")], monitors(a="Healthy", c="Invalid"), [],
     [("v", "OtherTargetNotHealthy")]),
    ("every holder Healthy: resumed",
     [vm("v", f"{A}/v.img", f"{B}/w.img")], monitors(a="Healthy", b="Healthy"), ["v"], []),
    ("a disk on a path no monitor watches does not hold it",
     [vm("v", f"{A}/v.img", "/var/lib/libvirt/images/w.img")], monitors(a="Healthy"), ["v"], []),
    ("the recovered monitor opted out: nothing",
     [vm("v", f"{A}/v.img")], monitors(a="Healthy-optout"), [], []),
    ("another holder opted out: held",
     [vm("v", f"{A}/v.img", f"{B}/w.img")], monitors(a="Healthy", b="Healthy-optout"), [],
     [("v", "OptedOut")]),
    ("the recovered monitor failed again before the batch: nothing",
     [vm("v", f"{A}/v.img")], monitors(a="Invalid"), [], []),
    ("paused after the proof: held",
     [vm("v", f"{A}/v.img", since=200.5)], monitors(a="Healthy"), [], [("v", "PausedAfterRecovery")]),
    ("paused at the proof's very time: resumed",
     [vm("v", f"{A}/v.img", since=200.0)], monitors(a="Healthy"), ["v"], []),
    ("pause time unknown (found by listing): resumed",
     [vm("v", f"{A}/v.img", since=None)], monitors(a="Healthy"), ["v"], []),
    ("several VMs: each on its own merits, by name",
     [vm("c", f"{A}/c"), vm("b", f"{A}/b", f"{B}/b"), vm("a", f"{A}/a"), vm("d", f"{B}/d")],
     monitors(a="Healthy", b="Invalid"), ["a", "c"], [("b", "OtherTargetNotHealthy")]),
]


@pytest.mark.parametrize(("vms", "mons", "resumed", "held"), [c[1:] for c in PLAN], ids=[c[0] for c in PLAN])
def test_plan(vms: list[VmRecord], mons: dict[str, policy.MonitorView], resumed: list[str],
              held: list[tuple[str, str]]) -> None:
    p = policy.plan(vms, mons, R, policy.AttemptLog())
    assert [v.name for v in p.resume] == resumed
    assert [(h.vm.name, str(h.reason)) for h in p.held] == held


def test_held_messages_name_the_blocking_disk_and_monitor() -> None:
    p = policy.plan([vm("v", f"{A}/v.img", f"{B}/w.img")], monitors(a="Healthy", b="Invalid"), R,
                    policy.AttemptLog())
    assert p.held[0].message == "disk /mnt/b/w.img is on monitor b, which is Invalid"
    p = policy.plan([vm("v", f"{A}/v.img", f"{B}/w.img")], monitors(a="Healthy", b="Healthy-optout"), R,
                    policy.AttemptLog())
    assert p.held[0].message == "disk /mnt/b/w.img is on monitor b, which has resumePausedVMs: false"


def test_skipped_plans_say_why() -> None:
    assert "gone" in policy.plan([], {}, R, policy.AttemptLog()).skipped
    assert "resumePausedVMs: false" in policy.plan([], monitors(a="Healthy-optout"), R,
                                                   policy.AttemptLog()).skipped
    assert "Invalid again" in policy.plan([], monitors(a="Invalid"), R, policy.AttemptLog()).skipped
    assert policy.plan([], monitors(a="Healthy"), R, policy.AttemptLog()).skipped == ""


# ----------------------------------------------------------------------------------------- attempts


def test_at_most_one_try_per_recovery_and_never_twice_for_a_resumed_pause() -> None:
    log = policy.AttemptLog()
    mons = monitors(a="Healthy")
    v = vm("v", f"{A}/v.img", since=10.0, seq=1)
    r1 = policy.Recovery("a", 1, proven_at=20.0)
    assert [x.name for x in policy.plan([v], mons, r1, log).resume] == ["v"]
    log.note(v, r1, ok=False)  # the resume failed
    # The same recovery again (a duplicate trigger): not a second try.
    p = policy.plan([v], mons, r1, log)
    assert (p.resume, [str(h.reason) for h in p.held]) == ((), ["AlreadyTried"])
    # The next recovery tries again.
    r2 = policy.Recovery("a", 2, proven_at=40.0)
    assert [x.name for x in policy.plan([v], mons, r2, log).resume] == ["v"]
    log.note(v, r2, ok=True)
    # A stale record of the same pause after a success: never resumed twice.
    r3 = policy.Recovery("a", 3, proven_at=60.0)
    p = policy.plan([v], mons, r3, log)
    assert (p.resume, [str(h.reason) for h in p.held]) == ((), ["AlreadyResumed"])
    # It paused again (a new pause): resumed by the next recovery.
    again = dataclasses.replace(v, pause_seq=2, paused_since=55.0)
    assert [x.name for x in policy.plan([again], mons, r3, log).resume] == ["v"]
    # Another monitor's recovery is another recovery.
    log.note(again, r3, ok=False)
    other = policy.Recovery("b", 1, proven_at=70.0)
    both = monitors(a="Healthy", b="Healthy")
    two = dataclasses.replace(again, disks=(f"{A}/v.img", f"{B}/w.img"))
    assert [x.name for x in policy.plan([two], both, other, log).resume] == ["v"]


def test_pruned_vms_start_afresh() -> None:
    log = policy.AttemptLog()
    v = vm("v", f"{A}/v.img")
    log.note(v, R, ok=True)
    log.prune([])
    assert [x.name for x in policy.plan([v], monitors(a="Healthy"), R, log).resume] == ["v"]


def test_listed_is_bounded() -> None:
    assert policy.listed(["a", "b"]) == "a, b"
    names = [f"vm{i}" for i in range(13)]
    assert policy.listed(names) == ", ".join(names[:10]) + " and 3 more"
    assert policy.listed(names, 3) == "vm0, vm1, vm2 and 10 more"


# -------------------------------------------------------------------------------------- batch -> Event

EVENTS = [
    ("resumed only", {"resumed": ("a", "b")}, ("Normal", "VMsResumed"),
     "storage Healthy again; resumed 2 VM(s) paused on an I/O error: a, b"),
    ("a failure wins", {"resumed": ("a",), "failed": (("b", "libvirt resume: boom"),)},
     ("Warning", "VMResumeFailed"),
     "storage Healthy again; resumed 1 VM(s) paused on an I/O error: a; failed to resume 1: "
     "b (libvirt resume: boom)"),
    ("held only", {"held": (("c", "OtherTargetNotHealthy", "disk /x is on monitor m, which is Invalid"),)},
     ("Warning", "VMsLeftPaused"),
     "storage Healthy again; left 1 paused: c (OtherTargetNotHealthy: disk /x is on monitor m, which is "
     "Invalid)"),
    ("resumed meanwhile", {"skipped": (("d", "running"),)}, ("Normal", "NothingToResume"),
     "storage Healthy again; 1 no longer paused on an I/O error: d"),
]


@pytest.mark.parametrize(("fields", "kind", "message"), [c[1:] for c in EVENTS], ids=[c[0] for c in EVENTS])
def test_batch_event(fields: dict[str, tuple[object, ...]], kind: tuple[str, str], message: str) -> None:
    batch = runtime_side.ResumeBatch("mon", 1, 0.0, 0.0, **fields)  # type: ignore[arg-type]
    event_type, reason, text = batch.event()
    assert (event_type, reason) == kind
    assert text == message


def test_batch_event_message_is_bounded() -> None:
    names = tuple(f"vm-{i:04d}" for i in range(500))
    batch = runtime_side.ResumeBatch("mon", 1, 0.0, 0.0, resumed=names,
                                     held=tuple((n, "OptedOut", "x" * 50) for n in names))
    _, _, text = batch.event()
    assert "resumed 500 VM(s)" in text and "and 490 more" in text and "left 500 paused" in text
    assert len(text) < 1024
