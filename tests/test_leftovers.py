"""hostlib.leftovers.clean_stale: empty directories and dangling links no entry owns go; nothing else.

On tmp dirs with a real ledger. The mount table is the real one (the tmp dirs are not mounted), so the
"never descends into a mount point" rule is pinned by monkeypatching ``mounts.read_mounts`` with the
real record type.
"""

from __future__ import annotations

import os
import pathlib

import pytest

from hostlib import fsops, ledger, leftovers, mounts


@pytest.fixture
def base(tmp_path: pathlib.Path) -> pathlib.Path:
    b = tmp_path / "mnt"
    b.mkdir()
    return b


def owner(tmp_path: pathlib.Path, *owned: str) -> ledger.Ledger:
    led = ledger.Ledger(str(tmp_path / "state"))
    for i, path in enumerate(owned):
        led.put(ledger.LedgerEntry("StorageConnection", f"c{i}", "", {"mountPoint": path}))
    return led


def test_empty_dirs_and_dangling_links_go_owned_and_live_ones_stay(
    base: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    (base / "empty" / "deeper").mkdir(parents=True)
    (base / "owned").mkdir()
    (base / "full").mkdir()
    (base / "full" / "data").write_bytes(b"keep")
    (base / "dangling").symlink_to(tmp_path / "gone")
    live = tmp_path / "live"
    live.mkdir()
    (base / "live-link").symlink_to(live)
    removed = leftovers.clean_stale(str(base), owner(tmp_path, str(base / "owned")))
    assert sorted(removed) == sorted([str(base / "empty"), str(base / "empty" / "deeper"),
                                      str(base / "dangling")])  # fmt: skip
    assert sorted(os.listdir(base)) == ["full", "live-link", "owned"]
    assert (base / "full" / "data").read_bytes() == b"keep"


def test_a_link_to_a_directory_is_never_followed(base: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """A link in the base pointing at a tree of empty directories elsewhere: the tree stays."""
    outside = tmp_path / "outside"
    (outside / "a" / "b").mkdir(parents=True)
    (base / "to-outside").symlink_to(outside)
    leftovers.clean_stale(str(base), owner(tmp_path))
    assert (outside / "a" / "b").is_dir()


def test_never_descends_into_a_mount_point(
    base: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (base / "mounted" / "empty-inside").mkdir(parents=True)
    real = mounts.read_mounts()
    fake = mounts.MountRecord(mount_id=99999, parent_id=1, major_minor="0:0", root="/",
                              target=str(base / "mounted"), options=(), fstype="ext4", source="/dev/loop9",
                              super_options=())  # fmt: skip
    monkeypatch.setattr(mounts, "read_mounts", lambda: [*real, fake])
    assert leftovers.clean_stale(str(base), owner(tmp_path)) == []
    assert (base / "mounted" / "empty-inside").is_dir()


def test_a_directory_swapped_for_a_link_between_look_and_remove_is_kept(
    base: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (base / "empty").mkdir()
    outside = tmp_path / "outside-empty"
    outside.mkdir()

    seen: list[str] = []
    original = fsops.lookup

    def lookup_then_swap(root: str, rel: str) -> os.stat_result | None:
        st = original(root, rel)
        if rel == "empty" and not seen:
            seen.append(rel)
            (base / "empty").rmdir()
            (base / "empty").symlink_to(outside)
        return st

    monkeypatch.setattr(fsops, "lookup", lookup_then_swap)
    assert leftovers.clean_stale(str(base), owner(tmp_path)) == []
    assert (base / "empty").is_symlink() and outside.is_dir()


def test_remove_empty_dir_removes_only_an_empty_directory_reached_without_links(
    base: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    outside = tmp_path / "outside"
    (outside / "pool").mkdir(parents=True)
    (base / "pools").symlink_to(outside)
    assert leftovers.remove_empty_dir(str(base), str(base / "pools" / "pool")) is False
    assert (outside / "pool").is_dir()
    (base / "pools").unlink()
    (base / "pools" / "full").mkdir(parents=True)
    (base / "pools" / "full" / "vol").write_bytes(b"data")
    assert leftovers.remove_empty_dir(str(base), str(base / "pools" / "full")) is False
    (base / "pools" / "empty").mkdir()
    assert leftovers.remove_empty_dir(str(base), str(base / "pools" / "empty")) is True
    assert sorted(os.listdir(base / "pools")) == ["full"]
