"""bench/dd_checker.py, VDSM's dd-per-check baseline that bench/monitors.py measures against, still works."""

from __future__ import annotations

import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "bench"))

import dd_checker

from hostlib import checker


def test_dd_baseline_reads_and_reports_dd_s_delay(tmp_path: pathlib.Path) -> None:
    probe = tmp_path / "p"
    probe.write_bytes(b"x" * 4096)
    d = dd_checker.DdChecker()
    try:
        assert d.submit("a", checker.CheckRequest(target=str(tmp_path), path=str(probe)), timeout=5)
        missing = checker.CheckRequest(target=str(tmp_path), path=str(tmp_path / "nope"))
        assert d.submit("b", missing, timeout=5)
        got: dict[object, checker.CheckResult] = {}
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            got.update(d.wait(0.1))
        assert got["a"].ok and got["a"].read_delay is not None
        assert not got["b"].ok and "No such file" in got["b"].error
    finally:
        d.close()
