"""The chaos soak's pure half (bench/soak_model.py): the schedule replays from its seed, and every
invariant catches a violation planted in otherwise good facts."""

from __future__ import annotations

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "bench"))

import soak_model as model

READY = {"StorageConnection": frozenset({"Connected"}), "DomainMonitor": frozenset({"Healthy"})}


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    a = model.schedule(14, 30, rate=12)
    assert a == model.schedule(14, 30, rate=12)
    assert a != model.schedule(15, 30, rate=12)
    # a longer run replays the shorter one's schedule first
    assert model.schedule(14, 60, rate=12)[: len(a)] == a


def test_the_schedule_mixes_every_operation_and_fault_within_bounds() -> None:
    steps = model.schedule(7, 200, rate=12)
    kinds = {s.what for s in steps}
    assert kinds == set(model.OPERATIONS) | set(model.FAULTS)
    assert all(s.burst in range(200) and 0 <= s.at <= 20 for s in steps)
    assert {len([s for s in steps if s.burst == b]) for b in range(200)} == {4}  # 12 a minute, 20 s bursts
    outages = [int(s.arg("seconds")) for s in steps if s.what == "api-outage"]
    assert min(outages) >= 5 and max(outages) <= 30
    assert all(s.arg("slot") in model.SLOTS for s in steps if s.what in ("create", "change", "delete"))
    assert 0.2 < sum(model.kind_of(s.what) == "fault" for s in steps) / len(steps) < 0.45


def test_double_mounts_stacked_or_one_source_twice() -> None:
    good = [model.Mount("a", "/m/a/x", "/dev/loop1"), model.Mount("b", "/m/b/x", "/dev/loop1")]
    assert model.double_mounts(good) == []  # one source on two nodes is the shared-source harness
    stacked = [*good, model.Mount("a", "/m/a/x", "/dev/loop1")]
    assert [v.invariant for v in model.double_mounts(stacked)] == ["double-mount"]
    twice = [*good, model.Mount("a", "/m/a/y", "/dev/loop1")]
    assert "loop1 mounted on" in model.double_mounts(twice)[0].detail


def test_unwanted_and_missing_host_things() -> None:
    assert model.unwanted("mount", {"a:/x"}, {"a:/x"}) == []
    found = model.unwanted("mount", {"a:/x", "a:/leak"}, {"a:/x", "a:/gone"})
    assert [str(v) for v in found] == ["unwanted-mount: a:/leak", "missing-mount: a:/gone"]


def test_mounts_outside_the_roots_and_touched_bystanders() -> None:
    bases = ["/w/node-a/mnt", "/w/node-b/mnt/"]
    inside = ["/w/node-a/mnt/x", "/w/node-b/mnt/pools/p", "/srv/elsewhere"]  # not in the world: not ours
    assert model.outside_roots("/w", inside, bases) == []
    found = model.outside_roots("/w/", [*inside, "/w/hostpaths/x", "/w/node-a/mntx", "/w/node-a/mnt"], bases)
    assert [v.detail for v in found] == ["/w/hostpaths/x", "/w/node-a/mnt", "/w/node-a/mntx"]
    assert {v.invariant for v in found} == {"mount-outside-roots"}
    assert model.touched([]) == []
    found = model.touched(["disk.img: a -> None"])
    assert [str(v) for v in found] == ["outside-touched: disk.img: a -> None"]


def test_ledger_mismatch_both_ways() -> None:
    assert model.ledger_mismatch("a", [("K", "x")], [("K", "x")]) == []
    found = model.ledger_mismatch("a", [("K", "x"), ("K", "old")], [("K", "x"), ("K", "new")])
    assert [v.invariant for v in found] == ["ledger-extra", "ledger-forgot"]


def parent(
    name: str = "c", selected: tuple[str, ...] = ("a", "b"), ready: int = 2, **kw: object
) -> model.Parent:
    st = {
        "observedGeneration": 2,
        "selected": len(selected),
        "ready": ready,
        "failed": 0,
        "conditions": [{"type": "Ready", "status": "True" if ready == len(selected) else "False"}],
    }
    return model.Parent("StorageConnection", name, 2, selected, st, **kw)  # type: ignore[arg-type]


def child(node: str, phase: str = "Connected", gen: int = 2, name: str = "c") -> model.Child:
    return model.Child("StorageConnection", name, node, phase, gen, (phase,))


