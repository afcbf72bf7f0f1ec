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


def test_the_controller_listing_streams_pages(client: tuple[kube.Api, kmock_ext.EmulatorRunner]) -> None:
    api, runner = client
    for i in range(200, 205):
        api.create_node_state(body(i))
    before = len(runner.requests())
    stream = api.iter_objects(kube.custom_path("StorageNodeState"), limit=2)
    first = next(stream)
    assert len(runner.requests()) - before == 1  # one page fetched, not the whole list
    names = [first["metadata"]["name"], *(o["metadata"]["name"] for o in stream)]
    pages = runner.requests()[before:]
    assert len(pages) == (len(names) + 1) // 2 and all(r["query"].get("limit") == "2" for r in pages)
    assert len(names) == len(set(names)) == len(api.list_node_states())


def test_an_expired_continue_token_starts_the_stream_over(
    client: tuple[kube.Api, kmock_ext.EmulatorRunner],
) -> None:
    api, runner = client
    assert runner.emulator is not None
    stream = api.iter_objects(kube.custom_path("StorageNodeState"), limit=2)
    seen = [next(stream), next(stream)]
    runner.call(runner.emulator.compact)  # the continue token of page 2 is now too old: 410
    rest = list(stream)
    total = {o["metadata"]["name"] for o in api.list_node_states()}
    assert {o["metadata"]["name"] for o in seen + rest} == total
    assert len(rest) == len(total)  # started over from a fresh snapshot


def test_kopf_lists_in_pages_too() -> None:
    from controller import wiring  # noqa: PLC0415 - kopf only for this test

    assert wiring.operator_settings("c", "i").watching.chunk_size == kube.LIST_PAGE
