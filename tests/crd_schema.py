"""Checking objects against a CRD's schema the way the API server would, for the per-kind CRD tests.

``walk`` visits every schema node; ``crd_errors`` validates an object with jsonschema (the structural
part) and then runs the ``x-kubernetes-validations`` CEL rules with cel-python (``old`` for transition
rules such as immutability); ``admits`` is what the API server does on create: defaults first
(``apply_defaults``), then the schema with OpenAPI's draft-4 keywords (``exclusiveMinimum: true``), then
the rules. ``test_crds.py`` checks the CEL subset against Kubernetes' own functions.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import celpy
import jsonschema
from celpy import celtypes

SCHEMA_KEYWORDS = {
    "type", "description", "properties", "required", "items", "enum", "default", "pattern", "minLength",
    "maxLength", "minimum", "maximum", "maxItems", "maxProperties", "additionalProperties", "format",
    "x-kubernetes-validations", "x-kubernetes-map-type", "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys", "x-kubernetes-preserve-unknown-fields",
}  # fmt: skip
"""The schema keywords a structural CRD schema may use here."""

_ENV = celpy.Environment()
_DOLLAR = re.compile(r"(?<!\\)\$")


def go_regex(pattern: str) -> str:
    """``pattern`` as Go's RE2 reads it, for Python's ``re``: the API server's ``$`` matches only at the
    end of the text, Python's also before a final newline (which would let ``"/a\\n"`` through)."""
    return _DOLLAR.sub(r"\\Z", pattern)


def _matches(text: celtypes.StringType, pattern: celtypes.StringType) -> celtypes.BoolType:
    return celtypes.BoolType(re.search(go_regex(str(pattern)), str(text)) is not None)


CEL_FUNCTIONS = {"matches": _matches}


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def json_schema(node: Any) -> Any:
    """The OpenAPI schema as a JSON schema: drop the Kubernetes extensions, which jsonschema ignores, and
    read patterns as RE2 does (:func:`go_regex`)."""
    if isinstance(node, dict):
        return {
            k: go_regex(v) if k == "pattern" and isinstance(v, str) else json_schema(v)
            for k, v in node.items()
            if not k.startswith("x-kubernetes")
        }
    if isinstance(node, list):
        return [json_schema(v) for v in node]
    return node


def cel_failures(node: dict[str, Any], value: Any, old: Any = None) -> list[str]:
    """Messages of the x-kubernetes-validations rules failing on ``value`` (``old``: transition rules)."""
    out: list[str] = []
    for rule in node.get("x-kubernetes-validations", []):
        uses_old = "oldSelf" in rule["rule"]
        if uses_old and old is None:
            continue
        activation = {"self": celpy.json_to_cel(value)}
        if uses_old:
            activation["oldSelf"] = celpy.json_to_cel(old)
        if not bool(_ENV.program(_ENV.compile(rule["rule"]), functions=CEL_FUNCTIONS).evaluate(activation)):
            out.append(rule["message"])
    if isinstance(value, dict):
        for name, child in (node.get("properties") or {}).items():
            if name in value:
                out += cel_failures(child, value[name], old.get(name) if isinstance(old, dict) else None)
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        for item in value:
            out += cel_failures(node["items"], item)
    return out


def crd_errors(schema: dict[str, Any], obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Schema errors (``path: message``), else the failing CEL rules' messages; empty when accepted."""
    validator = jsonschema.Draft7Validator(json_schema(schema))
    found = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
    return found or cel_failures(schema, obj, old)


def apply_defaults(node: dict[str, Any], value: Any) -> Any:
    """Structural defaulting as the API server does it: absent properties of present objects."""
    if isinstance(value, dict):
        for name, child in (node.get("properties") or {}).items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                value[name] = apply_defaults(child, value[name])
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value:
                value[key] = apply_defaults(extra, value[key])
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        return [apply_defaults(node["items"], item) for item in value]
    return value


def prune_nulls(node: dict[str, Any], value: Any) -> Any:
    """Object fields set to null are dropped before defaulting unless ``nullable`` ("Defaulting and
    Nullable" in the CustomResourceDefinition docs)."""
    if isinstance(value, dict):
        props = node.get("properties") or {}
        extra = node.get("additionalProperties")
        out = {}
        for key, item in value.items():
            child = props.get(key, extra if isinstance(extra, dict) else {})
            if item is None and not child.get("nullable"):
                continue
            out[key] = prune_nulls(child, item)
        return out
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [prune_nulls(node["items"], item) for item in value]
    return value


def admits(schema: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    """Why the API server would refuse to create ``obj`` (empty: admitted): nulls pruned, defaulting,
    the OpenAPI schema (draft 4, as Kubernetes reads ``exclusiveMinimum``), then the CEL rules."""
    defaulted = apply_defaults(schema, prune_nulls(schema, copy.deepcopy(obj)))
    validator = jsonschema.Draft4Validator(json_schema(schema))
    found = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(defaulted)]
    return found or cel_failures(schema, defaulted)
