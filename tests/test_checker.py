"""hostlib.checker and the monitor runtime against real helper processes on temp directories.

Hung storage is stood in for by FIFOs nobody writes to: opening one blocks in the helper exactly where a
read of hung storage would (the D-state case, a SIGSTOPped gluster brick, is in
test_domain_monitor_storage.py).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import pathlib
import re
import signal
import subprocess
import time
from collections.abc import Iterator

import prometheus_client
import pytest

from controller import monitoring
from hostlib import check_helper, checker, domain_metadata, errors, fsops
from reconcilers import domain_monitor as dmon


@pytest.fixture
def chk() -> Iterator[checker.Checker]:
    c = checker.Checker()
    try:
        yield c
    finally:
        c.close()


def collect(c: checker.Checker, keys: set[object], timeout: float) -> dict[object, checker.CheckResult]:
    out: dict[object, checker.CheckResult] = {}
    deadline = time.monotonic() + timeout
    while set(out) < keys and time.monotonic() < deadline:
        out.update(c.wait(0.1))
    return out


class Fifo:
    """A probe that hangs until released (a writer appears)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        os.mkfifo(path)
        self.fd: int | None = None

    def release(self) -> None:
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
            os.write(self.fd, b"x" * 8192)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)


@pytest.fixture
def fifo(tmp_path: pathlib.Path) -> Iterator[Fifo]:
    f = Fifo(tmp_path / "hung")
    try:
        yield f
    finally:
        f.release()
        time.sleep(0.2)
        f.close()


def test_probe_is_created_once_then_read_with_direct_io(chk: checker.Checker, tmp_path: pathlib.Path) -> None:
    r = chk.check(checker.CheckRequest(target=str(tmp_path)), timeout=10)
    assert r is not None and r.ok, r
    assert (r.kind, r.path) == ("probe", str(tmp_path / checker.PROBE_NAME))
    assert r.read_delay is not None and r.read_delay < 1 and r.total_bytes and r.free_bytes is not None
    mtime = os.stat(r.path).st_mtime_ns
    again = chk.check(checker.CheckRequest(target=str(tmp_path), path=r.path, kind="probe",
                                           create_probe=False), timeout=10)
    assert again is not None and again.ok and os.stat(r.path).st_mtime_ns == mtime


def test_metadata_bytes_come_back_for_parsing(chk: checker.Checker, tmp_path: pathlib.Path) -> None:
    sd = "3b5b1f5e-0d6c-4a3c-9a8a-2c0f6b1e9d11"
    md = tmp_path / sd / "dom_md"
    md.mkdir(parents=True)
    data = domain_metadata.dump({"SDUUID": sd, "VERSION": "4"}) + b"\0" * 5000
    (md / "metadata").write_bytes(data)
    r = chk.check(checker.CheckRequest(target=str(tmp_path)), timeout=10)
    assert r is not None and r.ok and r.kind == "metadata" and r.domains == (sd,)
    assert r.data == data
    assert domain_metadata.parse(r.data).seal is domain_metadata.Seal.OK
    assert not (tmp_path / checker.PROBE_NAME).exists()


def test_at_most_one_outstanding_check_per_key(
    chk: checker.Checker, tmp_path: pathlib.Path, fifo: Fifo
) -> None:
    req = checker.CheckRequest(target=str(tmp_path), path=str(fifo.path), create_probe=False)
    assert chk.submit("k", req, timeout=1)
    assert not chk.submit("k", req, timeout=1)
    assert chk.outstanding("k") is not None
    # Other keys are not held up by the hung one.
    other = tmp_path / "other"
    other.mkdir()
    assert chk.submit("other", checker.CheckRequest(target=str(other)), timeout=5)
    got = collect(chk, {"other"}, 5)
    assert got["other"].ok and chk.outstanding("k") is not None
    fifo.release()
    # The released open is refused for O_DIRECT, retried, then a pipe cannot be preadv'd: an answer.
    late = collect(chk, {"k"}, 5)
    assert "k" in late and chk.outstanding("k") is None


