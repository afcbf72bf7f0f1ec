"""iSCSI initiator side through iscsiadm: discovery, node records, CHAP, login, logout, sessions.

Only argv builders and output parsers live here, plus thin wrappers that run them through the injected
runner; :mod:`hostlib.connections` composes them into an idempotent connect/disconnect. The CHAP
password is passed to iscsiadm as an argv value (iscsiadm has no other non-interactive way) and declared
a secret to the runner, so it is replaced by ``***`` in every log line, error and status message.

A per-connection initiator name needs an iscsiadm *iface*: we create ``hoststorage-<hash>`` with
``iface.initiatorname`` set and pass ``-I`` to discovery and login. Without one, the host's
``/etc/iscsi/initiatorname.iscsi`` is used (iface ``default``).

Exit codes we rely on (open-iscsi ``iscsi_err.h``): 15 session exists (login is then a no-op),
21 no objects found (no sessions / no matching node record), 24 CHAP authorization failure.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from collections.abc import Sequence

from hostlib import commands, errors

log = logging.getLogger(__name__)

DEFAULT_PORT = 3260
BY_PATH = "/dev/disk/by-path"
RC_SESSION_EXISTS = 15
RC_NO_OBJECTS = 21
RC_AUTH_FAILED = 24

# iSCSI names, RFC 3720 section 3.2.6 (with RFC 3980 for naa.): this is the one rule; the parsers call
# valid_name/check_name and the CRDs' patterns are NAME_PATTERN (tests/test_crds.py pins them equal).
# - iqn.YYYY-MM.<reversed domain>[:<anything>]: the date a naming authority owned the domain (month
#   01-12), then its labels, then any string of the allowed characters;
# - eui.<16 hex digits> (EUI-64); naa.<16 or 32 hex digits> (64- or 128-bit NAA);
# - the allowed characters are ASCII letters, digits, '-', '.' and ':' (3.2.6.2; non-ASCII names,
#   which the RFC allows after stringprep, are refused: nothing here can normalise them safely);
# - upper case is accepted everywhere: RFC 3722 folds case before names are compared, so vendors'
#   "IQN.1992-08.com.NetApp:..." and the RFC's own "eui.02004567A425678D" are the same names in lower
#   case. Names go to iscsiadm as written; hoststorage compares them with same_name.
# - at most 223 bytes (3.2.6.1).
_LABEL = "[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_HEX = "[0-9A-Fa-f]"
NAME_PATTERN = (
    rf"^([Ii][Qq][Nn]\.[0-9]{{4}}-(0[1-9]|1[0-2])\.{_LABEL}(\.{_LABEL})*(:[A-Za-z0-9.:-]+)?"
    rf"|[Ee][Uu][Ii]\.{_HEX}{{16}}"
    rf"|[Nn][Aa][Aa]\.{_HEX}{{16}}({_HEX}{{16}})?)$"
)
"""The RFC 3720 name rule as a regular expression that Python, RE2 (the API server) and ECMA-262 read
alike: no flags, no look-around, explicit letter cases."""
MAX_NAME = 223
_NAME_RE = re.compile(NAME_PATTERN)
NAME_FORMS = "iqn.YYYY-MM.reversed.domain[:id], eui.<16 hex digits> or naa.<16 or 32 hex digits>"


def valid_name(name: str) -> bool:
    """Whether ``name`` is an RFC 3720 iSCSI name hoststorage accepts (see the rule above)."""
    return len(name.encode("utf-8")) <= MAX_NAME and _NAME_RE.match(name) is not None


def check_name(value: object, *, field: str | None = None) -> str:
    """``value`` if it is a valid iSCSI name, else InvalidSpec naming ``field``."""
    if not isinstance(value, str):
        raise errors.InvalidSpec(f"must be a string, got {type(value).__name__}", field=field)
    if len(value.encode("utf-8")) > MAX_NAME:
        raise errors.InvalidSpec(f"is longer than {MAX_NAME} bytes (RFC 3720)", field=field)
    if not _NAME_RE.match(value):
        raise errors.InvalidSpec(f"{value!r} is not an iSCSI name ({NAME_FORMS})", field=field)
    return value


def same_name(a: str, b: str) -> bool:
    """RFC 3722: iSCSI names compare after case folding (ASCII-only names: lower case)."""
    return a.lower() == b.lower()


def iface_name(initiator_name: str) -> str:
    return "hoststorage-" + hashlib.sha256(initiator_name.encode()).hexdigest()[:10]


def _iface(iface: str | None) -> tuple[str, ...]:
    return ("-I", iface) if iface else ()


def discovery_argv(portal: str, iface: str | None = None) -> tuple[str, ...]:
    return ("iscsiadm", "-m", "discovery", "-t", "sendtargets", "-p", portal, *_iface(iface))


def node_argv(target: str, portal: str, iface: str | None = None) -> tuple[str, ...]:
    return ("iscsiadm", "-m", "node", "-T", target, "-p", portal, *_iface(iface))


def node_new_argv(target: str, portal: str, iface: str | None = None) -> tuple[str, ...]:
    return (*node_argv(target, portal, iface), "-o", "new")


def node_update_argv(
    target: str, portal: str, key: str, value: str, iface: str | None = None
) -> tuple[str, ...]:
    return (*node_argv(target, portal, iface), "-o", "update", "-n", key, "-v", value)


def node_delete_argv(target: str, portal: str, iface: str | None = None) -> tuple[str, ...]:
    return (*node_argv(target, portal, iface), "-o", "delete")


def login_argv(target: str, portal: str, iface: str | None = None) -> tuple[str, ...]:
    return (*node_argv(target, portal, iface), "-l")


def logout_argv(target: str, portal: str, iface: str | None = None) -> tuple[str, ...]:
    return (*node_argv(target, portal, iface), "-u")


def session_argv() -> tuple[str, ...]:
    return ("iscsiadm", "-m", "session")


def iface_new_argv(iface: str) -> tuple[str, ...]:
    return ("iscsiadm", "-m", "iface", "-I", iface, "-o", "new")


def iface_update_argv(iface: str, initiator_name: str) -> tuple[str, ...]:
    return (
        "iscsiadm",
        "-m",
        "iface",
        "-I",
        iface,
        "-o",
        "update",
        "-n",
        "iface.initiatorname",
        "-v",
        initiator_name,
    )


def chap_argvs(
    target: str, portal: str, username: str, password: str, iface: str | None = None
) -> list[tuple[str, ...]]:
    """The node updates that turn CHAP on. The last one carries the password: pass it as a secret."""
    return [
        node_update_argv(target, portal, "node.session.auth.authmethod", "CHAP", iface),
        node_update_argv(target, portal, "node.session.auth.username", username, iface),
        node_update_argv(target, portal, "node.session.auth.password", password, iface),
    ]


def by_path(portal: str, target: str, lun: int) -> str:
    """udev's stable name of a LUN: ``/dev/disk/by-path/ip-<portal>-iscsi-<iqn>-lun-<n>``."""
    return f"{BY_PATH}/ip-{portal}-iscsi-{target}-lun-{lun}"


