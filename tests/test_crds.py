"""Every CRD in crds/: valid, structural, the chart's copy identical, and every CEL rule exercised.

The API server is not available here, so this file does what it would do with these CRDs:
- validates each CRD object against the apiextensions schema of a current release (kubernetes-validate);
- checks the structural-schema rules apiextensions v1 enforces (every node typed, no ``properties``
  beside ``additionalProperties``, no ``uniqueItems``/``$ref``, defaults valid for their node, list-map
  keys required), because a non-structural schema is rejected at install time;
- admits objects the way the API server does: defaults applied, the OpenAPI schema checked
  (jsonschema), then every ``x-kubernetes-validations`` rule evaluated with cel-python on the node it
  sits on, with ``oldSelf`` for transition rules on updates. Kubernetes' CEL library functions that
  cel-python lacks are provided below with Kubernetes' semantics.
Each rule must be seen to hold on a good object and to fail, with its own message, on a bad one; a rule
added to a CRD without a case here fails :func:`test_every_cel_rule_is_exercised`.
"""

from __future__ import annotations

import copy
import pathlib
import re
import subprocess
from collections.abc import Callable
from typing import Any

import celpy
import crd_schema
import jsonschema
import kubernetes_validate
import pytest
import yaml
from celpy import celtypes

from controller import registry

pytestmark = pytest.mark.packaging

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRD_DIR = ROOT / "crds"
CHART_CRD_DIR = ROOT / "charts" / "hoststorage" / "crds"
GROUP = "hoststorage.io"
# DESIGN.md's API table.
SHORT_NAMES = {
    "StorageConnection": "sconn",
    "StoragePool": "spool",
    "DomainMonitor": "dmon",
    "StorageNodeState": "sns",
}


def load_crds() -> dict[str, dict[str, Any]]:
    crds = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        crds[doc["spec"]["names"]["kind"]] = doc
    return crds


CRDS = load_crds()


def schema_of(kind: str) -> dict[str, Any]:
    versions = CRDS[kind]["spec"]["versions"]
    storage = next(v for v in versions if v.get("storage"))
    schema: dict[str, Any] = storage["schema"]["openAPIV3Schema"]
    return schema


# ---- the chart's copy


