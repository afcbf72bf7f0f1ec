"""The ledger records what hoststorage owns; the host lock keeps two agents on one host apart."""

from __future__ import annotations

import json
import os
import pathlib
import stat
import subprocess
import sys
import threading
import time

import pytest

from hostlib import ledger


def entry(name: str, mount: str | None = None, deps: tuple[tuple[str, str], ...] = ()) -> ledger.LedgerEntry:
    resource = {"mountPoint": mount} if mount else {}
    return ledger.LedgerEntry("StorageConnection", name, f"uid-{name}", resource, deps)


def test_missing_file_is_an_empty_ledger(tmp_path: pathlib.Path) -> None:
    led = ledger.Ledger.load(str(tmp_path))
    assert led.entries() == []
    assert led.get("StorageConnection", "a") is None


def test_put_get_remove_round_trip_through_disk(tmp_path: pathlib.Path) -> None:
    state = str(tmp_path)
    led = ledger.Ledger.load(state)
    led.put(entry("a", "/base/a"))
    led.put(ledger.LedgerEntry("StoragePool", "p", "u", {"x": [1, 2]}, (("StorageConnection", "a"),)))
    again = ledger.Ledger.load(state)
    assert again.get("StorageConnection", "a") == entry("a", "/base/a")
    assert again.get("StoragePool", "p") == led.get("StoragePool", "p")
    assert [e.name for e in again.entries()] == ["a", "p"]
    assert [e.name for e in again.entries("StoragePool")] == ["p"]
    assert again.remove("StorageConnection", "a") is True
    assert again.remove("StorageConnection", "a") is False
    assert [e.name for e in ledger.Ledger.load(state).entries()] == ["p"]


def test_file_is_private_and_no_temp_file_is_left(tmp_path: pathlib.Path) -> None:
    led = ledger.Ledger.load(str(tmp_path / "state"))
    led.put(entry("a"))
    path = tmp_path / "state" / "ledger.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(os.listdir(tmp_path / "state")) == ["ledger.json", "ledger.reserve"]
    assert stat.S_IMODE(os.stat(tmp_path / "state" / "ledger.reserve").st_mode) == 0o600
    assert json.loads(path.read_text())["version"] == 1
    # The directory: others pass through to the mount base (qemu), but may not list or write it.
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o711


def test_a_0700_state_dir_gains_only_the_traverse_bits(tmp_path: pathlib.Path) -> None:
    state = tmp_path / "old-state"
    state.mkdir(mode=0o700)
    with ledger.host_lock(str(state)):
        pass
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o711


def test_unchanged_put_does_not_rewrite(tmp_path: pathlib.Path) -> None:
    led = ledger.Ledger.load(str(tmp_path))
    led.put(entry("a"))
    before = os.stat(tmp_path / "ledger.json").st_ino
    led.put(entry("a"))
    assert os.stat(tmp_path / "ledger.json").st_ino == before
    led.put(entry("a", "/m"))
    assert os.stat(tmp_path / "ledger.json").st_ino != before


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"version": 2, "entries": []}',
        '{"version": 1, "entries": {}}',
        '{"version": 1, "entries": [{"kind": 1, "name": "a"}]}',
        '{"version": 1, "entries": [{"kind": "k"}]}',
        '{"version": 1, "entries": [{"kind": "k", "name": "a", "dependsOn": [["x"]]}]}',
        '{"version": 1, "entries": [{"kind": "k", "name": "a", "resource": []}]}',
    ],
)
def test_corrupt_ledger_is_refused_not_guessed(tmp_path: str, content: str) -> None:
    (tmp_path / "ledger.json").write_text(content)
    with pytest.raises(ledger.LedgerCorrupt, match="ledger"):
        ledger.Ledger.load(str(tmp_path))


def test_symlinked_ledger_is_refused(tmp_path: pathlib.Path) -> None:
    (tmp_path / "elsewhere.json").write_text('{"version": 1, "entries": []}')
    os.symlink(tmp_path / "elsewhere.json", tmp_path / "ledger.json")
    with pytest.raises(ledger.LedgerCorrupt):
        ledger.Ledger.load(str(tmp_path))


