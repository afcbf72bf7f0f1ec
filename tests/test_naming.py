"""StorageNodeState names, labels and node-selector matching."""

from __future__ import annotations

import re

import pytest

from controller import naming

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def test_short_names_are_readable() -> None:
    assert naming.node_state_name("StorageConnection", "nfs1", "node-a") == "sconn-nfs1-node-a"
    assert naming.node_state_name("StoragePool", "p", "n") == "spool-p-n"
    assert naming.node_state_name("DomainMonitor", "m", "n.example.com") == "dmon-m-n.example.com"


@pytest.mark.parametrize(("parent", "node"), [
    ("a" * 253, "node-a"),
    ("x" * 200, "y" * 200),
    ("p", "n" * 253),
])
def test_long_names_are_hashed_valid_and_distinct(parent: str, node: str) -> None:
    name = naming.node_state_name("StorageConnection", parent, node)
    assert len(name) <= naming.MAX_NAME
    assert DNS_SUBDOMAIN.match(name)
    other = naming.node_state_name("StorageConnection", parent + "z", node)
    assert other != name
    assert naming.node_state_name("StorageConnection", parent, node) == name


def test_kinds_do_not_collide() -> None:
    assert (naming.node_state_name("StorageConnection", "x", "n")
            != naming.node_state_name("StoragePool", "x", "n"))


@pytest.mark.parametrize("value", ["node-a", "a" * 63, "a" * 64, "b" * 253, "node.example.com"])
def test_label_values_fit(value: str) -> None:
    out = naming.label_value(value)
    assert len(out) <= 63
    assert LABEL_VALUE.match(out)
    assert (out == value) == (len(value) <= 63)


def test_body_has_labels_owner_and_parent_ref() -> None:
    body = naming.node_state_body(kind="StorageConnection", parent_name="c1", parent_uid="u1",
                                  node="node-a", node_uid="nu")
    assert body["metadata"]["labels"] == {
        "hoststorage.io/node": "node-a", "hoststorage.io/kind": "StorageConnection",
        "hoststorage.io/parent": "c1"}
    assert body["metadata"]["ownerReferences"][0] == {"apiVersion": "v1", "kind": "Node", "name": "node-a",
                                                      "uid": "nu"}
    assert body["spec"]["parentRef"]["uid"] == "u1"


LABELS = {"zone": "a", "role": "storage"}


@pytest.mark.parametrize(("selector", "expected"), [
    (None, True),
    ({}, True),
    ({"matchLabels": {"zone": "a"}}, True),
    ({"matchLabels": {"zone": "b"}}, False),
    ({"matchLabels": {"missing": "x"}}, False),
    ({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}, True),
    ({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}, False),
    ({"matchExpressions": [{"key": "other", "operator": "NotIn", "values": ["a"]}]}, True),
    ({"matchExpressions": [{"key": "role", "operator": "Exists"}]}, True),
    ({"matchExpressions": [{"key": "role", "operator": "DoesNotExist"}]}, False),
    ({"matchLabels": {"zone": "a"}, "matchExpressions": [{"key": "gpu", "operator": "Exists"}]}, False),
])
def test_selector_matching(selector: dict[str, object] | None, expected: bool) -> None:
    assert naming.selector_matches(selector, LABELS) is expected


@pytest.mark.parametrize("selector", [
    {"matchExpressions": [{"key": "zone", "operator": "Like", "values": ["a"]}]},
    {"matchExpressions": [{"key": "zone", "operator": "In"}]},
    {"matchExpressions": [{"key": "zone", "operator": "Exists", "values": ["a"]}]},
    {"matchExpressions": [{"operator": "Exists"}]},
    {"matchLabels": ["zone"]},
])
def test_malformed_selectors_raise(selector: dict[str, object]) -> None:
    with pytest.raises(naming.SelectorError):
        naming.selector_matches(selector, LABELS)