def test_chart_crds_are_byte_for_byte_the_ones_in_crds() -> None:
    sources = {p.name: p.read_bytes() for p in CRD_DIR.glob("*.yaml")}
    copies = {p.name: p.read_bytes() for p in CHART_CRD_DIR.glob("*.yaml")}
    assert sources, "no CRDs in crds/"
    assert sorted(copies) == sorted(sources), "run scripts/sync_chart_crds.sh"
    for name, data in sources.items():
        assert copies[name] == data, f"charts/hoststorage/crds/{name} differs: run scripts/sync_chart_crds.sh"
    check = subprocess.run(
        ["bash", str(ROOT / "scripts" / "sync_chart_crds.sh"), "--check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


# ---- the CRD objects


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_crd_is_valid_for_a_current_kubernetes(kind: str) -> None:
    try:
        kubernetes_validate.validate(CRDS[kind], kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{kind}: {exc.message}")


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_crd_names_follow_the_design(kind: str) -> None:
    crd = CRDS[kind]
    spec = crd["spec"]
    names = spec["names"]
    assert spec["group"] == GROUP and spec["scope"] == "Cluster"
    assert names["plural"] == kind.lower() + "s" and names["singular"] == kind.lower()
    assert crd["metadata"]["name"] == f"{names['plural']}.{GROUP}"
    assert "hoststorage" in names.get("categories", [])
    if kind in SHORT_NAMES:
        assert SHORT_NAMES[kind] in names.get("shortNames", [])
    assert [v["name"] for v in spec["versions"] if v.get("storage")] == ["v1alpha1"]
    for version in spec["versions"]:
        assert version.get("subresources", {}).get("status") == {}, "status must be a subresource"
        for column in version.get("additionalPrinterColumns", []):
            assert column["jsonPath"].startswith("."), column


STRUCTURAL_FORBIDDEN = {"$ref", "definitions", "dependencies", "additionalItems", "patternProperties", "id"}


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_schema_is_structural(kind: str) -> None:
    root = schema_of(kind)
    assert root.get("type") == "object"
    meta = root.get("properties", {}).get("metadata", {})
    assert set(meta) <= {"type", "description", "properties"}, "metadata may only restrict name/generateName"
    assert set(meta.get("properties", {})) <= {"name", "generateName"}
    for path, node in crd_schema.walk(root):
        where = f"{kind}{path or '.'}"
        assert not STRUCTURAL_FORBIDDEN & set(node), f"{where}: {STRUCTURAL_FORBIDDEN & set(node)}"
        exempt = node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        assert node.get("type") or exempt, f"{where}: every node needs a type"
        assert not ("properties" in node and "additionalProperties" in node), (
            f"{where}: both properties kinds"
        )
        assert node.get("uniqueItems") is not True, f"{where}: uniqueItems is not allowed"
        for combinator in ("allOf", "anyOf", "oneOf", "not"):
            for sub in node.get(combinator, []) if combinator != "not" else [node.get("not") or {}]:
                assert not {"type", "default", "description", "additionalProperties"} & set(sub), where
        if node.get("type") == "array":
            assert isinstance(node.get("items"), dict), f"{where}: arrays need one items schema"
        if node.get("x-kubernetes-list-type") == "map":
            item = node["items"]
            for key in node.get("x-kubernetes-list-map-keys", []):
                assert key in item.get("required", []) or "default" in item["properties"][key], where
        if "default" in node:
            jsonschema.Draft4Validator(crd_schema.json_schema(node)).validate(node["default"])
        if "enum" in node and node.get("type") == "string":
            assert all(isinstance(v, str) for v in node["enum"]), where


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_cel_rules_have_bounded_inputs(kind: str) -> None:
    """The API server estimates each rule's cost from maxLength / maxItems and refuses the CRD when a
    rule on an unbounded string or inside an unbounded list could exceed the budget; keep them bounded."""

    def visit(node: dict[str, Any], path: str, unbounded_list: str | None) -> None:
        rules = [r["rule"] for r in node.get("x-kubernetes-validations", []) or []]
        if rules:
            assert unbounded_list is None, (
                f"{kind}{path}: rules inside {unbounded_list}, which has no maxItems"
            )
            if node.get("type") == "string" and "enum" not in node:
                assert "maxLength" in node, f"{kind}{path}: a rule on a string without maxLength"
        for name, child in (node.get("properties") or {}).items():
            visit(child, f"{path}.{name}", unbounded_list)
        if isinstance(node.get("items"), dict):
            bounded = "maxItems" in node
            visit(node["items"], f"{path}[]", unbounded_list if bounded else (unbounded_list or path))

    visit(schema_of(kind), "", None)


# ---- admission: defaults, OpenAPI schema, CEL


apply_defaults = crd_schema.apply_defaults


# Kubernetes' CEL extension library (k8s.io/apiserver/pkg/cel/library and cel-go ext/strings), the
# parts cel-python lacks; semantics as documented there.
def _split(text: celtypes.StringType, sep: celtypes.StringType) -> celtypes.ListType:
    return celtypes.ListType([celtypes.StringType(p) for p in str(text).split(str(sep))])


def _lower_ascii(text: celtypes.StringType) -> celtypes.StringType:
    return celtypes.StringType("".join(c.lower() if c.isascii() else c for c in str(text)))


def _upper_ascii(text: celtypes.StringType) -> celtypes.StringType:
    return celtypes.StringType("".join(c.upper() if c.isascii() else c for c in str(text)))


def _trim(text: celtypes.StringType) -> celtypes.StringType:
    return celtypes.StringType(str(text).strip())


def _join(items: celtypes.ListType, sep: celtypes.StringType | None = None) -> celtypes.StringType:
    return celtypes.StringType(str(sep or "").join(str(i) for i in items))


K8S_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "split": _split,
    "lowerAscii": _lower_ascii,
    "upperAscii": _upper_ascii,
    "trim": _trim,
    "join": _join,
}

CEL_ENV = celpy.Environment()
_PROGRAMS: dict[str, Any] = {}


def program(rule: str) -> Any:
    if rule not in _PROGRAMS:
        _PROGRAMS[rule] = CEL_ENV.program(CEL_ENV.compile(rule), functions=K8S_FUNCTIONS)
    return _PROGRAMS[rule]


class Evaluation:
    """What admitting objects showed about each rule: (kind, path, rule) -> outcomes seen."""

    def __init__(self) -> None:
        self.held: set[tuple[str, str, str]] = set()
        self.failed: set[tuple[str, str, str]] = set()


SEEN = Evaluation()


def cel_violations(kind: str, new: Any, old: Any = None) -> list[str]:
    """Messages of every rule that does not hold for ``new`` (an update from ``old`` if given)."""
    messages: list[str] = []

    def visit(node: dict[str, Any], value: Any, old_value: Any, path: str, correlated: bool) -> None:
        for rule_def in node.get("x-kubernetes-validations", []) or []:
            rule = rule_def["rule"]
            transition = "oldSelf" in rule
            if transition and (not correlated or old_value is None):
                continue  # transition rules run on updates of correlatable values only
            activation = {"self": celpy.json_to_cel(value)}
            if transition:
                activation["oldSelf"] = celpy.json_to_cel(old_value)
            key = (kind, path, rule)
            try:
                ok = bool(program(rule).evaluate(activation))
            except celpy.CELEvalError as exc:
                pytest.fail(f"{kind}{path}: rule {rule!r} cannot be evaluated: {exc}")
            (SEEN.held if ok else SEEN.failed).add(key)
            if not ok:
                messages.append(rule_def.get("message") or f"failed rule: {rule}")
        if isinstance(value, dict):
            for name, child in (node.get("properties") or {}).items():
                if name in value:
                    child_old = old_value.get(name) if isinstance(old_value, dict) else None
                    visit(child, value[name], child_old, f"{path}.{name}", correlated)
        elif isinstance(value, list) and isinstance(node.get("items"), dict):
            # Items of atomic lists are not correlated with old items.
            for item in value:
                visit(node["items"], item, None, f"{path}[]", False)

    visit(schema_of(kind), new, old, "", True)
    return messages


def admit(kind: str, spec: dict[str, Any], old_spec: dict[str, Any] | None = None) -> list[str]:
    """Default, schema-check and CEL-check an object with this spec; the CEL messages that fail."""
    schema = schema_of(kind)

    def manifest(s: dict[str, Any]) -> dict[str, Any]:
        obj = {
            "apiVersion": f"{GROUP}/v1alpha1",
            "kind": kind,
            "metadata": {"name": "x"},
            "spec": copy.deepcopy(s),
        }
        return apply_defaults(schema, obj)

    new = manifest(spec)
    validator = jsonschema.Draft4Validator(crd_schema.json_schema(schema))
    errors = sorted(e.message for e in validator.iter_errors(new))
    assert not errors, f"{kind} spec {spec} fails the OpenAPI schema (the case must test CEL): {errors}"
    old = manifest(old_spec) if old_spec is not None else None
    return cel_violations(kind, new, old)


SELECTOR_GOOD = {
    "matchLabels": {"storage": "yes"},
    "matchExpressions": [
        {"key": "zone", "operator": "In", "values": ["a", "b"]},
        {"key": "gpu", "operator": "DoesNotExist"},
    ],
}
SELECTOR_BAD = [
    {"matchExpressions": [{"key": "zone", "operator": "In"}]},
    {"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": []}]},
    {"matchExpressions": [{"key": "zone", "operator": "Exists", "values": ["a"]}]},
]
SELECTOR_MESSAGE = "values must be non-empty for In and NotIn"