@dataclasses.dataclass(frozen=True)
class Session:
    sid: int
    transport: str
    portal: str
    tpgt: int
    target: str


# tcp: [1] 10.0.0.1:3260,1 iqn.2003-01.org.example:t1 (non-flash)
_SESSION_RE = re.compile(r"^(\S+): \[(\d+)\] (\S+),(\d+) (\S+)(?: \(.*\))?$")


def parse_sessions(text: str) -> list[Session]:
    sessions = []
    for line in text.splitlines():
        m = _SESSION_RE.match(line.strip())
        if m:
            sessions.append(Session(int(m.group(2)), m.group(1), m.group(3), int(m.group(4)), m.group(5)))
        elif line.strip():
            log.debug("ignoring iscsiadm session line %r", line)
    return sessions


def parse_discovery(text: str) -> list[tuple[str, str]]:
    """``portal,tpgt iqn`` lines -> [(portal, iqn)]."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and "," in parts[0]:
            out.append((parts[0].rsplit(",", 1)[0], parts[1]))
    return out


def _fail(exc: commands.CommandError, what: str) -> errors.HostStorageError:
    text = exc.tool_message
    if isinstance(exc, commands.CommandNotFound):
        return errors.Unsupported(f"{what}: iscsiadm is not installed ({text})")
    if "driver" in text and ("not loaded" in text or "not found" in text):
        return errors.Unsupported(f"{what}: no iSCSI initiator in this kernel: {text}")
    if exc.rc == RC_AUTH_FAILED:
        return errors.LoginFailed(f"{what}: CHAP authentication failed: {text}")
    return errors.LoginFailed(f"{what}: {text}")


def sessions(runner: commands.RunnerProtocol, *, timeout: float) -> list[Session]:
    try:
        result = runner(session_argv(), timeout=timeout, check=False)
    except commands.CommandNotFound as exc:
        raise errors.Unsupported(
            f"cannot list iSCSI sessions: iscsiadm is not installed ({exc.tool_message})"
        ) from exc
    if result.rc == RC_NO_OBJECTS:
        return []
    if result.rc != 0:
        raise errors.LoginFailed(f"iscsiadm -m session failed: {result.output}")
    return parse_sessions(result.stdout)


def discover(
    runner: commands.RunnerProtocol, portal: str, *, timeout: float, iface: str | None = None
) -> list[tuple[str, str]]:
    try:
        result = runner(discovery_argv(portal, iface), timeout=timeout)
    except commands.CommandError as exc:
        raise _fail(exc, f"iSCSI discovery on {portal} failed") from exc
    return parse_discovery(result.stdout)


def run(
    runner: commands.RunnerProtocol,
    argv: Sequence[str],
    what: str,
    *,
    timeout: float,
    secrets: Sequence[str] = (),
    ok_codes: Sequence[int] = (),
) -> int:
    """Run one iscsiadm step; rc in ``ok_codes`` counts as success. Errors -> LoginFailed/Unsupported."""
    try:
        result = runner(argv, timeout=timeout, secrets=secrets, check=False)
    except commands.CommandError as exc:
        raise _fail(exc, what) from exc
    if result.rc != 0 and result.rc not in ok_codes:
        raise _fail(commands.CommandError(result.argv, result.rc, result.output), what)
    return result.rc
