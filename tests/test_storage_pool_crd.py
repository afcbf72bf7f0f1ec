"""crds/storagepool.yaml: structural, explained, named as DESIGN.md says, and agreeing with parse().

Instances are validated with jsonschema (types, enums, patterns, limits) and the CEL rules are
evaluated with cel-python where they sit; good and bad specs go through the CRD and
``reconcilers.storage_pool.parse``, which must agree.
"""

from __future__ import annotations

import copy
import pathlib
from typing import Any

import crd_schema
import pytest
import yaml

from hostlib import errors
from reconcilers import api
from reconcilers import storage_pool as sp

CRD_PATH = pathlib.Path(__file__).resolve().parent.parent / "crds" / "storagepool.yaml"
CRD = yaml.safe_load(CRD_PATH.read_text())
VERSION = CRD["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]
SPEC = SCHEMA["properties"]["spec"]


def crd_errors(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    return crd_schema.crd_errors(SCHEMA, obj, old)


def obj(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": api.API_VERSION, "kind": sp.KIND, "metadata": {"name": "p1"}, "spec": spec}


def test_names_scope_subresources_and_columns() -> None:
    assert CRD["apiVersion"] == "apiextensions.k8s.io/v1" and CRD["kind"] == "CustomResourceDefinition"
    assert CRD["metadata"]["name"] == "storagepools.hoststorage.io"
    spec = CRD["spec"]
    assert spec["group"] == "hoststorage.io" and spec["scope"] == "Cluster"
    assert spec["names"]["kind"] == "StoragePool" and spec["names"]["plural"] == "storagepools"
    assert spec["names"]["shortNames"] == ["spool"] and spec["names"]["categories"] == ["hoststorage"]
    assert [v["name"] for v in spec["versions"]] == ["v1alpha1"]
    assert VERSION["served"] and VERSION["storage"] and VERSION["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in VERSION["additionalPrinterColumns"]}
    assert columns["Ready"] == ".status.readyNodes" and columns["Age"] == ".metadata.creationTimestamp"


def test_schema_is_structural_and_explained() -> None:
    for path, node in crd_schema.walk(SCHEMA):
        unknown = set(node) - crd_schema.SCHEMA_KEYWORDS
        assert not unknown, f"{path}: unknown schema keywords {unknown}"
        assert "type" in node, f"{path}: every schema node needs a type"
        if path.startswith(".spec") and not path.endswith("[]") and not path.endswith("{}"):
            assert node.get("description"), f"{path}: kubectl explain needs a description"
        if node["type"] == "string" and path.startswith(".spec") and "enum" not in node:
            assert "maxLength" in node, f"{path}: strings from users need a length limit"
        if node["type"] == "array" and path.startswith(".spec"):
            assert "maxItems" in node, f"{path}: lists from users need a size limit"


def test_spec_field_names_follow_the_design_and_the_parser() -> None:
    props = SPEC["properties"]
    assert set(props) == set(sp.SPEC_FIELDS)
    assert set(props["connectionRef"]["properties"]) == {"name", "path"}
    assert set(props["dir"]["properties"]) == {"path"}
    assert set(props["fs"]["properties"]) == {"device", "format"}
    assert set(props["fs"]["properties"]["format"]["enum"]) == set(sp.FS_FORMATS)
    assert set(props["netfs"]["properties"]) == {"host", "dir", "format"}
    assert set(props["netfs"]["properties"]["format"]["enum"]) == set(sp.NETFS_FORMATS)
    assert set(props["iscsiDirect"]["properties"]) == {"host", "port", "target", "initiator", "chapSecretRef"}
    assert set(props["iscsiDirect"]["properties"]["chapSecretRef"]["properties"]) == {"name", "namespace"}
    assert set(props["iscsi"]["properties"]) == {"host", "port", "target"}
    assert set(props["logical"]["properties"]) == {"vgName", "devices"}
    assert props["autostart"]["default"] is True and props["deletionPolicy"]["default"] == "Detach"
    assert props["libvirtName"]["maxLength"] == sp.MAX_LIBVIRT_NAME


ID = {"host": "127.0.0.1", "target": "iqn.2026-01.io.example:t1", "initiator": "iqn.2026-01.io.example:i1"}
GOOD = [
    {"dir": {"path": "/srv/pools/a"}, "autostart": False, "deletionPolicy": "Retain"},
    {"connectionRef": {"name": "nfs1", "path": "images/x"}},
    {"fs": {"device": "/dev/loop3", "format": "ext4"}},
    {"netfs": {"host": "gluster.example", "dir": "/gv0", "format": "glusterfs"}},
    {"iscsiDirect": {**ID, "port": 3260, "chapSecretRef": {"name": "chap", "namespace": "hoststorage"}}},
    {"iscsi": {"host": "192.0.2.1", "target": ID["target"]}},
    {"logical": {"vgName": "vg_data", "devices": ["/dev/sdb"]}, "libvirtName": "Data.1"},
    {"dir": {"path": "/srv/p"}, "nodeSelector": {"matchLabels": {"zone": "a"}}},
]


@pytest.mark.parametrize("spec", GOOD, ids=[str(i) for i in range(len(GOOD))])
def test_good_specs_pass_the_crd_and_the_parser(spec: dict[str, Any]) -> None:
    assert crd_errors(obj(spec)) == []
    sp.parse(obj(spec))


BAD = [
    ({}, "exactly one of"),
    ({"dir": {"path": "/a"}, "fs": {"device": "/dev/loop0"}}, "exactly one of"),
    ({"dir": {"path": "relative"}}, "does not match"),
    ({"dir": {"path": "/srv/../etc"}}, "'..' component"),
    ({"dir": {"path": "/srv/<x>"}}, "does not match"),
    ({"dir": {"path": "/srv/a&b"}}, "does not match"),
    ({"dir": {"path": '/srv/"q"'}}, "does not match"),
    ({"dir": {"path": "/srv/'q'"}}, "does not match"),
    ({"fs": {"device": "/etc/passwd"}}, "does not match"),
    ({"fs": {"device": "/dev/../etc/x"}}, "'..' component"),
    ({"fs": {"device": "/dev/loop0", "format": "ntfs"}}, "is not one of"),
    ({"netfs": {"host": "h", "dir": "/x", "format": "cifs"}}, "is not one of"),
    ({"netfs": {"host": "a<b", "dir": "/x"}}, "does not match"),
    ({"netfs": {"host": "h", "dir": "/x&y"}}, "does not match"),
    ({"iscsiDirect": {**ID, "port": 70000}}, "is greater than"),
    ({"iscsiDirect": {**ID, "target": "iqn.2026-01.io.example:t<1>"}}, "does not match"),
    ({"iscsiDirect": {**ID, "initiator": "not-an-iqn"}}, "does not match"),
    ({"iscsiDirect": {"host": "h", "target": ID["target"]}}, "'initiator' is a required property"),
    ({"iscsi": {"host": "h", "target": "x"}}, "does not match"),
    ({"logical": {"vgName": "-vg"}}, "does not match"),
    ({"logical": {"vgName": "vg", "devices": ["/tmp/x"]}}, "does not match"),
    ({"connectionRef": {"name": "c", "path": "/abs"}}, "does not match"),
    ({"connectionRef": {"name": "c", "path": "a/../b"}}, "'..' component"),
    ({"dir": {"path": "/a"}, "libvirtName": "bad/name"}, "does not match"),
    ({"dir": {"path": "/a"}, "libvirtName": "x" * 65}, "is too long"),
    ({"dir": {"path": "/a"}, "autostart": "yes"}, "is not of type 'boolean'"),
    ({"dir": {"path": "/a"}, "deletionPolicy": "Delete"}, "is not one of"),
]


@pytest.mark.parametrize(("spec", "words"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_specs_are_refused_by_the_crd_and_the_parser(spec: dict[str, Any], words: str) -> None:
    found = crd_errors(obj(spec))
    assert any(words in f for f in found), found
    with pytest.raises(errors.InvalidSpec):
        sp.parse(obj(spec))


def test_libvirt_name_is_immutable() -> None:
    old = obj({"dir": {"path": "/a"}, "libvirtName": "one"})
    new = copy.deepcopy(old)
    new["spec"]["libvirtName"] = "two"
    assert "libvirtName is immutable" in crd_errors(new, old)
    assert crd_errors(copy.deepcopy(old), old) == []