NFS = {"server": "nfs.example.com", "export": "/exports/data", "version": "4.2"}
POSIXFS = {"source": "/dev/disk/by-uuid/0c1e", "vfsType": "ext4"}
GLUSTERFS = {"server": "gluster1", "volume": "vol0", "backupServers": ["gluster2"]}
ISCSI = {"portal": "10.0.0.5:3260", "target": "iqn.2003-01.org.example:disk1", "lun": 0}
LOCALFS = {"path": "/srv/storage/dom..ain"}
NUMERIC = "an all-numeric host must be an IPv4 address"
LONG = "a host name is at most 253 characters"
LONG_HOST = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 62])  # 254 characters, every label valid

# kind -> (good specs, bad specs with the message that must fail, updates (old, new, message or None))
Case = tuple[dict[str, Any], str]
CASES: dict[str, dict[str, Any]] = {
    "StorageConnection": {
        "good": [
            {"type": "nfs", "nfs": NFS, "nodeSelector": SELECTOR_GOOD},
            {"type": "posixfs", "posixfs": POSIXFS},
            {"type": "posixfs", "posixfs": {"source": "server:/export/a..b", "vfsType": "cifs"}},
            {"type": "glusterfs", "glusterfs": GLUSTERFS},
            {"type": "iscsi", "iscsi": ISCSI},
            {"type": "localfs", "localfs": LOCALFS, "deletionPolicy": "Retain"},
        ],
        "bad": [
            ({"type": "nfs"}, "spec.nfs must be set when type is nfs"),
            (
                {"type": "nfs", "nfs": NFS, "posixfs": POSIXFS},
                "spec.posixfs must be set when type is posixfs",
            ),
            ({"type": "posixfs", "nfs": NFS}, "spec.nfs must be set when type is nfs"),
            ({"type": "posixfs"}, "spec.posixfs must be set when type is posixfs"),
            ({"type": "glusterfs", "localfs": LOCALFS}, "spec.glusterfs must be set when type is glusterfs"),
            ({"type": "iscsi", "glusterfs": GLUSTERFS}, "spec.iscsi must be set when type is iscsi"),
            ({"type": "localfs", "iscsi": ISCSI}, "spec.localfs must be set when type is localfs"),
            ({"type": "nfs", "nfs": {**NFS, "export": "/exports/../etc"}}, "export must not contain"),
            ({"type": "nfs", "nfs": {**NFS, "export": "/exports/.."}}, "export must not contain"),
            ({"type": "posixfs", "posixfs": {**POSIXFS, "source": "srv:/a/../b"}}, "source must not contain"),
            ({"type": "localfs", "localfs": {"path": "/srv/../etc"}}, "path must not contain"),
            *(({"type": "nfs", "nfs": NFS, "nodeSelector": s}, SELECTOR_MESSAGE) for s in SELECTOR_BAD),
            ({"type": "nfs", "nfs": {**NFS, "server": "999.1.1.1"}}, NUMERIC),
            ({"type": "nfs", "nfs": {**NFS, "server": LONG_HOST}}, LONG),
            ({"type": "glusterfs", "glusterfs": {**GLUSTERFS, "server": "10.0.0.256"}}, NUMERIC),
            ({"type": "glusterfs", "glusterfs": {**GLUSTERFS, "server": LONG_HOST}}, LONG),
            ({"type": "glusterfs", "glusterfs": {**GLUSTERFS, "backupServers": ["1.2.3"]}}, NUMERIC),
            ({"type": "glusterfs", "glusterfs": {**GLUSTERFS, "backupServers": [LONG_HOST]}}, LONG),
            ({"type": "iscsi", "iscsi": {**ISCSI, "portal": "300.0.0.5:3260"}}, NUMERIC),
            ({"type": "iscsi", "iscsi": {**ISCSI, "portal": f"{LONG_HOST}:3260"}}, LONG),
            ({"type": "posixfs", "posixfs": {**POSIXFS, "source": "server"}}, "an absolute device"),
            ({"type": "posixfs", "posixfs": {**POSIXFS, "source": "1.2.3.999:/x"}}, NUMERIC),
            ({"type": "posixfs", "posixfs": {**POSIXFS, "source": f"{LONG_HOST}:/x"}}, LONG),
            ({"type": "posixfs", "posixfs": {**POSIXFS, "vfsType": "glusterfs"}}, "never a posixfs type"),
            ({"type": "posixfs", "posixfs": {**POSIXFS, "vfsType": "fuse.sshfs"}}, "never a posixfs type"),
        ],
        "updates": [
            ({"type": "nfs", "nfs": NFS}, {"type": "nfs", "nfs": {**NFS, "version": "3"}}, None),
            ({"type": "nfs", "nfs": NFS}, {"type": "posixfs", "posixfs": POSIXFS}, "type is immutable"),
        ],
    },
    "StoragePool": {
        "good": [
            {"dir": {"path": "/srv/pools/images"}, "nodeSelector": SELECTOR_GOOD},
            {"fs": {"device": "/dev/vdb1", "format": "ext4"}},
            {"netfs": {"host": "gluster1", "dir": "/vol0", "format": "glusterfs"}},
            {"connectionRef": {"name": "shared-nfs", "path": "images/v..1"}, "libvirtName": "images"},
            {
                "iscsiDirect": {
                    "host": "10.0.0.5",
                    "target": "iqn.2003-01.org.example:disk1",
                    "initiator": "iqn.2024-01.org.example:node1",
                    "chapSecretRef": {"name": "chap"},
                }
            },
            {"iscsi": {"host": "10.0.0.5", "target": "iqn.2003-01.org.example:disk1"}},
            {"logical": {"vgName": "vg0", "devices": ["/dev/vdc"]}},
        ],
        "bad": [
            ({"autostart": True}, "exactly one of connectionRef, dir, fs"),
            (
                {"dir": {"path": "/srv/a"}, "fs": {"device": "/dev/vdb"}},
                "exactly one of connectionRef, dir, fs",
            ),
            ({"dir": {"path": "/srv/pools/../../etc"}}, "path must not contain"),
            ({"connectionRef": {"name": "c", "path": "a/../../b"}}, "path must not contain"),
            ({"fs": {"device": "/dev/../etc/shadow"}}, "device must not contain"),
            ({"netfs": {"host": "g1", "dir": "/vol/.."}}, "dir must not contain"),
            *(({"dir": {"path": "/srv/a"}, "nodeSelector": s}, SELECTOR_MESSAGE) for s in SELECTOR_BAD),
            ({"fs": {"device": "/dev/./"}}, "device must name something under /dev"),
            ({"logical": {"vgName": "vg0", "devices": ["/dev/a/../b"]}}, "a device must not contain"),
            ({"logical": {"vgName": "vg0", "devices": ["/dev//."]}}, "a device must name something"),
            ({"logical": {"vgName": ".."}}, "vgName must not be . or .."),
            ({"netfs": {"host": "1.1.1.1.1", "dir": "/vol"}}, NUMERIC),
            ({"netfs": {"host": LONG_HOST, "dir": "/vol"}}, LONG),
            ({"iscsi": {"host": "256.1.1.1", "target": "iqn.2003-01.org.example:d"}}, NUMERIC),
            ({"iscsi": {"host": LONG_HOST, "target": "iqn.2003-01.org.example:d"}}, LONG),
            (
                {"iscsiDirect": {"host": "0.0.0.0.0", "target": "eui.02004567A425678D",
                                 "initiator": "iqn.2024-01.org.example:node1"}},
                NUMERIC,
            ),
            (
                {"iscsiDirect": {"host": LONG_HOST, "target": "eui.02004567A425678D",
                                 "initiator": "iqn.2024-01.org.example:node1"}},
                LONG,
            ),
        ],
        "updates": [
            (
                {"dir": {"path": "/srv/a"}, "libvirtName": "a"},
                {"dir": {"path": "/srv/a"}, "libvirtName": "a"},
                None,
            ),
            (
                {"dir": {"path": "/srv/a"}, "libvirtName": "a"},
                {"dir": {"path": "/srv/a"}, "libvirtName": "b"},
                "libvirtName is immutable",
            ),
        ],
    },
    "DomainMonitor": {
        "good": [
            {
                "target": {"connectionRef": {"name": "shared-nfs", "path": "0f3c-uuid"}},
                "nodeSelector": SELECTOR_GOOD,
            },
            {"target": {"poolRef": {"name": "images"}}, "intervalSeconds": 5},
            {"target": {"hostPath": "/srv/storage/a..b"}, "probeFile": "probe..file"},
        ],
        "bad": [
            ({"target": {}}, "exactly one of connectionRef, poolRef or hostPath"),
            (
                {"target": {"poolRef": {"name": "p"}, "hostPath": "/srv/x"}},
                "exactly one of connectionRef, poolRef",
            ),
            ({"target": {"connectionRef": {"name": "c", "path": "a/../.."}}}, "path must not contain"),
            ({"target": {"hostPath": "/srv/storage/../../etc"}}, "hostPath must not contain"),
            ({"target": {"poolRef": {"name": "p"}}, "probeFile": "../escape"}, "probeFile must not contain"),
            ({"target": {"poolRef": {"name": "p"}}, "probeFile": "./"}, "probeFile must name a file"),
            *(
                ({"target": {"poolRef": {"name": "p"}}, "nodeSelector": s}, SELECTOR_MESSAGE)
                for s in SELECTOR_BAD
            ),
        ],
        "updates": [],
    },
    "StorageNodeState": {
        "good": [
            {
                "nodeName": "node-a",
                "parentRef": {
                    "apiVersion": f"{GROUP}/v1alpha1",
                    "kind": "StorageConnection",
                    "name": "shared-nfs",
                    "uid": "6f1c",
                },
            },
        ],
        "bad": [],
        "updates": [
            (
                {
                    "nodeName": "node-a",
                    "parentRef": {
                        "apiVersion": f"{GROUP}/v1alpha1",
                        "kind": "StoragePool",
                        "name": "p",
                        "uid": "1",
                    },
                },
                {
                    "nodeName": "node-a",
                    "parentRef": {
                        "apiVersion": f"{GROUP}/v1alpha1",
                        "kind": "StoragePool",
                        "name": "p",
                        "uid": "1",
                    },
                },
                None,
            ),
            (
                {
                    "nodeName": "node-a",
                    "parentRef": {
                        "apiVersion": f"{GROUP}/v1alpha1",
                        "kind": "StoragePool",
                        "name": "p",
                        "uid": "1",
                    },
                },
                {
                    "nodeName": "node-b",
                    "parentRef": {
                        "apiVersion": f"{GROUP}/v1alpha1",
                        "kind": "StoragePool",
                        "name": "p",
                        "uid": "1",
                    },
                },
                "spec is immutable",
            ),
        ],
    },
}


