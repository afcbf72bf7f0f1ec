"""Running host commands: argv lists only, a timeout on every call, secrets kept out of logs and errors.

No call here ever goes through a shell. Every run has a timeout; a command that outlives it is killed
(its whole process group). :class:`CommandError` keeps the argv, the exit code and the (truncated)
output, with every secret the caller declared replaced by ``***`` — in the argv, in the output and in
the log line.

In a container the agent runs host tools in the host's namespaces: :class:`Runner` can prefix every
argv with ``nsenter`` into PID 1 (``host_namespaces=True``). Tests inject a :class:`Runner` subclass or
any callable with the same signature.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from hostlib import errors

log = logging.getLogger(__name__)

# Enough of a tool's output to understand a failure; more would flood status messages and logs.
OUTPUT_LIMIT = 2000
REDACTED = "***"
NSENTER_ARGV = ("nsenter", "--target", "1", "--mount", "--uts", "--ipc", "--net", "--pid", "--")


def redact(text: str, secrets: Sequence[str]) -> str:
    """Replace every non-empty secret in ``text`` with ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def truncate(text: str, limit: int = OUTPUT_LIMIT) -> str:
    text = text.strip()
    if len(text) <= limit:
        return text
    return text[: limit // 2] + " ... " + text[-limit // 2 :]


@dataclasses.dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return "\n".join(part for part in (self.stdout.strip(), self.stderr.strip()) if part)


class CommandError(errors.HostStorageError):
    """A command failed or timed out. argv and output are already redacted and truncated."""

    reason = "CommandFailed"

    def __init__(self, argv: Sequence[str], rc: int | None, output: str, *, timed_out: bool = False) -> None:
        self.argv = tuple(argv)
        self.rc = rc
        self.output = output
        self.timed_out = timed_out
        what = "timed out" if timed_out else ("could not run" if rc is None else f"exited with {rc}")
        detail = f": {output}" if output else ""
        super().__init__(f"{' '.join(self.argv)} {what}{detail}")

    @property
    def tool_message(self) -> str:
        """The tool's own words (its output) or, if it printed nothing, what happened."""
        return self.output or str(self)


class CommandNotFound(CommandError):
    reason = "Unsupported"
    temporary = False


class RunnerProtocol(Protocol):
    def __call__(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        secrets: Sequence[str] = (),
        input_text: str | None = None,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> Result: ...


class Runner:
    """Runs argv lists on the host. ``host_namespaces`` prefixes them with nsenter into PID 1."""

    def __init__(self, *, host_namespaces: bool = False) -> None:
        self.host_namespaces = host_namespaces

    def __call__(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        secrets: Sequence[str] = (),
        input_text: str | None = None,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> Result:
        if isinstance(argv, (str, bytes)) or not argv or not all(isinstance(a, str) for a in argv):
            raise TypeError(f"argv must be a non-empty list of str, got {argv!r}")
        if any("\0" in a for a in argv):
            raise errors.InvalidSpec("NUL byte in a command argument")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        full = (*NSENTER_ARGV, *argv) if self.host_namespaces else tuple(argv)
        shown = tuple(redact(a, secrets) for a in full)
        log.debug("running %s (timeout %ss)", " ".join(shown), timeout)
        run_env = None if env is None else {**os.environ, **env}
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                full,
                stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=run_env,
                start_new_session=True,
                close_fds=True,
            )
        except FileNotFoundError as exc:
            raise CommandNotFound(shown, None, f"{full[0]}: command not found") from exc
        try:
            out, err = proc.communicate(input=input_text, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise CommandError(shown, None, "", timed_out=True) from None
        seconds = time.monotonic() - start
        result = Result(
            shown, proc.returncode, truncate(redact(out, secrets)), truncate(redact(err, secrets)), seconds
        )
        log.debug(
            "%s exited %s in %.3fs",
            shown[0 if not self.host_namespaces else len(NSENTER_ARGV)],
            proc.returncode,
            seconds,
        )
        if check and proc.returncode != 0:
            raise CommandError(shown, proc.returncode, result.output)
        return result


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """Kill the command and its children. A child stuck in D state may linger; we never wait forever."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        log.warning("pid %s did not exit after SIGKILL (uninterruptible I/O?); abandoning it", proc.pid)


def which(name: str) -> str | None:
    """Where a host tool lives, or None. Searches PATH plus the sbin directories root tools use."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin:/bin"
    for d in path.split(":"):
        candidate = os.path.join(d, name)
        if d and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None
