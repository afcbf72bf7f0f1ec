"""``hoststorage apply|delete|status`` with StoragePools: dependency order, idempotency, teardown.

Runs the real command (a child process) against the real libvirtd, with a temp state dir and a temp
allowed host path; virsh is the witness.
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import fixtures_libvirt
import pytest
import yaml

pytestmark = pytest.mark.host


class Cli:
    def __init__(self, state: str, allowed: str) -> None:
        self.state, self.allowed = state, allowed

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [
            sys.executable,
            "-m",
            "controller.cli",
            "--state-dir",
            self.state,
            "--allowed-host-path",
            self.allowed,
            *args,
        ]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)

    def json(self, *args: str) -> tuple[int, list[dict[str, Any]]]:
        proc = self(*args, "-o", "json")
        assert proc.stdout, proc.stderr
        return proc.returncode, json.loads(proc.stdout)


@pytest.fixture
def cli(libvirtd: str, tmp_path: pathlib.Path) -> Iterator[Cli]:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    c = Cli(str(tmp_path / "state"), str(allowed))
    try:
        yield c
    finally:
        # Leave nothing behind when a test failed half-way: delete what the ledger lists.
        ledger = tmp_path / "state" / "ledger.json"
        if ledger.exists():
            for entry in json.loads(ledger.read_text())["entries"]:
                if entry["kind"] == "StoragePool":
                    name = entry["resource"]["libvirtName"]
                    fixtures_libvirt.virsh("pool-destroy", name, check=False)
                    fixtures_libvirt.virsh("pool-undefine", name, check=False)


def write(tmp_path: pathlib.Path, docs: list[dict[str, Any]]) -> str:
    path = tmp_path / f"m-{secrets.token_hex(3)}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return str(path)


def pool(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "hoststorage.io/v1alpha1",
        "kind": "StoragePool",
        "metadata": {"name": name},
        "spec": spec,
    }


def test_apply_pools_after_their_connection_then_delete_keeps_volumes(
    cli: Cli, tmp_path: pathlib.Path
) -> None:
    suffix = secrets.token_hex(3)
    local_dir = pathlib.Path(cli.allowed, "local")
    (local_dir / "images").mkdir(parents=True)
    docs = [
        # the pool comes first in the file; apply still handles the connection first
        pool(f"img-{suffix}", {"connectionRef": {"name": f"loc-{suffix}", "path": "images"}}),
        {
            "apiVersion": "hoststorage.io/v1alpha1",
            "kind": "StorageConnection",
            "metadata": {"name": f"loc-{suffix}"},
            "spec": {"type": "localfs", "localfs": {"path": str(local_dir)}},
        },
        pool(f"dir-{suffix}", {"dir": {"path": os.path.join(cli.allowed, "d")}}),
    ]
    manifest = write(tmp_path, docs)
    rc, out = cli.json("apply", "-f", manifest)
    assert rc == 0, out
    pools = {r["name"]: r for r in out if r["kind"] == "StoragePool"}
    assert {r["phase"] for r in pools.values()} == {"Running"}
    assert pools[f"img-{suffix}"]["pool"]["targetPath"] == str(local_dir / "images")
    listed = fixtures_libvirt.virsh("pool-list", "--all", "--name").split()
    assert f"img-{suffix}" in listed and f"dir-{suffix}" in listed

    second = cli("apply", "-f", manifest)
    assert second.returncode == 0 and "no change" in second.stdout + second.stderr
    rc, planned = cli.json("apply", "-f", manifest, "--dry-run")
    assert rc == 0 and all(r.get("actions") == [] for r in planned), planned

    rc, status = cli.json("status")
    assert {r["name"]: r["phase"] for r in status if r["kind"] == "StoragePool"} == {
        f"img-{suffix}": "Running",
        f"dir-{suffix}": "Running",
    }

    rc, planned = cli.json("delete", "-f", manifest, "--dry-run")
    assert rc == 0, planned
    verbs = {r["name"]: [a["verb"] for a in r["actions"]] for r in planned}
    assert verbs[f"img-{suffix}"] == verbs[f"dir-{suffix}"] == ["pool-destroy", "pool-undefine", "forget"]
    assert verbs[f"loc-{suffix}"] == ["unlink", "forget"]  # not InUse: its pool goes first
    listed = fixtures_libvirt.virsh("pool-list", "--name").split()  # still defined and running
    assert f"img-{suffix}" in listed and f"dir-{suffix}" in listed

    fixtures_libvirt.virsh("vol-create-as", f"img-{suffix}", "keep.img", "1M")
    rc, gone = cli.json("delete", "-f", manifest)
    assert rc == 0, gone
    assert {r["phase"] for r in gone} == {"Detached"}
    listed = fixtures_libvirt.virsh("pool-list", "--all", "--name").split()
    assert f"img-{suffix}" not in listed and f"dir-{suffix}" not in listed
    assert (local_dir / "images" / "keep.img").stat().st_size == 1024 * 1024


def test_invalid_pool_is_reported_and_libvirt_untouched(cli: Cli, tmp_path: pathlib.Path) -> None:
    before = fixtures_libvirt.virsh("pool-list", "--all", "--name")
    manifest = write(
        tmp_path,
        [
            pool("bad-xml", {"dir": {"path": "/srv/<pool>"}}),
            pool("bad-root", {"dir": {"path": "/etc/hoststorage-test"}}),
            pool("bad-two", {"dir": {"path": "/a"}, "netfs": {"host": "h", "dir": "/x"}}),
        ],
    )
    rc, out = cli.json("apply", "-f", manifest)
    assert rc != 0
    assert [(r["name"], r["reason"]) for r in out] == [
        ("bad-xml", "InvalidSpec"),
        ("bad-root", "InvalidSpec"),
        ("bad-two", "InvalidSpec"),
    ]
    assert fixtures_libvirt.virsh("pool-list", "--all", "--name") == before
    assert not os.path.exists("/etc/hoststorage-test")


def test_iscsi_direct_chap_from_a_secret_in_the_same_file(
    cli: Cli, tmp_path: pathlib.Path, tgt_target: Any
) -> None:
    t = tgt_target(chap=True)
    name = f"chap-{secrets.token_hex(3)}"
    manifest = write(
        tmp_path,
        [
            pool(
                name,
                {
                    "iscsiDirect": {
                        "host": "127.0.0.1",
                        "target": t.iqn,
                        "initiator": t.initiator,
                        "chapSecretRef": {"name": "chap"},
                    }
                },
            ),
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "chap", "namespace": "default"},
                "stringData": {"username": t.username, "password": t.password},
            },
        ],
    )
    proc = cli("apply", "-f", manifest, "-o", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert t.password not in proc.stdout + proc.stderr
    assert json.loads(proc.stdout)[0]["pool"]["state"] == "running"
    again = cli("apply", "-f", manifest)
    assert again.returncode == 0 and "no change" in again.stdout + again.stderr
    gone = cli("delete", "-f", manifest)
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert name not in fixtures_libvirt.virsh("pool-list", "--all", "--name").split()
    assert f"hoststorage-pool-{name}" not in fixtures_libvirt.virsh("secret-list")