def test_many_stuck_checks_move_new_work_to_a_fresh_helper(tmp_path: pathlib.Path) -> None:
    c = checker.Checker(max_stuck=2)
    fifos = [Fifo(tmp_path / f"h{i}") for i in range(3)]
    try:
        for i, f in enumerate(fifos):
            assert c.submit(i, checker.CheckRequest(target=str(tmp_path), path=str(f.path)), timeout=0.2)
        c.wait(0.5)
        first = c.helper_pids()
        assert c.submit("fresh", checker.CheckRequest(target=str(tmp_path)), timeout=5)
        got = collect(c, {"fresh"}, 5)
        assert got["fresh"].ok
        stats = c.stats()
        assert stats["started"] == 2 and stats["retired"] == 1, stats
        assert set(first) < set(c.helper_pids())
    finally:
        for f in fifos:
            f.release()
        time.sleep(0.3)
        c.close()
        for f in fifos:
            f.close()


def test_a_helper_that_dies_frees_its_keys(chk: checker.Checker, tmp_path: pathlib.Path, fifo: Fifo) -> None:
    assert chk.submit("k", checker.CheckRequest(target=str(tmp_path), path=str(fifo.path)), timeout=1)
    chk.wait(0.2)
    (pid,) = chk.helper_pids()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while chk.outstanding("k") is not None and time.monotonic() < deadline:
        assert chk.wait(0.1) == []  # lost, not answered
    assert chk.outstanding("k") is None
    assert chk.submit("k", checker.CheckRequest(target=str(tmp_path)), timeout=5)
    assert collect(chk, {"k"}, 5)["k"].ok


@pytest.mark.parametrize(("probe", "stage"), [("../outside", "confine"), ("link", "confine")])
def test_reads_stay_under_the_root(
    chk: checker.Checker, tmp_path: pathlib.Path, probe: str, stage: str
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside").write_bytes(b"secret" * 1000)
    os.symlink(tmp_path / "outside", root / "link")
    r = chk.check(checker.CheckRequest(target=str(root), path=str(root / probe)), timeout=5)
    assert r is not None and not r.ok and r.stage == stage and "outside" in r.error


def test_remove_probe(chk: checker.Checker, tmp_path: pathlib.Path) -> None:
    r = chk.check(checker.CheckRequest(target=str(tmp_path)), timeout=5)
    assert r is not None and r.path and r.created == fsops.ident(os.lstat(r.path))
    assert chk.remove_probe(str(tmp_path), r.path, expect=r.created, timeout=5) is True
    assert chk.remove_probe(str(tmp_path), r.path, expect=r.created, timeout=5) is False


def test_an_existing_probe_name_is_read_but_never_claimed(
    chk: checker.Checker, tmp_path: pathlib.Path
) -> None:
    (tmp_path / checker.PROBE_NAME).write_bytes(b"someone's file")
    r = chk.check(checker.CheckRequest(target=str(tmp_path)), timeout=5)
    assert r is not None and r.ok and r.kind == "probe" and r.created is None
    assert (tmp_path / checker.PROBE_NAME).read_bytes() == b"someone's file"



def test_remove_probe_under_a_directory_that_is_gone_is_absent(
    chk: checker.Checker, tmp_path: pathlib.Path
) -> None:
    """ENOENT on the way: no probe file at that name, nothing to retry; the moved one is kept. (A file in
    the directory's place is a Conflict: something else is in the way.)"""
    d = tmp_path / "d"
    d.mkdir()
    r = chk.check(checker.CheckRequest(target=str(d)), timeout=5)
    assert r is not None and r.ok and r.path and r.created
    os.rename(d, tmp_path / "moved")
    assert chk.remove_probe(str(tmp_path), r.path, expect=r.created, timeout=5) is False
    (tmp_path / "d").write_bytes(b"a file where the directory was")
    with pytest.raises(errors.Conflict):
        chk.remove_probe(str(tmp_path), r.path, expect=r.created, timeout=5)
    assert (tmp_path / "moved" / os.path.basename(r.path)).exists()

@pytest.mark.host
def test_remove_probe_raises_the_error_the_storage_answers(
    chk: checker.Checker, tmp_path: pathlib.Path
) -> None:
    """A storage that refuses (here read-only; a gluster client without its brick says ENOTCONN) is an
    OSError with its errno, not "absent": the teardown retries it (test_domain_monitor.py)."""
    d = tmp_path / "d"
    d.mkdir()
    r = chk.check(checker.CheckRequest(target=str(d)), timeout=5)
    assert r is not None and r.ok and r.path and r.created
    subprocess.run(["mount", "--bind", str(d), str(d)], check=True, timeout=30)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(d)], check=True, timeout=30)
        with pytest.raises(OSError) as raised:
            chk.remove_probe(str(d), r.path, expect=r.created, timeout=5)
        assert raised.value.errno == errno.EROFS and r.path in str(raised.value.strerror)
        assert os.path.exists(r.path)
    finally:
        subprocess.run(["umount", str(d)], check=True, timeout=30)
    assert chk.remove_probe(str(d), r.path, expect=r.created, timeout=5) is True

