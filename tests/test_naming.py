"""StorageNodeState names and labels."""

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