def _cases(section: str) -> list[Any]:
    out = []
    for kind in sorted(CRDS):
        for number, case in enumerate(CASES.get(kind, {}).get(section, [])):
            out.append(pytest.param(kind, case, id=f"{kind}-{number}"))
    return out


@pytest.mark.parametrize(("kind", "spec"), _cases("good"))
def test_good_specs_pass_every_rule(kind: str, spec: dict[str, Any]) -> None:
    assert admit(kind, spec) == []


@pytest.mark.parametrize(("kind", "case"), _cases("bad"))
def test_bad_specs_fail_with_the_rules_message(kind: str, case: Case) -> None:
    spec, message = case
    failures = admit(kind, spec)
    assert any(message in m for m in failures), f"expected {message!r}, got {failures}"


@pytest.mark.parametrize(("kind", "case"), _cases("updates"))
def test_updates_honour_transition_rules(
    kind: str, case: tuple[dict[str, Any], dict[str, Any], str | None]
) -> None:
    old, new, message = case
    failures = admit(kind, new, old)
    if message is None:
        assert failures == []
    else:
        assert any(message in m for m in failures), f"expected {message!r}, got {failures}"


def _example_objects() -> list[Any]:
    """The objects of examples/*.yaml and of the yaml blocks in docs/kinds.md."""
    sources = [(p.name, p.read_text()) for p in sorted((ROOT / "examples").glob("*.yaml"))]
    kinds_doc = (ROOT / "docs" / "kinds.md").read_text()
    sources += [
        (f"kinds.md#{i}", block) for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", kinds_doc, re.S))
    ]
    out = []
    for name, text in sources:
        for number, doc in enumerate(yaml.safe_load_all(text)):
            if isinstance(doc, dict) and doc.get("kind") in CRDS:
                out.append(pytest.param(doc, id=f"{name}-{number}-{doc['kind']}"))
    return out