def test_owns_mount_compares_normalised_paths(tmp_path: pathlib.Path) -> None:
    led = ledger.Ledger.load(str(tmp_path))
    led.put(entry("a", "/base/server:_a/"))
    led.put(ledger.LedgerEntry("StoragePool", "p", resource={"paths": ["/base/link"]}))
    assert led.owns_mount("/base/server:_a")
    assert led.owns_mount("/base//link")
    assert not led.owns_mount("/base/foreign")
    assert not led.owns_mount("/base")
    owner = led.owner_of("/base/server:_a")
    assert owner is not None and owner.name == "a"


def test_users_of_lists_dependents_only(tmp_path: pathlib.Path) -> None:
    led = ledger.Ledger.load(str(tmp_path))
    led.put(entry("c"))
    led.put(ledger.LedgerEntry("StoragePool", "p", depends_on=(("StorageConnection", "c"),)))
    led.put(ledger.LedgerEntry("DomainMonitor", "m", depends_on=(("StoragePool", "p"),)))
    assert [e.name for e in led.users_of("StorageConnection", "c")] == ["p"]
    assert [e.name for e in led.users_of("StoragePool", "p")] == ["m"]
    assert led.users_of("StorageConnection", "other") == []


def test_concurrent_puts_from_threads_all_land(tmp_path: pathlib.Path) -> None:
    led = ledger.Ledger.load(str(tmp_path))
    threads = [threading.Thread(target=led.put, args=(entry(f"c{i}"),)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ledger.Ledger.load(str(tmp_path)).entries()) == 20


HOLDER = """
import sys, time
from hostlib import ledger
with ledger.host_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(30)
"""


def test_host_lock_non_blocking_names_the_holder(tmp_path: pathlib.Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "locked"
            with (
                pytest.raises(ledger.LockHeld, match=f"held by pid {proc.pid}") as info,
                ledger.host_lock(str(tmp_path), blocking=False),
            ):
                pass
            assert info.value.pid == proc.pid
            start = time.monotonic()
            with pytest.raises(ledger.LockHeld), ledger.host_lock(str(tmp_path), timeout=0.3):
                pass
            assert 0.25 < time.monotonic() - start < 3
        finally:
            proc.kill()
            proc.wait()
    # the kernel released the dead holder's lock
    with ledger.host_lock(str(tmp_path), blocking=False) as pid:
        assert pid == os.getpid()
        assert (tmp_path / "lock").read_text().strip() == str(os.getpid())


def test_host_lock_is_reentrant_only_after_release(tmp_path: pathlib.Path) -> None:
    with (
        ledger.host_lock(str(tmp_path)),
        pytest.raises(ledger.LockHeld, match=f"pid {os.getpid()}"),
        ledger.host_lock(str(tmp_path), blocking=False),
    ):
        pass
    with ledger.host_lock(str(tmp_path), blocking=False):
        pass


def test_scratch_copy_changes_never_reach_the_disk(tmp_path: pathlib.Path) -> None:
    state = str(tmp_path / "state")
    led = ledger.Ledger.load(state)
    led.put(entry("a"))
    before = pathlib.Path(state, "ledger.json").read_bytes()
    scratch = led.scratch_copy()
    assert scratch.remove("StorageConnection", "a") is True
    scratch.put(entry("b"))
    assert [e.name for e in scratch.entries()] == ["b"]
    assert [e.name for e in led.entries()] == ["a"]  # the original is untouched
    assert pathlib.Path(state, "ledger.json").read_bytes() == before
    assert sorted(os.listdir(state)) == ["ledger.json", "ledger.reserve"]


# ------------------------------------------------------------------ reserve, read lock, broken state dirs


@pytest.mark.parametrize(
    ("ledger_bytes", "reserve_bytes"),
    [
        (1, ledger.RESERVE_STEP),
        (ledger.RESERVE_STEP, ledger.RESERVE_STEP),
        (ledger.RESERVE_STEP + 1, 2 * ledger.RESERVE_STEP),
    ],
)
def test_the_reserve_covers_the_ledger_in_steps(
    tmp_path: pathlib.Path, ledger_bytes: int, reserve_bytes: int
) -> None:
    (tmp_path / "ledger.json").write_bytes(b" " * ledger_bytes)
    ledger.Ledger(str(tmp_path)).ensure_reserve()
    st = os.stat(tmp_path / "ledger.reserve")
    assert st.st_size == reserve_bytes and st.st_blocks * 512 >= reserve_bytes  # allocated, not sparse
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_a_growing_write_grows_the_reserve_first(tmp_path: pathlib.Path) -> None:
    led = ledger.Ledger.load(str(tmp_path))
    led.put(ledger.LedgerEntry("StoragePool", "big", resource={"pad": "x" * ledger.RESERVE_STEP}))
    assert os.path.getsize(tmp_path / "ledger.json") > ledger.RESERVE_STEP
    assert os.path.getsize(tmp_path / "ledger.reserve") == 2 * ledger.RESERVE_STEP
    assert led.remove("StoragePool", "big")  # a shrink keeps what it has
    assert os.path.getsize(tmp_path / "ledger.reserve") == 2 * ledger.RESERVE_STEP


def test_a_link_planted_as_the_reserve_is_never_followed(tmp_path: pathlib.Path) -> None:
    victim = tmp_path / "vm-disk.img"
    victim.write_bytes(b"disk")
    state = tmp_path / "state"
    state.mkdir()
    os.symlink(victim, state / "ledger.reserve")
    with pytest.raises(
        ledger.StateDirError, match=f"cannot keep room for the ledger in {state}/ledger.reserve"
    ):
        ledger.Ledger.load(str(state)).put(entry("a"))
    assert victim.read_bytes() == b"disk" and not (state / "ledger.json").exists()


def test_a_state_dir_that_is_a_file_is_one_error(tmp_path: pathlib.Path) -> None:
    state = tmp_path / "state"
    state.write_text("x")
    message = f"state dir {state} is not a directory"
    with pytest.raises(ledger.StateDirError, match=message), ledger.host_lock(str(state)):
        pass
    with pytest.raises(ledger.StateDirError, match=message), ledger.read_lock(str(state)):
        pass
    with pytest.raises(ledger.StateDirError, match=message):
        ledger.Ledger.load(str(state))
    with pytest.raises(ledger.StateDirError, match=f"cannot create state dir {state}/below: Not a directory"):
        ledger.make_state_dir(str(state / "below"))


def test_a_ledger_that_is_a_directory_is_corrupt_not_a_crash(tmp_path: pathlib.Path) -> None:
    (tmp_path / "ledger.json").mkdir()
    with pytest.raises(ledger.LedgerCorrupt, match="is not a regular file"):
        ledger.Ledger.load(str(tmp_path))


def test_read_lock_creates_nothing_and_shares(tmp_path: pathlib.Path) -> None:
    with ledger.read_lock(str(tmp_path / "never")) as locked:
        assert locked is False
    assert not (tmp_path / "never").exists()
    with ledger.read_lock(str(tmp_path)) as locked:
        assert locked is False and os.listdir(tmp_path) == []
    with ledger.host_lock(str(tmp_path)):
        pass
    before = os.stat(tmp_path / "lock")
    with ledger.read_lock(str(tmp_path)) as one, ledger.read_lock(str(tmp_path)) as two:
        assert one and two  # dry runs do not wait for each other
        with pytest.raises(ledger.LockHeld), ledger.host_lock(str(tmp_path), blocking=False):
            pass  # a real run waits for a dry run
    after = os.stat(tmp_path / "lock")
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_size,
    )


def test_read_lock_waits_for_the_holder_and_names_it(tmp_path: pathlib.Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
            with (
                pytest.raises(ledger.LockHeld, match=f"held by pid {proc.pid}"),
                ledger.read_lock(str(tmp_path), timeout=0.2),
            ):
                pass
        finally:
            proc.kill()
            proc.wait()
