"""One error hierarchy for the host layer: whose fault it is and what happens next.

Every error carries a ``reason`` (the condition reason reported in status, CamelCase) and says whether
it is ``temporary`` (retry with backoff: storage unreachable, a daemon restarting) or permanent (the spec
is wrong or the host cannot do it: retrying would not help). Messages never contain secrets; command
output is truncated by :mod:`hostlib.commands` before it reaches an error. A value from the input goes
into a message only through :func:`shown`, and every message is bounded (:data:`MESSAGE_LIMIT`) as a
backstop: a spec is untrusted, and a message ends up in logs, status and Events.
"""

from __future__ import annotations

import builtins
import datetime
import reprlib
from typing import ClassVar

SHOWN_LIMIT = 80
"""Characters of one input value in a message: enough to recognise it, too few to flood a status."""
MESSAGE_LIMIT = 8192
"""The backstop on any error message: well above the longest we write (a command's argv with its
truncated stdout and stderr, 2,000 characters each), far below what would bloat a status or an Event."""


class _BoundedRepr(reprlib.Repr):
    """reprlib with a bounded cost for every type: objects it does not know are never repr()'d."""

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 256:  # repr of a huge int is slow and refused beyond 4,300 digits
            return f"<int of {x.bit_length()} bits>"
        return builtins.repr(x)

    def repr_bytes(self, x: bytes, level: int) -> str:
        return builtins.repr(x[: self.maxstring])

    def repr_instance(self, x: object, level: int) -> str:
        if isinstance(x, bool | float | complex | datetime.date | datetime.time | None):
            return builtins.repr(x)
        if isinstance(x, BaseException):
            args = ", ".join(self.repr1(a, level - 1) for a in x.args[: self.maxtuple])
            return f"{type(x).__name__}({args})"
        return f"<{type(x).__name__}>"


def _clip(text: str, limit: int) -> str:
    """``text`` if it fits in ``limit`` characters, else its two ends around `` ... ``."""
    if len(text) <= limit:
        return text
    head = max(0, (limit - 5) // 2)
    return text[:head] + " ... " + text[len(text) - max(0, limit - 5 - head) :]


def shown(value: object, limit: int = SHOWN_LIMIT) -> str:
    """``value`` for a message: its repr, at most ``limit`` characters, in bounded time and memory.

    Strings, bytes and numbers are cut before they are rendered, containers show their first few items
    a few levels deep (a YAML alias bomb is never expanded), exceptions show their type and arguments,
    any other object only its type name.
    """
    r = _BoundedRepr()
    r.maxstring = r.maxother = r.maxlong = max(limit, 8)
    r.maxlevel, r.maxdict, r.maxlist, r.maxtuple, r.maxset, r.maxfrozenset = 3, 4, 6, 6, 6, 6
    return _clip(r.repr(value), limit)


class HostStorageError(Exception):
    """Base of every error the host layer raises on purpose."""

    reason: ClassVar[str] = "Error"
    temporary: ClassVar[bool] = True

    def __init__(self, message: str) -> None:
        message = _clip(message, MESSAGE_LIMIT)
        super().__init__(message)
        self.message = message


class InvalidSpec(HostStorageError):
    """The desired state is malformed or not allowed. Permanent; nothing on the host was changed.

    ``field`` is the dotted path of the offending field (``spec.posixfs.options[1]``) when known.
    """

    reason = "InvalidSpec"
    temporary = False

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class Unsupported(HostStorageError):
    """This host cannot serve the request: a missing kernel module, helper or daemon."""

    reason = "Unsupported"
    temporary = False


class MountFailed(HostStorageError):
    """mount(8) or a mount helper failed; the partial work was undone."""

    reason = "MountFailed"


class UnmountFailed(HostStorageError):
    reason = "UnmountFailed"


class LoginFailed(HostStorageError):
    """iSCSI discovery or login failed (portal unreachable, wrong target, CHAP refused)."""

    reason = "LoginFailed"


class PermissionDenied(HostStorageError):
    """The storage was reached but the access check (rwx for the agent) failed."""

    reason = "PermissionDenied"


class InUse(HostStorageError):
    """A teardown was refused because something still uses the storage (open files, a pool, a monitor)."""

    reason = "InUse"


class Conflict(HostStorageError):
    """The host already has an object of that name that hoststorage does not own; it is left alone."""

    reason = "Conflict"
    temporary = False


class Covered(Conflict):
    """hoststorage's own object is still there under something that is not ours (a mount on top).

    Like any Conflict nothing is touched; unlike the others it is never forgotten, not even with
    ``delete --force``: forgetting would leave our mount (or pool) behind with no entry owning it.
    The way out is to remove what is on top; then the teardown runs as usual."""


class NotFound(HostStorageError):
    reason = "NotFound"


class Timeout(HostStorageError):
    reason = "Timeout"


class Waiting(HostStorageError):
    """Something this object needs is not there yet on this node: a connection not connected, a pool
    not running, a Secret not created, libvirtd restarting. Nothing was changed; the object is Pending,
    never Failed, and is retried with backoff. Subclasses name what is awaited in ``reason``."""

    reason = "Waiting"