def test_remove_probe_of_a_link_planted_at_its_name_is_conflict_and_removes_nothing(
    chk: checker.Checker, tmp_path: pathlib.Path
) -> None:
    image = tmp_path / "vm.img"
    image.write_bytes(b"disk" * 1024)
    before = (image.lstat().st_ino, image.read_bytes())
    r = chk.check(checker.CheckRequest(target=str(tmp_path)), timeout=5)
    assert r is not None and r.path and r.created is not None
    os.unlink(r.path)
    os.symlink(image, r.path)
    with pytest.raises(errors.Conflict, match="nothing removed"):
        chk.remove_probe(str(tmp_path), r.path, expect=r.created, timeout=5)
    assert (image.lstat().st_ino, image.read_bytes()) == before
    assert os.path.islink(r.path)


def test_remove_probe_without_a_recorded_ident_is_refused(tmp_path: pathlib.Path) -> None:
    (tmp_path / "p").write_bytes(b"x")
    with pytest.raises(check_helper.CheckFailed, match="not known to be ours"):
        check_helper.remove({"root": str(tmp_path), "path": str(tmp_path / "p")})
    assert (tmp_path / "p").exists()


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        ("node-a", ".hoststorage-probe-node-a"),
        ("n1.example.com", ".hoststorage-probe-n1.example.com"),
        ("", ".hoststorage-probe-unknown"),
    ],
)
def test_probe_name_is_the_node_name_when_it_is_safe(node: str, expected: str) -> None:
    assert checker.probe_name(node) == expected


@pytest.mark.parametrize("node", ["a/../b", "x" * 253, "nöde", "a b", "../..", "a\nb"])
def test_probe_name_of_an_unsafe_or_long_node_is_bounded_safe_and_distinct(node: str) -> None:
    name = checker.probe_name(node)
    assert len(name.encode()) <= 80
    assert re.fullmatch(r"[A-Za-z0-9._-]+", name) and "/" not in name
    assert name != checker.probe_name(node + "x")
    assert name.startswith(checker.PROBE_NAME + "-")


