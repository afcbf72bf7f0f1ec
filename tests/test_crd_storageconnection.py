"""crds/storageconnection.yaml: a structural schema, the API names, and CEL rules that hold.

The schema is checked for the structural rules of apiextensions v1 (every node typed, descriptions for
``kubectl explain``), instances are validated with jsonschema (types, enums, patterns, limits) and the
``x-kubernetes-validations`` rules are evaluated with cel-python at the node they sit on. Good and bad
specs run through both the CRD and ``reconcilers.storage_connection.parse``, which must agree.
"""

from __future__ import annotations

import copy
import pathlib
from typing import Any

import crd_schema
import kubernetes_validate
import pytest
import yaml

from hostlib import errors
from reconcilers import api
from reconcilers import storage_connection as sc

CRD_PATH = pathlib.Path(__file__).resolve().parent.parent / "crds" / "storageconnection.yaml"
CRD = yaml.safe_load(CRD_PATH.read_text())
VERSION = CRD["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]


def test_names_scope_and_subresources() -> None:
    assert CRD["apiVersion"] == "apiextensions.k8s.io/v1" and CRD["kind"] == "CustomResourceDefinition"
    spec = CRD["spec"]
    assert CRD["metadata"]["name"] == "storageconnections.hoststorage.io"
    assert spec["group"] == "hoststorage.io" and spec["scope"] == "Cluster"
    assert spec["names"]["kind"] == "StorageConnection"
    assert spec["names"]["shortNames"] == ["sconn"] and spec["names"]["categories"] == ["hoststorage"]
    assert [v["name"] for v in spec["versions"]] == ["v1alpha1"]
    assert VERSION["served"] and VERSION["storage"] and VERSION["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in VERSION["additionalPrinterColumns"]}
    assert columns["Type"] == ".spec.type"
    assert columns["Ready"] == ".status.readyNodes"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_the_crd_object_is_valid_apiextensions_v1() -> None:
    kubernetes_validate.validate(CRD, kubernetes_validate.latest_version(), strict=True)


def test_schema_is_structural_and_explained() -> None:
    for path, node in crd_schema.walk(SCHEMA):
        unknown = set(node) - crd_schema.SCHEMA_KEYWORDS
        assert not unknown, f"{path}: unknown schema keywords {unknown}"
        assert "type" in node, f"{path}: every schema node needs a type"
        assert not ("properties" in node and "additionalProperties" in node), path
        if path.startswith(".spec") and not path.endswith("[]") and not path.endswith("{}"):
            assert node.get("description"), f"{path}: kubectl explain needs a description"
        if node["type"] == "string" and path.startswith(".spec") and "enum" not in node:
            assert "maxLength" in node, f"{path}: strings from users need a length limit"
        if node["type"] == "array" and path.startswith(".spec"):
            assert "maxItems" in node, f"{path}: lists from users need a size limit"


def test_status_fields_match_the_rollup() -> None:
    status = SCHEMA["properties"]["status"]["properties"]
    for field in (
        "observedGeneration",
        "selected",
        "ready",
        "failed",
        "readyNodes",
        "conditions",
        "failingNodes",
    ):
        assert field in status


def test_spec_field_names_follow_the_design() -> None:
    spec = SCHEMA["properties"]["spec"]["properties"]
    assert set(spec) == {
        "type",
        "nodeSelector",
        "deletionPolicy",
        "nfs",
        "posixfs",
        "glusterfs",
        "iscsi",
        "localfs",
        "failureGraceSeconds",
        "nodeSignals",
    }
    assert set(spec["nfs"]["properties"]) == {"server", "export", "version", "timeo", "retrans", "options"}
    assert set(spec["posixfs"]["properties"]) == {"source", "vfsType", "options"}
    assert set(spec["glusterfs"]["properties"]) == {"server", "volume", "backupServers", "options"}
    assert set(spec["iscsi"]["properties"]) == {"portal", "target", "lun", "initiatorName", "chapSecretRef"}
    assert set(spec["iscsi"]["properties"]["chapSecretRef"]["properties"]) == {"name", "namespace"}
    assert set(spec["localfs"]["properties"]) == {"path"}
    assert set(spec["nodeSelector"]["properties"]) == {"matchLabels", "matchExpressions"}
    assert (
        spec["deletionPolicy"]["enum"] == ["Detach", "Retain"]
        and spec["deletionPolicy"]["default"] == "Detach"
    )


# ----------------------------------------------------------------------------------- instance checks


def crd_errors(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    return crd_schema.crd_errors(SCHEMA, obj, old)


def obj(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": api.API_VERSION, "kind": sc.KIND, "metadata": {"name": "c1"}, "spec": spec}


GOOD = [
    {"type": "nfs", "nfs": {"server": "nfs.example.com", "export": "/exports/data", "version": "4.2",
                            "timeo": 100, "retrans": 3, "options": ["noatime", "rsize=1048576"]}},
    {"type": "nfs", "nfs": {"server": "[fd00::1]", "export": "/e"}},
    {"type": "posixfs", "posixfs": {"source": "/dev/loop3", "vfsType": "ext4"}, "deletionPolicy": "Retain"},
    {"type": "posixfs", "posixfs": {"source": "srv:/share", "vfsType": "cifs", "options": ["ro"]}},
    {"type": "glusterfs",
     "glusterfs": {"server": "g1.example", "volume": "vol_1", "backupServers": ["g2", "g3"]}},
    {"type": "iscsi", "iscsi": {"portal": "10.0.0.1:3260", "target": "iqn.2003-01.org.example:disk1",
                                "lun": 1,
                                "chapSecretRef": {"name": "chap", "namespace": "hoststorage"}}},
    {"type": "localfs", "localfs": {"path": "/srv/images"},
     "nodeSelector": {"matchLabels": {"zone": "a"},
                      "matchExpressions": [{"key": "role", "operator": "NotIn", "values": ["edge"]},
                                           {"key": "gpu", "operator": "Exists"}]}},
]  # fmt: skip


@pytest.mark.parametrize("spec", GOOD, ids=lambda s: s["type"])
def test_good_specs_pass_the_crd_and_the_parser(spec: dict[str, Any]) -> None:
    assert crd_errors(obj(spec)) == []
    assert sc.parse(obj(spec)).type == spec["type"]


# (spec, a words of the CRD's complaint). Each is refused by parse() too.
BAD = [
    ({"type": "posixfs"}, "spec.posixfs must be set when type is posixfs"),
    ({"type": "nfs", "posixfs": {"source": "/dev/x", "vfsType": "ext4"}}, "spec.nfs must be set"),
    ({"type": "posixfs", "posixfs": {"source": "/dev/x", "vfsType": "ext4"}, "localfs": {"path": "/x"}},
     "spec.localfs must be set when type is localfs, and only then"),
    ({"type": "ceph"}, "is not one of"),
    ({"type": "localfs", "localfs": {"path": "relative/dir"}}, "does not match"),
    ({"type": "localfs", "localfs": {"path": "/srv/../etc"}}, "must not contain a '..' component"),
    ({"type": "nfs", "nfs": {"server": "s", "export": "/a/../../etc"}}, "export must not contain a '..'"),
    ({"type": "posixfs", "posixfs": {"source": "-oremount", "vfsType": "ext4"}}, "does not match"),
    ({"type": "posixfs", "posixfs": {"source": "/dev/x", "vfsType": "ext4", "options": ["ro,exec"]}},
     "does not match"),
    ({"type": "posixfs", "posixfs": {"source": "/dev/x", "vfsType": "ext4", "options": ["-o"]}},
     "does not match"),
    ({"type": "posixfs", "posixfs": {"source": "/dev/x", "vfsType": "ext4; rm -rf /"}}, "does not match"),
    ({"type": "nfs", "nfs": {"server": "s;reboot", "export": "/e"}}, "does not match"),
    ({"type": "nfs", "nfs": {"server": "s", "export": "/e", "version": "5"}}, "is not one of"),
    ({"type": "nfs", "nfs": {"server": "s", "export": "/e", "timeo": "100"}}, "is not of type 'integer'"),
    ({"type": "localfs", "localfs": {"path": "/" + "a" * 1100}}, "is too long"),
    ({"type": "localfs", "localfs": {"path": "/x"}, "deletionPolicy": "Delete"}, "is not one of"),
    ({"type": "iscsi", "iscsi": {"portal": "h", "target": "not-an-iqn"}}, "does not match"),
    ({"type": "iscsi", "iscsi": {"portal": "h", "target": "iqn.2003-01.org.x:d", "lun": 99999}},
     "is greater than"),
    ({"type": "localfs", "localfs": {"path": "/x"},
      "nodeSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}, "values must be non-empty"),
    ({"type": "localfs", "localfs": {"path": "/x"},
      "nodeSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["b"]}]}},
     "empty for Exists"),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "words"), BAD, ids=[w for _, w in BAD])
def test_bad_specs_are_refused_by_the_crd_and_the_parser(spec: dict[str, Any], words: str) -> None:
    found = crd_errors(obj(spec))
    assert any(words in f for f in found), found
    with pytest.raises(errors.InvalidSpec):
        sc.parse(obj(spec))


def test_type_is_immutable() -> None:
    old = obj({"type": "localfs", "localfs": {"path": "/x"}})
    new = copy.deepcopy(old)
    new["spec"] = {"type": "posixfs", "posixfs": {"source": "/dev/x", "vfsType": "ext4"}}
    assert "type is immutable" in crd_errors(new, old)
    assert crd_errors(copy.deepcopy(old), old) == []
