"""What a plan lists: one host change, described well enough for ``--dry-run`` and for logs."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Action:
    """One planned host change. ``argv`` is the exact command when the change is a command."""

    verb: str
    description: str
    argv: tuple[str, ...] | None = None
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"verb": self.verb, "description": self.description}
        if self.argv is not None:
            out["argv"] = list(self.argv)
        if self.path is not None:
            out["path"] = self.path
        return out