@pytest.mark.parametrize("obj", _example_objects())
def test_examples_are_admitted(obj: dict[str, Any]) -> None:
    """What examples/ and the docs show users is accepted by the API server and by the agent's parser."""
    assert obj["apiVersion"] == f"{GROUP}/v1alpha1"
    assert admit(obj["kind"], obj.get("spec") or {}) == []
    modules = registry.load_all()
    if obj["kind"] in modules:
        modules[obj["kind"]].parse(obj)  # raises InvalidSpec naming the field


def test_a_long_pool_name_needs_a_libvirt_name() -> None:
    """The root rule: libvirt pool names are at most 64 characters, object names up to 253."""

    def obj(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        meta = {"name": name}
        return {"apiVersion": f"{GROUP}/v1alpha1", "kind": "StoragePool", "metadata": meta, "spec": spec}

    long_name = "p" * 65
    assert cel_violations("StoragePool", obj(long_name, {"dir": {"path": "/srv/a"}})) == [
        "a pool whose name is longer than 64 characters needs spec.libvirtName (libvirt's limit)"
    ]
    named = {"dir": {"path": "/srv/a"}, "libvirtName": "p"}
    assert cel_violations("StoragePool", obj(long_name, named)) == []
    assert cel_violations("StoragePool", obj("p" * 64, {"dir": {"path": "/srv/a"}})) == []


def test_kubernetes_cel_library_shim_matches_kubernetes() -> None:
    # Examples from the Kubernetes CEL docs (strings library).
    def run(rule: str, value: Any) -> Any:
        return program(rule).evaluate({"self": celpy.json_to_cel(value)})

    assert run("self.split('/') == ['a', 'b', '']", "a/b/")
    assert run("self.lowerAscii() == 'tacocat'", "TacoCAT")
    assert run("self.upperAscii() == 'TACOCAT'", "TacoCat")
    assert run("self.trim() == 'x'", "  x \t")
    assert run("self.join('-') == 'a-b'", ["a", "b"])


def test_every_cel_rule_is_exercised() -> None:
    """Runs the cases again (order-independent) and checks each rule both held and failed somewhere."""
    for kind, cases in CASES.items():
        if kind not in CRDS:
            continue
        for spec in cases["good"]:
            admit(kind, spec)
        for spec, _ in cases["bad"]:
            admit(kind, spec)
        for old, new, _ in cases["updates"]:
            admit(kind, new, old)
    missing_hold, missing_fail = [], []
    for kind in sorted(CRDS):
        for path, node in crd_schema.walk(schema_of(kind)):
            for rule_def in node.get("x-kubernetes-validations", []) or []:
                key = (kind, path, rule_def["rule"])
                if key not in SEEN.held:
                    missing_hold.append(f"{kind}{path}: {rule_def['rule']}")
                if key not in SEEN.failed:
                    missing_fail.append(f"{kind}{path}: {rule_def['rule']}")
    assert not missing_hold, f"rules never seen holding on a good object (add a case): {missing_hold}"
    assert not missing_fail, f"rules never seen failing on a bad object (add a case): {missing_fail}"
