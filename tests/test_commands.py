"""The command runner: argv only, a timeout on every call, secrets out of logs and errors."""

from __future__ import annotations

import inspect
import logging
import os
import time

import pytest
from fake_runner import FakeRunner

from hostlib import commands, errors

run = commands.Runner()


def test_runs_argv_and_captures_output() -> None:
    result = run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10, check=False)
    assert (result.rc, result.stdout.strip(), result.stderr.strip()) == (3, "out", "err")
    assert result.output == "out\nerr"
    assert result.argv == ("sh", "-c", "echo out; echo err >&2; exit 3")
    assert result.seconds >= 0


def test_no_shell_interprets_arguments() -> None:
    result = run(["echo", "$(id)", ";", "reboot", "|", "`x`"], timeout=10)
    assert result.stdout.strip() == "$(id) ; reboot | `x`"


def test_failure_raises_with_argv_rc_and_output() -> None:
    with pytest.raises(commands.CommandError) as info:
        run(["sh", "-c", "echo boom >&2; exit 32"], timeout=10)
    err = info.value
    assert (err.rc, err.output, err.timed_out) == (32, "boom", False)
    assert err.argv[0] == "sh"
    assert "exited with 32: boom" in str(err)
    assert err.tool_message == "boom"
    assert err.reason == "CommandFailed"


def test_input_and_env_reach_the_command() -> None:
    result = run(
        ["sh", "-c", 'read line; echo "$line $HS_X"'], timeout=10, input_text="hello\n", env={"HS_X": "y"}
    )
    assert result.stdout.strip() == "hello y"


def test_secrets_are_redacted_everywhere(caplog: pytest.LogCaptureFixture) -> None:
    secret = "s3cr3t-pass"
    caplog.set_level(logging.DEBUG, logger="hostlib.commands")
    with pytest.raises(commands.CommandError) as info:
        run(["sh", "-c", f"echo got {secret}; echo {secret} >&2; exit 1", "x"], timeout=10, secrets=[secret])
    err = info.value
    assert secret not in str(err)
    assert secret not in err.output
    assert secret not in " ".join(err.argv)
    assert "***" in err.output
    assert caplog.records, "the runner logs what it runs"
    assert all(secret not in r.getMessage() for r in caplog.records)


def test_timeout_kills_the_whole_process_group() -> None:
    start = time.monotonic()
    with pytest.raises(commands.CommandError) as info:
        # the grandchild writes its pid, then both sleep; the kill must reach it too
        run(["sh", "-c", "sleep 60 & echo $! > /dev/null; sleep 60"], timeout=0.5)
    assert info.value.timed_out
    assert "timed out" in str(info.value)
    assert time.monotonic() - start < 5


def test_timeout_reaches_grandchildren(tmp_path: os.PathLike[str]) -> None:
    pidfile = os.path.join(str(tmp_path), "pid")
    with pytest.raises(commands.CommandError):
        run(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], timeout=0.5)
    with open(pidfile) as f:
        pid = int(f.read())
    for _ in range(50):
        if not os.path.exists(f"/proc/{pid}"):
            break
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.05)
    else:
        pytest.fail(f"grandchild {pid} survived the timeout")


def test_missing_tool_is_unsupported() -> None:
    with pytest.raises(commands.CommandNotFound) as info:
        run(["hoststorage-no-such-tool", "x"], timeout=5)
    assert info.value.reason == "Unsupported"
    assert not info.value.temporary
    assert "command not found" in info.value.tool_message


@pytest.mark.parametrize(
    ("argv", "timeout", "exc"),
    [
        ([], 5, TypeError),
        (["echo", 3], 5, TypeError),
        ("echo hi", 5, TypeError),
        (["echo", "a\0b"], 5, errors.InvalidSpec),
        (["echo"], 0, ValueError),
        (["echo"], -1, ValueError),
    ],
)
def test_bad_calls_are_refused(argv: object, timeout: float, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        run(argv, timeout=timeout)  # type: ignore[arg-type]


def test_long_output_is_truncated() -> None:
    result = run(["sh", "-c", "head -c 10000 /dev/zero | tr '\\0' a"], timeout=10)
    assert len(result.stdout) <= commands.OUTPUT_LIMIT + 10
    assert " ... " in result.stdout


def test_host_namespaces_prefix_nsenter() -> None:
    if os.geteuid() != 0 or commands.which("nsenter") is None:
        pytest.skip("nsenter into PID 1 needs root and util-linux")
    result = commands.Runner(host_namespaces=True)(["true"], timeout=10, check=False)
    assert result.argv == (*commands.NSENTER_ARGV, "true")


@pytest.mark.parametrize(
    ("text", "secrets", "expected"),
    [
        ("user pw123", ["pw123"], "user ***"),
        ("pw123pw123", ["pw123"], "******"),
        ("nothing", ["", "zzz"], "nothing"),
        ("a b", [], "a b"),
    ],
)
def test_redact(text: str, secrets: list[str], expected: str) -> None:
    assert commands.redact(text, secrets) == expected


def test_which_searches_sbin() -> None:
    assert commands.which("sh") is not None
    assert commands.which("hoststorage-no-such-tool") is None
    if os.path.exists("/usr/sbin/losetup"):
        assert commands.which("losetup") is not None


def test_the_tests_fake_runner_has_the_real_call_signature() -> None:
    """tests/fake_runner.py stands in for Runner in argv-level tests: same parameters, same defaults."""
    fake_sig = inspect.signature(FakeRunner.__call__, eval_str=True)
    assert fake_sig == inspect.signature(commands.Runner.__call__, eval_str=True)
    fake = FakeRunner()
    assert fake(["true"], timeout=1) == commands.Result(("true",), 0, "", "", 0.0)
