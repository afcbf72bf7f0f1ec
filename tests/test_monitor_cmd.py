"""`hoststorage monitor -f FILE`: connects first, prints a line per transition, ends cleanly on SIGTERM."""

from __future__ import annotations

import os
import pathlib
import re
import select
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import pytest

from hostlib import checker

pytestmark = [pytest.mark.host]

HOSTSTORAGE = str(pathlib.Path(sys.executable).parent / "hoststorage")
LINE_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)  (\S+)  (\S+)  (\S+)  (.*)$")


def manifests(allowed: pathlib.Path) -> str:
    return f"""
apiVersion: hoststorage.io/v1alpha1
kind: StorageConnection
metadata: {{name: local1}}
spec:
  type: localfs
  localfs: {{path: {allowed}/conn}}
---
apiVersion: hoststorage.io/v1alpha1
kind: DomainMonitor
metadata: {{name: on-conn}}
spec:
  target: {{connectionRef: {{name: local1}}}}
  intervalSeconds: 1
---
apiVersion: hoststorage.io/v1alpha1
kind: DomainMonitor
metadata: {{name: on-path}}
spec:
  target: {{hostPath: {allowed}/dir}}
  intervalSeconds: 1
---
apiVersion: hoststorage.io/v1alpha1
kind: DomainMonitor
metadata: {{name: waits}}
spec:
  target: {{poolRef: {{name: no-such-pool}}}}
---
apiVersion: hoststorage.io/v1alpha1
kind: DomainMonitor
metadata: {{name: escapes}}
spec:
  target: {{hostPath: /etc}}
"""


def read_lines(proc: subprocess.Popen[str], until: Any, timeout: float) -> list[tuple[str, ...]]:
    assert proc.stdout is not None
    lines: list[tuple[str, ...]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(lines):
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            m = LINE_RE.match(line.rstrip("\n"))
            assert m, f"unexpected output line {line!r}"
            lines.append(m.groups())
    return lines


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_monitor_connects_first_prints_transitions_and_stops_on_sigterm(tmp_path: pathlib.Path) -> None:
    allowed = tmp_path / "allowed"
    (allowed / "conn").mkdir(parents=True)
    (allowed / "dir").mkdir()
    state = tmp_path / "state"
    path = tmp_path / "monitors.yaml"
    path.write_text(manifests(allowed))
    argv = [HOSTSTORAGE, "--state-dir", str(state), "--allowed-host-path", str(allowed),
            "monitor", "-f", str(path)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def seen(lines: list[tuple[str, ...]]) -> bool:
            return {"on-conn", "on-path", "waits", "escapes"} <= {line[1] for line in lines}

        lines = read_lines(proc, seen, 20)
        by_name = {line[1]: line for line in lines}
        assert by_name["on-conn"][2:4] == ("Healthy", "CheckSucceeded"), lines
        assert by_name["on-path"][2:4] == ("Healthy", "CheckSucceeded"), lines
        assert by_name["waits"][2:4] == ("Pending", "WaitingForPool"), lines
        assert by_name["escapes"][2:4] == ("Failed", "InvalidSpec"), lines
        # The connection was made before the monitors ran: its link exists under the mount base.
        assert any(p.is_symlink() for p in (state / "mnt").iterdir())
        # A fault shows up as one more line: the probe of on-path disappears.
        os.unlink(allowed / "dir" / checker.probe_name(socket.gethostname()))
        more = read_lines(proc, lambda ls: any(x[1] == "on-path" for x in ls), 10)
        assert [x[2:4] for x in more if x[1] == "on-path"] == [("Invalid", "TargetMissing")]
        helpers = children(proc.pid)
        assert helpers, "the checks run in helper processes"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert time.monotonic() - started < 5
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # No helper process outlives the command.
    assert not [pid for pid in helpers if alive(pid)]


def test_monitor_without_monitors_says_so(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    proc = subprocess.run([HOSTSTORAGE, "--state-dir", str(tmp_path / "s"), "monitor", "-f", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert "no DomainMonitor to run" in proc.stderr
