"""Rendering per-node results for people (``table``) and programs (``json``, ``yaml``).

``json`` and ``yaml`` print one list of objects, each :meth:`reconcilers.status.NodeResult.to_dict`
(``kind``, ``name``, ``phase``, ``ready``, ``reason``, ``message``, the kind's detail block,
``conditions``, ``changed``, and ``actions`` when planned). Secrets never reach a result, so nothing
here needs to redact.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from reconcilers import status

FORMATS = ("table", "yaml", "json")
# Keys of a detail block that name where the object lives on the host, in order of preference.
_TARGET_KEYS = ("mountPoint", "devicePath", "path", "libvirtName", "target")
_MESSAGE_WIDTH = 80


def render(results: Sequence[status.NodeResult], fmt: str, *, with_actions: bool = False) -> str:
    items = [r.to_dict(with_actions=with_actions) for r in results]
    if fmt == "json":
        return json.dumps(items, indent=2, sort_keys=False) + "\n"
    if fmt == "yaml":
        return str(yaml.safe_dump(items, sort_keys=False, default_flow_style=False))
    return table(results, with_actions=with_actions)


def _target(detail: Mapping[str, Any]) -> str:
    for key in _TARGET_KEYS:
        value = detail.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _one_line(text: str, width: int = _MESSAGE_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def table(results: Sequence[status.NodeResult], *, with_actions: bool = False) -> str:
    if not results:
        return "No objects.\n"
    header = ("KIND", "NAME", "PHASE", "READY", "REASON", "TARGET", "MESSAGE")
    rows = [
        (
            r.kind,
            r.name,
            r.phase,
            "True" if r.ready else "False",
            r.reason,
            _target(r.detail),
            _one_line(r.message),
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    lines = []
    for row in (header, *rows):
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("   ".join([*cells, row[-1]]).rstrip())
    if with_actions:
        for r in results:
            if not r.actions:
                continue
            lines.append("")
            lines.append(f"{r.kind}/{r.name} would:")
            for a in r.actions:
                argv = f"  [{' '.join(a.argv)}]" if a.argv else ""
                lines.append(f"  - {a.verb}: {a.description}{argv}")
    return "\n".join(lines) + "\n"
