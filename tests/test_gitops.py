"""The Argo CD health checks in docs/gitops.md say what the controller's status means.

The Lua is taken from the document itself and run with Lua 5.1 (lupa; Argo CD uses gopher-lua, a Lua
5.1) on parents whose status comes from the real roll-up (``controller.rollup.rollup``) over node
results: all ready, one failing, still applying a new generation, nothing selected, never rolled up.
"""

from __future__ import annotations

import datetime
import pathlib
import re
from typing import Any

import pytest

from controller import registry, rollup

PHASES = rollup.phases_of(registry.row("StorageConnection"))

lupa51 = pytest.importorskip("lupa.lua51", reason="lupa (a dev dependency) is not installed")

pytestmark = pytest.mark.packaging

DOC = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "gitops.md").read_text()
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def lua_script(marker: str) -> str:
    """The block-scalar script in the document whose first line is the ``-- marker`` comment."""
    match = re.search(rf"\|\n(\s+)-- {re.escape(marker)}\n(.*?)(?=\n\s*\S+:\s*\||\n```)", DOC, re.S)
    assert match, f"no Lua script marked {marker!r} in docs/gitops.md"
    indent = match.group(1)
    lines = [f"{indent}-- {marker}", *match.group(2).splitlines()]
    return "\n".join(line.removeprefix(indent) for line in lines)


def health(script: str, obj: dict[str, Any]) -> tuple[str, str]:
    lua = lupa51.LuaRuntime(unpack_returned_tuples=True)
    run = lua.eval(f"function(obj)\n{script}\nend")

    def to_lua(value: Any) -> Any:
        if isinstance(value, dict):
            return lua.table_from({k: to_lua(v) for k, v in value.items()})
        if isinstance(value, list):
            return lua.table_from([to_lua(v) for v in value])
        return value

    result = run(to_lua(obj))
    return str(result["status"]), str(result["message"])


def parent(generation: int, status: dict[str, Any] | None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "hoststorage.io/v1alpha1",
        "kind": "StorageConnection",
        "metadata": {"name": "shared", "generation": generation, "uid": "u1"},
        "spec": {"type": "nfs"},
    }
    if status is not None:
        obj["status"] = status
    return obj


def child(node: str, phase: str, generation: int, reason: str = "", message: str = "") -> dict[str, Any]:
    ready = phase in PHASES.ready
    return {
        "spec": {"nodeName": node, "parentRef": {"kind": "StorageConnection", "name": "shared", "uid": "u1"}},
        "status": {
            "phase": phase,
            "observedGeneration": generation,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "reason": reason or phase,
                    "message": message,
                }
            ],
        },
    }


NODES = {
    n: rollup.NodeInfo.from_node(
        {
            "metadata": {"name": n, "labels": {}},
            "status": {
                "conditions": [
                    {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
                ]
            },
        }
    )
    for n in ("a", "b", "c")
}


def rolled(
    generation: int, children: list[dict[str, Any]], nodes: dict[str, Any] | None = None
) -> dict[str, Any]:
    p = parent(generation, None)
    status = rollup.rollup(p, children, NODES if nodes is None else nodes, now=NOW, phases=PHASES)
    return parent(generation, status)


SCRIPT = lua_script("hoststorage-health")


def test_all_nodes_ready_is_healthy() -> None:
    obj = rolled(2, [child(n, "Connected", 2) for n in "abc"])
    assert health(SCRIPT, obj) == ("Healthy", "3/3 nodes ready")


def test_a_failing_node_is_degraded_and_named() -> None:
    obj = rolled(
        2,
        [
            child("a", "Connected", 2),
            child("b", "Connected", 2),
            child("c", "Failed", 2, "MountFailed", "mount.nfs: access denied"),
        ],
    )
    status, message = health(SCRIPT, obj)
    assert status == "Degraded"
    assert "2/3" in message and "c" in message and "MountFailed" in message


def test_nodes_still_applying_are_progressing() -> None:
    obj = rolled(3, [child("a", "Connected", 3), child("b", "Connected", 2), child("c", "Pending", 3)])
    assert health(SCRIPT, obj)[0] == "Progressing"


def test_a_new_generation_not_yet_rolled_up_is_progressing() -> None:
    obj = rolled(2, [child(n, "Connected", 2) for n in "abc"])
    obj["metadata"]["generation"] = 3
    status, message = health(SCRIPT, obj)
    assert status == "Progressing" and "generation 3" in message


def test_no_status_yet_is_progressing() -> None:
    assert health(SCRIPT, parent(1, None))[0] == "Progressing"


def test_nothing_selected_is_healthy() -> None:
    obj = rolled(1, [], nodes={})
    assert health(SCRIPT, obj) == ("Healthy", "0/0 nodes ready")


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        ("Connected", "Healthy"),
        ("Running", "Healthy"),
        ("Healthy", "Healthy"),
        ("Detached", "Healthy"),
        ("Failed", "Degraded"),
        ("TeardownFailed", "Degraded"),
        ("Invalid", "Degraded"),
        ("Degraded", "Degraded"),
        ("Pending", "Progressing"),
        ("Unknown", "Progressing"),
        ("Detaching", "Progressing"),
    ],
)
def test_node_state_health(phase: str, expected: str) -> None:
    script = lua_script("hoststorage-node-health")
    assert health(script, {"status": {"phase": phase}}) == (expected, phase)
