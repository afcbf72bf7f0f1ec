"""Checking objects against a CRD's schema the way the API server would, for the per-kind CRD tests.

``walk`` visits every schema node; ``crd_errors`` validates an object with jsonschema (the structural
part) and then runs the ``x-kubernetes-validations`` CEL rules with cel-python (``old`` for transition
rules such as immutability). ``test_crds.py`` checks the CEL subset against Kubernetes' own functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import celpy
import jsonschema

SCHEMA_KEYWORDS = {
    "type", "description", "properties", "required", "items", "enum", "default", "pattern", "minLength",
    "maxLength", "minimum", "maximum", "maxItems", "maxProperties", "additionalProperties", "format",
    "x-kubernetes-validations", "x-kubernetes-map-type", "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys", "x-kubernetes-preserve-unknown-fields",
}  # fmt: skip
"""The schema keywords a structural CRD schema may use here."""

_ENV = celpy.Environment()


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def json_schema(node: Any) -> Any:
    """The OpenAPI schema as a JSON schema: drop the Kubernetes extensions, which jsonschema ignores."""
    if isinstance(node, dict):
        return {k: json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
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
        if not bool(_ENV.program(_ENV.compile(rule["rule"])).evaluate(activation)):
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
