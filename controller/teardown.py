"""The agent's teardown policy: what happens to this node's record of a parent that no longer applies.

A parent stops applying on a node when it is deleted, is being deleted, or no longer selects the node.
The kind's ``teardown`` undoes the host state (:func:`reconcilers.status.teardown`: Detached, Detaching
or TeardownFailed); this module decides, purely, what becomes of the StorageNodeState:

- the parent is gone: the record goes once Detached (the controller sweeps it as well); before that
  there is nothing to write it about;
- the node is no longer selected: the record goes once Detached (the node is not part of it any more);
- nothing was ever here and there is no record: nothing to write;
- otherwise the record shows the teardown's phase (Detaching, TeardownFailed, or Detached while the
  parent is being deleted, which is what releases the controller's finalizer).
"""

from __future__ import annotations

import enum
from typing import Any

from controller import registry

DELETED = "deleted"
DELETING = "deleting"
NOT_SELECTED = "not selected"


class Record(enum.Enum):
    DELETE = "delete"
    WRITE = "write"
    KEEP = "keep"
    """Nothing to write and nothing to delete."""


def record_action(*, parent_exists: bool, why: str, phase: str, had_entry: bool, have_record: bool) -> Record:
    """What to do with this node's record after a teardown step (see the module docstring)."""
    detached = phase == registry.DETACHED
    if not parent_exists or (why == NOT_SELECTED and detached):
        return Record.DELETE if detached and have_record else Record.KEEP
    if not had_entry and not have_record:
        return Record.KEEP
    return Record.WRITE


def nothing_here(detail_key: str, why: str) -> dict[str, Any]:
    """The status of a parent this node never made anything for."""
    return {
        "phase": registry.DETACHED,
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": registry.DETACHED,
                "message": f"nothing here ({why})",
            }
        ],
        detail_key: {},
    }


def retry(phase: str, result_retry: bool) -> bool:
    """A teardown that is not Detached keeps going: the InUse user may go away, the storage may come back."""
    return result_retry or phase != registry.DETACHED
