"""One error hierarchy for the host layer: whose fault it is and what happens next.

Every error carries a ``reason`` (the condition reason reported in status, CamelCase) and says whether
it is ``temporary`` (retry with backoff: storage unreachable, a daemon restarting) or permanent (the spec
is wrong or the host cannot do it: retrying would not help). Messages never contain secrets; command
output is truncated by :mod:`hostlib.commands` before it reaches an error.
"""

from __future__ import annotations

from typing import ClassVar


class HostStorageError(Exception):
    """Base of every error the host layer raises on purpose."""

    reason: ClassVar[str] = "Error"
    temporary: ClassVar[bool] = True

    def __init__(self, message: str) -> None:
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


class NotFound(HostStorageError):
    reason = "NotFound"


class Timeout(HostStorageError):
    reason = "Timeout"


class Waiting(HostStorageError):
    """Something this object needs is not there yet on this node: a connection not connected, a pool
    not running, a Secret not created, libvirtd restarting. Nothing was changed; the object is Pending,
    never Failed, and is retried with backoff. Subclasses name what is awaited in ``reason``."""

    reason = "Waiting"