def test_runtime_reports_once_per_transition_and_exports_metrics(tmp_path: pathlib.Path) -> None:
    reports: list[tuple[str, str, bool]] = []
    registry = prometheus_client.CollectorRegistry()
    rt = monitoring.MonitorRuntime(on_report=lambda n, st, t: reports.append((n, str(st.state), t)),
                                   registry=registry)
    rt.start()
    try:
        assert rt.status("m") is None
        req = checker.CheckRequest(target=str(tmp_path))
        rt.set(monitoring.MonitorConfig("m", req, interval=1, timeout=1))
        deadline = time.monotonic() + 10
        while (rt.snapshot().get("m", {}).get("checks", 0) < 4) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reports == [("m", "Healthy", True)]  # four checks, one write
        assert registry.get_sample_value("hoststorage_monitor_valid", {"monitor": "m"}) == 1
        count = registry.get_sample_value("hoststorage_monitor_read_delay_seconds_count", {"monitor": "m"})
        assert count is not None and count >= 4
        assert registry.get_sample_value("hoststorage_monitor_last_check_timestamp_seconds",
                                         {"monitor": "m"}) > time.time() - 5
        assert registry.get_sample_value("hoststorage_monitor_blocked_seconds", {"monitor": "m"}) == 0
        os.unlink(tmp_path / checker.PROBE_NAME)
        deadline = time.monotonic() + 5
        while len(reports) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reports[1] == ("m", "Invalid", True)
        assert registry.get_sample_value("hoststorage_monitor_valid", {"monitor": "m"}) == 0
        rt.remove("m")
        deadline = time.monotonic() + 2
        while rt.status("m") is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert registry.get_sample_value("hoststorage_monitor_valid", {"monitor": "m"}) is None
        assert rt.healthy()
    finally:
        rt.stop()
    st = dmon.MonitorStatus()
    assert st.state is dmon.State.UNKNOWN


def test_the_recorded_probe_request_keeps_the_status_a_new_target_does_not(tmp_path: pathlib.Path) -> None:
    """The agent's next reconcile hands over the probe recorded after the first check: the request the
    runtime already follows. That must not reset the monitor to Unknown (a false "no result" for a
    resync); a request for another target must."""
    reports: list[tuple[str, str]] = []
    rt = monitoring.MonitorRuntime(on_report=lambda n, st, t: reports.append((n, str(st.state))))
    rt.start()
    try:
        first = checker.CheckRequest(target=str(tmp_path), probe="p", create_probe=True)
        rt.set(monitoring.MonitorConfig("m", first, interval=1, timeout=1))
        deadline = time.monotonic() + 10
        while reports != [("m", "Healthy")] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reports == [("m", "Healthy")]
        recorded = dataclasses.replace(first, path=str(tmp_path / "p"), kind="probe", create_probe=False)
        rt.set(monitoring.MonitorConfig("m", recorded, interval=1, timeout=1))
        checks = rt.snapshot()["m"]["checks"]
        deadline = time.monotonic() + 10
        while rt.snapshot()["m"]["checks"] < checks + 2 and time.monotonic() < deadline:
            assert rt.status("m").state is dmon.State.HEALTHY  # type: ignore[union-attr]
            time.sleep(0.02)
        assert rt.snapshot()["m"]["checks"] >= checks + 2, "the monitor kept checking after the update"
        assert reports == [("m", "Healthy")]  # no Unknown, no second write
        hung = Fifo(tmp_path / "hung")  # another file, whose read never answers: only a reset shows
        try:
            rt.set(monitoring.MonitorConfig("m", checker.CheckRequest(
                target=str(tmp_path), path=str(hung.path), kind="file", create_probe=False),
                interval=10, timeout=5))  # fmt: skip
            deadline = time.monotonic() + 3
            while rt.status("m").state is dmon.State.HEALTHY and time.monotonic() < deadline:  # type: ignore[union-attr]
                time.sleep(0.02)
            assert rt.status("m").state is dmon.State.UNKNOWN  # type: ignore[union-attr]
        finally:
            hung.release()
            time.sleep(0.2)
            hung.close()
    finally:
        rt.stop()


def test_a_probe_swapped_for_a_link_is_reported_not_read_through(
    chk: checker.Checker, tmp_path: pathlib.Path
) -> None:
    r = chk.check(checker.CheckRequest(target=str(tmp_path)), timeout=5)
    assert r is not None and r.ok and r.path
    (tmp_path / "image").write_bytes(b"disk" * 1024)
    os.unlink(r.path)
    os.symlink(tmp_path / "image", r.path)
    again = chk.check(dmon.followup_request(checker.CheckRequest(target=str(tmp_path)), r), timeout=5)
    assert again is not None and not again.ok and again.stage == "open" and again.errno == errno.ELOOP
