"""controller.kube.Api against the API emulator over HTTP: lists come in pages, a status is replaced."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import kmock_ext
import pytest

from controller import kube, naming

CRDS = pathlib.Path(__file__).resolve().parent.parent / "crds"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[kube.Api, kmock_ext.EmulatorRunner]]:
    emulator = kmock_ext.ApiServerEmulator()
    emulator.load_crds(CRDS)
    runner = kmock_ext.EmulatorRunner(emulator)
    runner.add_endpoint("api")
    path = runner.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config", "api")
    api = kube.Api(kube.load_configuration(str(path)), user_agent="test")
    try:
        yield api, runner
    finally:
        api.close()
        runner.close()


def body(i: int) -> dict[str, object]:
    return naming.node_state_body(
        kind="StorageConnection", parent_name=f"p{i}", parent_uid="u", node="n1", node_uid="nu"
    )


def test_a_list_is_read_page_by_page_and_whole(client: tuple[kube.Api, kmock_ext.EmulatorRunner]) -> None:
    api, runner = client
    for i in range(7):
        api.create_node_state(body(i))
    before = len(runner.requests())
    items = api.list_objects(
        kube.custom_path("StorageNodeState"), label_selector=naming.node_selector("n1"), limit=3
    )
    assert sorted(o["metadata"]["name"] for o in items) == sorted(
        naming.node_state_name("StorageConnection", f"p{i}", "n1") for i in range(7)
    )
    pages = runner.requests()[before:]
    assert [r["query"].get("limit") for r in pages] == ["3", "3", "3"]
    assert [bool(r["query"].get("continue")) for r in pages] == [False, True, True]


def test_a_status_is_replaced_as_a_whole(client: tuple[kube.Api, kmock_ext.EmulatorRunner]) -> None:
    api, _ = client
    name = api.create_node_state(body(100))["metadata"]["name"]
    api.replace_node_state_status(
        name, {"phase": "Connected", "connection": {"mountPoint": "/m", "source": "s"}}
    )
    after = api.replace_node_state_status(name, {"phase": "Detached", "connection": {}})
    assert after["status"] == {"phase": "Detached", "connection": {}}  # a merge patch would keep mountPoint
