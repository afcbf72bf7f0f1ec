"""Every condition reason the code can emit is in docs/troubleshooting.md's "Condition reasons" table,
and every reason there is one the code emits (no stale rows).

The code's reasons are found by reading the source (``ast``), in every form a reason is written:
an error class's ``reason`` attribute, a ``Reason`` enum member, the third argument of a result's
``make(...)`` or a parent condition's ``_cond(...)``, a ``reason=`` keyword, an assignment to ``reason``
(both sides of a conditional expression included). The few reasons computed at run time are listed
here with where they come from.
"""

from __future__ import annotations

import ast
import pathlib
import sys
from collections.abc import Iterator

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import soak_model  # noqa: E402

PACKAGES = ("controller", "reconcilers", "hostlib")
COMPUTED = {"Degraded", "Inaccessible"}
"""reconcilers/storage_pool.py: libvirt's pool state ``degraded``/``inaccessible``, capitalized."""
NOT_REASONS = {"controller/kubectl_plugin.py"}
"""The kubectl plugin reads reasons (``reason=...`` filters) and emits none."""


def _literals(node: ast.AST) -> Iterator[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, ast.IfExp):
        yield from _literals(node.body)
        yield from _literals(node.orelse)


def _reasons_in(tree: ast.AST) -> Iterator[str]:
    for n in ast.walk(tree):
        if isinstance(n, ast.Call):
            fn = n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
            if fn in ("make", "_cond") and len(n.args) >= 3:
                yield from _literals(n.args[2])
            for k in n.keywords:
                if k.arg == "reason":
                    yield from _literals(k.value)
        elif isinstance(n, (ast.Assign, ast.AnnAssign)):
            targets = n.targets if isinstance(n, ast.Assign) else [n.target]
            for t in targets:
                if isinstance(t, ast.Name) and t.id == "reason" and n.value is not None:
                    yield from _literals(n.value)
                elif (
                    isinstance(t, ast.Tuple)
                    and t.elts
                    and isinstance(t.elts[0], ast.Name)
                    and t.elts[0].id == "reason"
                    and isinstance(n.value, ast.Tuple)
                ):
                    yield from _literals(n.value.elts[0])
        elif isinstance(n, ast.ClassDef) and n.name.endswith("Reason"):
            for b in n.body:
                if isinstance(b, ast.Assign):
                    yield from _literals(b.value)


def code_reasons() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).glob("*.py")):
            rel = str(path.relative_to(ROOT))
            if rel in NOT_REASONS:
                continue
            for reason in _reasons_in(ast.parse(path.read_text(encoding="utf-8"))):
                if reason:
                    found.setdefault(reason, set()).add(rel)
    for reason in COMPUTED:
        found.setdefault(reason, set()).add("reconcilers/storage_pool.py")
    return found


def documented() -> set[str]:
    return soak_model.documented_reasons(soak_model.REASONS_DOC.read_text(encoding="utf-8"))


def test_every_reason_the_code_emits_is_documented() -> None:
    missing = {r: sorted(w) for r, w in code_reasons().items() if r not in documented()}
    assert missing == {}, f"add these to docs/troubleshooting.md, 'Condition reasons': {missing}"


def test_every_documented_reason_is_one_the_code_emits() -> None:
    assert sorted(documented() - set(code_reasons())) == []


def test_the_scan_sees_each_way_a_reason_is_written() -> None:
    source = """
class E(Exception):
    reason = "FromClass"
class MyReason:
    X = "FromEnum"
RESULTS.make(n, p, "FromMake" if a else "FromElse", m)
_cond("Ready", False, "FromCond", m)
post(reason="FromKeyword")
reason, message = "FromTuple", "m"
"""
    assert set(_reasons_in(ast.parse(source))) == {
        "FromClass",
        "FromEnum",
        "FromMake",
        "FromElse",
        "FromCond",
        "FromKeyword",
        "FromTuple",
    }
    assert {"InvalidSpec", "Connected", "NodesFailed", "CheckSucceeded"} <= set(code_reasons())