@pytest.mark.parametrize(
    ("parents", "children", "invariant"),
    [
        ([parent()], [child("a"), child("b")], None),
        ([parent()], [child("a")], "missing-child"),
        ([parent()], [child("a"), child("b", gen=1)], "stale-child"),
        ([parent(ready=1)], [child("a"), child("b", "Failed")], "not-ready"),
        ([parent(ready=1)], [child("a"), child("b")], "parent-status"),
        ([parent(selected=("a",), ready=1)], [child("a"), child("b")], "stray-child"),
        ([parent(deleting=True)], [child("a")], "stray-child"),
        ([], [child("a", name="gone")], "stray-child"),
    ],
)
def test_status_mismatch(
    parents: list[model.Parent], children: list[model.Child], invariant: str | None
) -> None:
    found = model.status_mismatch(parents, children, READY)
    assert [v.invariant for v in found][:1] == ([invariant] if invariant else [])


def test_stuck_finalizer_and_undocumented_reason() -> None:
    assert model.stuck({"x"}, {"y"}) == []
    assert [str(v) for v in model.stuck({"x", "z"}, {"x", "y"})] == ["stuck-finalizer: x"]
    assert model.undocumented({"Connected", ""}, {"Connected"}) == []
    assert [v.detail for v in model.undocumented({"Connected", "Oops"}, {"Connected"})] == ["Oops"]


def test_tracebacks_name_the_exception() -> None:
    assert model.tracebacks("agent", "all fine\nTraceback is a word here\n") == []
    log = 'x\nTraceback (most recent call last):\n  File "a.py", line 1\n    boom()\nValueError: bad\n'
    assert [str(v) for v in model.tracebacks("agent", log)] == ["traceback: agent: ValueError: bad"]


def test_leaks_against_the_plateau_after_warm_up() -> None:
    start = model.Usage(12, 20, 0)
    warm = model.Usage(16, 32, 1)
    # the baseline right after start-up would call the warmed-up agent leaky; the plateau does not
    assert model.plateau([start], 2) is None
    base = model.plateau([start, warm], 2)
    assert base == model.Usage(16, 32, 1)
    assert model.leaks("agent", base, model.Usage(17, 33, 1)) == []
    assert model.leaks("agent", None, model.Usage(99, 99, 9)) == []
    found = model.leaks("agent", base, model.Usage(16 + 4, 32, 1 + 3))
    assert [v.invariant for v in found] == ["leak-threads", "leak-children"]
    assert [v.invariant for v in model.leaks("agent", base, model.Usage(16, 39, 1))] == ["leak-fds"]


def test_slow_health() -> None:
    assert model.slow_health("a", 0.01, 3) == []
    assert model.slow_health("a", 3.5, 3)[0].invariant == "healthz"
    assert "no answer" in model.slow_health("a", None, 3)[0].detail


def test_documented_reasons_reads_only_its_table() -> None:
    text = (
        "## Other\n| `Nope` | x |\n## Condition reasons\n| reason | on |\n|---|---|\n"
        "| `A`, `B` | `NotThis` |\n## Next\n| `C` |\n"
    )
    assert model.documented_reasons(text) == {"A", "B"}


def test_percentile_and_summary() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (model.percentile(values, 50), model.percentile(values, 99)) == (50.0, 99.0)
    assert model.percentile([], 50) == 0.0
    line = model.summary({"kill-agent": 2, "create": 3}, [1.0, 3.0], 0)
    assert line.startswith("SOAK SUMMARY: faults [kill-agent 2]; operations [create 3]; ")
    assert line.endswith("max 3.0 s (n=2); violations 0")


def test_trend_line() -> None:
    samples = [model.Usage(12, 20, 0), model.Usage(15, 31, 1), model.Usage(14, 30, 0)]
    assert model.trend(samples, 2) == (
        "3 samples, threads/fds/children first 12/20/0 plateau 15/31/1 max 15/31/1 last 14/30/0"
    )
    assert model.trend([], 2).startswith("0 samples")


def test_orphaned_probes_only_of_nodes_whose_mount_was_pulled() -> None:
    present = {"/b/.hoststorage-probe-node-a", "/b/.hoststorage-probe-node-b", "/b/.hoststorage-probe-node-c"}
    wanted = {"/b/.hoststorage-probe-node-a"}
    assert model.orphaned_probes(present, wanted, {"node-b"}) == {"/b/.hoststorage-probe-node-b"}
    assert model.orphaned_probes(present, wanted, {"node-a"}) == set()  # a wanted one is no orphan
    assert model.orphaned_probes(present, wanted, set()) == set()


def test_the_leak_slack_allows_the_handler_thread_pool() -> None:
    assert model.leak_slack(2) == model.Usage(3 + 6, 6, 2)
    assert model.leak_slack(64).threads == 3 + 32
    base = model.Usage(13, 23, 1)
    assert model.leaks("agent", base, model.Usage(17, 23, 1), model.leak_slack(2)) == []
    assert (
        model.leaks("agent", base, model.Usage(23, 23, 1), model.leak_slack(2))[0].invariant == "leak-threads"
    )
