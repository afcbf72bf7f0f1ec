"""The one node selector: a ``metav1.LabelSelector`` parsed and checked in full, and matched.

Every kind's ``spec.nodeSelector`` is parsed here into a frozen :class:`NodeSelector` kept in the kind's
spec; the agent's "does this object apply to my node" and the cluster controller's roll-up ("which
nodes are selected") both call :meth:`NodeSelector.matches` on it, so the two can never disagree.
The limits are those of crds/*.yaml (``maxProperties``, ``maxItems``, ``maxLength``; pinned by
tests/test_spec_agreement.py) and Kubernetes' own label syntax.

No imports beyond the standard library: the cluster controller uses this without the host stack. A
malformed selector raises :class:`SelectorError` naming the field; the kinds' parsers turn it into
``InvalidSpec`` (the agent reports it; it never guesses "every node").
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

MAX_LABELS = 64
MAX_EXPRESSIONS = 32
MAX_VALUES = 64
MAX_KEY = 317
"""A label key: an optional DNS-subdomain prefix (253) and '/', then a name (63)."""
MAX_VALUE = 63
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")

_KEY_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_KEY_RE = re.compile(rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_KEY_NAME}$")
_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


class SelectorError(ValueError):
    """The selector is malformed; ``field`` is the dotted path of the offending part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclasses.dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "In":
            return present and labels[self.key] in self.values
        if self.operator == "NotIn":
            return not present or labels[self.key] not in self.values
        if self.operator == "Exists":
            return present
        return not present


@dataclasses.dataclass(frozen=True)
class NodeSelector:
    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Standard LabelSelector semantics (all requirements ANDed); the empty selector matches all."""
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
        )


def _type_name(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _mapping(value: object, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SelectorError(field, f"must be an object, got {_type_name(value)}")
    return value


def _key(value: object, field: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_KEY or not _KEY_RE.match(value):
        raise SelectorError(field, f"{value!r} is not a valid label key")
    return value


def _value(value: object, field: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_VALUE or not _VALUE_RE.match(value):
        raise SelectorError(field, f"{value!r} is not a valid label value")
    return value


def parse(value: object, field: str = "spec.nodeSelector") -> NodeSelector:
    """A LabelSelector (absent or empty: every node) -> :class:`NodeSelector`; SelectorError when bad."""
    if value is None:
        return NodeSelector()
    sel = _mapping(value, field)
    for name in sel:
        if name not in ("matchLabels", "matchExpressions"):
            raise SelectorError(f"{field}.{name}", "unknown field (allowed: matchLabels, matchExpressions)")
    labels: list[tuple[str, str]] = []
    if sel.get("matchLabels") is not None:
        lfield = f"{field}.matchLabels"
        raw = _mapping(sel["matchLabels"], lfield)
        if len(raw) > MAX_LABELS:
            raise SelectorError(lfield, f"has {len(raw)} labels, the limit is {MAX_LABELS}")
        for key, val in raw.items():
            kfield = f"{lfield}[{key!r}]"
            labels.append((_key(key, kfield), _value(val, kfield)))
    exprs: list[Requirement] = []
    if sel.get("matchExpressions") is not None:
        efield = f"{field}.matchExpressions"
        raw_list = sel["matchExpressions"]
        if not isinstance(raw_list, list):
            raise SelectorError(efield, f"must be a list, got {_type_name(raw_list)}")
        if len(raw_list) > MAX_EXPRESSIONS:
            raise SelectorError(efield, f"has {len(raw_list)} items, the limit is {MAX_EXPRESSIONS}")
        for i, item in enumerate(raw_list):
            exprs.append(_requirement(item, f"{efield}[{i}]"))
    return NodeSelector(tuple(labels), tuple(exprs))


def _requirement(item: object, field: str) -> Requirement:
    expr = _mapping(item, field)
    for name in expr:
        if name not in ("key", "operator", "values"):
            raise SelectorError(f"{field}.{name}", "unknown field (allowed: key, operator, values)")
    if "key" not in expr:
        raise SelectorError(f"{field}.key", "is required")
    key = _key(expr["key"], f"{field}.key")
    op = expr.get("operator")
    if op not in OPERATORS:
        raise SelectorError(f"{field}.operator", f"{op!r} is not one of {', '.join(OPERATORS)}")
    raw = expr.get("values")
    vfield = f"{field}.values"
    if raw is not None and not isinstance(raw, list):
        raise SelectorError(vfield, f"must be a list of strings, got {_type_name(raw)}")
    values = list(raw or ())
    if len(values) > MAX_VALUES:
        raise SelectorError(vfield, f"has {len(values)} items, the limit is {MAX_VALUES}")
    if op in ("In", "NotIn") and not values:
        raise SelectorError(vfield, f"must not be empty for operator {op}")
    if op in ("Exists", "DoesNotExist") and values:
        raise SelectorError(vfield, f"must be empty for operator {op}")
    return Requirement(key, str(op), tuple(_value(v, f"{vfield}[{i}]") for i, v in enumerate(values)))


def matches(value: object, labels: Mapping[str, str]) -> bool:
    """:func:`parse` then :meth:`NodeSelector.matches` (SelectorError when malformed)."""
    return parse(value).matches(labels)
