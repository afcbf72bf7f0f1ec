"""hostlib.fsops against races: a link swapped in at each step of each operation, on tmp dirs.

Every test runs twice: through openat2 (this kernel has it) and through the per-component
``O_NOFOLLOW`` fallback (``FORCE_FALLBACK``). The invariant each case checks is the module's promise:
the "victim" (a VM disk image outside the working directory) keeps its device, inode, mode and
content; a mismatch is Conflict with nothing removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hostlib import errors, fsops

IMAGE = b"QFI\xfb VM disk image: must survive\n" * 128


@pytest.fixture(params=["openat2", "fallback"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    fallback = request.param == "fallback"
    monkeypatch.setattr(fsops, "FORCE_FALLBACK", fallback)
    calls: list[str] = []
    real = fsops._openat2

    def counting(fd: int, rel: str) -> int:
        calls.append(rel)
        return real(fd, rel)

    monkeypatch.setattr(fsops, "_openat2", counting)
    yield request.param
    # The mode really took the path it names (a walk below the root happened in every test).
    assert bool(calls) == (not fallback)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "sub").mkdir(parents=True)
    return r


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    v = tmp_path / "images" / "disk.qcow2"
    v.parent.mkdir()
    v.write_bytes(IMAGE)
    v.chmod(0o640)
    return v


def fingerprint(p: Path) -> tuple[int, int, int, bytes]:
    st = p.lstat()
    return (st.st_dev, st.st_ino, st.st_mode, p.read_bytes())


def at_step(monkeypatch: pytest.MonkeyPatch, step: str, move: Callable[[str], None]) -> list[str]:
    """Run ``move(name)`` once when fsops reaches ``step``; returns the steps seen."""
    seen: list[str] = []

    def hook(s: str, name: str) -> None:
        seen.append(s)
        if s == step and seen.count(s) == 1:
            move(name)

    monkeypatch.setattr(fsops, "hook", hook)
    return seen


def test_this_kernel_has_openat2() -> None:
    assert fsops.has_openat2()


@pytest.mark.parametrize("bad", ["/abs", "a/../b", "./a", "a\0b"])
def test_paths_that_could_escape_are_refused(bad: str) -> None:
    with pytest.raises(errors.InvalidSpec):
        fsops.parts(bad)


def test_relative_is_lexical_and_refuses_outside() -> None:
    assert fsops.relative("/a/b", "/a/b/c/d") == "c/d"
    assert fsops.relative("/a/b/", "/a/b") == ""
    with pytest.raises(errors.InvalidSpec):
        fsops.relative("/a/b", "/a/bc")


# ------------------------------------------------------------------------------------ the walk


def test_symlinked_component_is_conflict_and_not_followed(mode: str, root: Path, victim: Path) -> None:
    (root / "link").symlink_to(victim.parent)
    with pytest.raises(errors.Conflict, match="nothing followed"):
        fsops.create_file(str(root), "link/new", b"x")
    assert sorted(os.listdir(victim.parent)) == ["disk.qcow2"]


def test_file_as_component_is_conflict(mode: str, root: Path) -> None:
    (root / "file").write_bytes(b"")
    with pytest.raises(errors.Conflict):
        fsops.mkdir(str(root), "file/x")


def test_parent_swapped_after_walk_acts_in_the_directory_walked(
    mode: str, root: Path, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def swap(_name: str) -> None:
        (root / "sub").rename(root / "sub.moved")
        (root / "sub").symlink_to(victim.parent)

    at_step(monkeypatch, "walked", swap)
    fsops.create_file(str(root), "sub/probe", b"p")
    assert (root / "sub.moved" / "probe").read_bytes() == b"p"
    assert sorted(os.listdir(victim.parent)) == ["disk.qcow2"]


# ------------------------------------------------------------------------------------ create


def test_create_file_returns_the_ident_of_the_file_it_made(mode: str, root: Path) -> None:
    made = fsops.create_file(str(root), "sub/probe", b"hello", mode=0o600)
    st = (root / "sub" / "probe").lstat()
    assert made == (st.st_dev, st.st_ino)
    assert (root / "sub" / "probe").read_bytes() == b"hello"
    assert st.st_mode & 0o777 == 0o600


def test_create_file_never_adopts_an_existing_name(mode: str, root: Path, victim: Path) -> None:
    (root / "sub" / "probe").symlink_to(victim)
    before = fingerprint(victim)
    with pytest.raises(FileExistsError):
        fsops.create_file(str(root), "sub/probe", b"x")
    assert fingerprint(victim) == before


def test_create_file_link_planted_just_before_create_is_not_written_through(
    mode: str, root: Path, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = fingerprint(victim)
    at_step(monkeypatch, "walked", lambda name: (root / "sub" / name).symlink_to(victim))
    with pytest.raises(FileExistsError):
        fsops.create_file(str(root), "sub/probe", b"x")
    assert fingerprint(victim) == before


def test_mkdir_never_adopts_and_returns_ident(mode: str, root: Path) -> None:
    made = fsops.mkdir(str(root), "sub/d")
    st = (root / "sub" / "d").lstat()
    assert made == (st.st_dev, st.st_ino)
    with pytest.raises(FileExistsError):
        fsops.mkdir(str(root), "sub/d")


def test_mkdir_swapped_for_a_link_after_creation_is_conflict(
    mode: str, root: Path, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def swap(name: str) -> None:
        (root / "sub" / name).rmdir()
        (root / "sub" / name).symlink_to(victim.parent)

    at_step(monkeypatch, "created", swap)
    with pytest.raises(errors.Conflict):
        fsops.mkdir(str(root), "sub/d")
    assert sorted(os.listdir(victim.parent)) == ["disk.qcow2"]


def test_mkdir_swapped_for_someone_elses_directory_is_conflict(
    mode: str, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def swap(name: str) -> None:
        (root / "sub" / name).rmdir()
        (root / "sub" / name).mkdir()
        os.chown(root / "sub" / name, 4242, 4242)

    at_step(monkeypatch, "created", swap)
    with pytest.raises(errors.Conflict, match="someone else"):
        fsops.mkdir(str(root), "sub/d")


def test_makedirs_creates_the_missing_ones_and_refuses_a_link(mode: str, root: Path, victim: Path) -> None:
    made = fsops.makedirs(str(root), "sub/a/b")
    assert [rel for rel, _ in made] == ["sub/a", "sub/a/b"]
    assert fsops.makedirs(str(root), "sub/a/b") == []
    (root / "l").symlink_to(victim.parent)
    with pytest.raises(errors.Conflict):
        fsops.makedirs(str(root), "l/x")
    assert sorted(os.listdir(victim.parent)) == ["disk.qcow2"]


def test_symlink_and_link_return_the_ident_of_the_new_name(mode: str, root: Path, victim: Path) -> None:
    made = fsops.symlink(str(root), "sub/l", str(victim))
    st = (root / "sub" / "l").lstat()
    assert made == (st.st_dev, st.st_ino)
    assert fsops.readlink(str(root), "sub/l") == str(victim)
    with pytest.raises(FileExistsError):
        fsops.symlink(str(root), "sub/l", "/elsewhere")
    (root / "f").write_bytes(b"f")
    hard = fsops.link(str(root), "f", "sub/h")
    assert hard == fsops.ident((root / "f").lstat())


def test_readlink_of_a_non_link_or_absent_is_none(mode: str, root: Path) -> None:
    (root / "sub" / "f").write_bytes(b"")
    assert fsops.readlink(str(root), "sub/f") is None
    assert fsops.readlink(str(root), "sub/absent") is None


# ------------------------------------------------------------------------------------ remove


def test_remove_of_what_we_made(mode: str, root: Path) -> None:
    made = fsops.create_file(str(root), "sub/probe", b"x")
    assert fsops.remove(str(root), "sub/probe", expect=made) is True
    assert not (root / "sub" / "probe").exists()
    assert fsops.remove(str(root), "sub/probe", expect=made) is False
    assert os.listdir(root / "sub") == []


def test_remove_of_a_link_planted_at_the_name_is_conflict(mode: str, root: Path, victim: Path) -> None:
    made = fsops.create_file(str(root), "sub/probe", b"x")
    (root / "sub" / "probe").unlink()
    (root / "sub" / "probe").symlink_to(victim)
    before = fingerprint(victim)
    with pytest.raises(errors.Conflict, match=r"symlink.*nothing removed"):
        fsops.remove(str(root), "sub/probe", expect=made)
    assert fingerprint(victim) == before
    assert (root / "sub" / "probe").is_symlink()
    assert os.listdir(root / "sub") == ["probe"]


def test_remove_of_a_replaced_file_is_conflict(mode: str, root: Path) -> None:
    made = fsops.create_file(str(root), "sub/probe", b"x")
    (root / "sub" / "other").write_bytes(b"someone's")  # made while ours exists: another inode
    (root / "sub" / "other").rename(root / "sub" / "probe")
    with pytest.raises(errors.Conflict, match="not the one hoststorage created"):
        fsops.remove(str(root), "sub/probe", expect=made)
    assert (root / "sub" / "probe").read_bytes() == b"someone's"


@pytest.mark.parametrize("kind", ["file", "dir"])
@pytest.mark.parametrize("step", ["walked", "aside"])
def test_remove_and_rmdir_with_a_link_swapped_in_at_each_step(
    mode: str, step: str, kind: str, root: Path, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """walked: the name is replaced before the remove (Conflict, link kept); aside: ours was already
    moved aside and the attacker plants a link at the free name (ours removed, the link kept)."""
    made = fsops.create_file(str(root), "sub/x", b"x") if kind == "file" else fsops.mkdir(str(root), "sub/x")
    target = victim if kind == "file" else victim.parent
    before = fingerprint(victim)

    def swap(_name: str) -> None:
        p = root / "sub" / "x"
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.is_dir():
            p.rmdir()
        p.symlink_to(target)

    at_step(monkeypatch, step, swap)
    undo = fsops.remove if kind == "file" else fsops.rmdir
    if step == "walked":
        with pytest.raises(errors.Conflict):
            undo(str(root), "sub/x", expect=made)
    else:
        assert undo(str(root), "sub/x", expect=made) is True
    assert fingerprint(victim) == before
    assert sorted(os.listdir(victim.parent)) == ["disk.qcow2"]
    assert os.listdir(root / "sub") == ["x"]
    assert (root / "sub" / "x").is_symlink()


def test_remove_when_the_aside_name_is_swapped_after_compare_never_follows(
    mode: str, root: Path, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = fsops.create_file(str(root), "sub/probe", b"x")
    before = fingerprint(victim)

    def swap(aside: str) -> None:
        (root / "sub" / aside).unlink()
        (root / "sub" / aside).symlink_to(victim)

    at_step(monkeypatch, "compared", swap)
    fsops.remove(str(root), "sub/probe", expect=made)
    assert fingerprint(victim) == before


def test_remove_mismatch_with_the_name_retaken_leaves_both(
    mode: str, root: Path, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our name held someone's file; while it was aside someone took the name again: nothing removed,
    nothing overwritten, the message says where the first one is."""
    (root / "sub" / "probe").write_bytes(b"theirs")
    theirs = fingerprint(root / "sub" / "probe")
    at_step(monkeypatch, "aside", lambda name: (root / "sub" / name).symlink_to(victim))
    with pytest.raises(errors.Conflict, match="left as"):
        fsops.remove(str(root), "sub/probe", expect=(0, 0))
    names = sorted(os.listdir(root / "sub"))
    assert len(names) == 2 and names[1] == "probe"
    assert fingerprint(root / "sub" / names[0]) == theirs
    assert (root / "sub" / "probe").is_symlink()


def test_rmdir_of_what_we_made_and_not_of_a_link(mode: str, root: Path, victim: Path) -> None:
    made = fsops.mkdir(str(root), "sub/d")
    (root / "sub" / "d").rmdir()
    (root / "sub" / "d").symlink_to(victim.parent)
    with pytest.raises(errors.Conflict):
        fsops.rmdir(str(root), "sub/d", expect=made)
    assert (root / "sub" / "d").is_symlink()
    assert sorted(os.listdir(victim.parent)) == ["disk.qcow2"]
    (root / "sub" / "d").unlink()
    made = fsops.mkdir(str(root), "sub/d")
    assert fsops.rmdir(str(root), "sub/d", expect=made) is True
    assert os.listdir(root / "sub") == []


def test_rmdir_of_a_non_empty_directory_leaves_it_under_its_name(mode: str, root: Path) -> None:
    made = fsops.mkdir(str(root), "sub/d")
    (root / "sub" / "d" / "data").write_bytes(b"keep")
    with pytest.raises(OSError, match="not empty"):
        fsops.rmdir(str(root), "sub/d", expect=made)
    assert (root / "sub" / "d" / "data").read_bytes() == b"keep"
    assert os.listdir(root / "sub") == ["d"]


def test_rmdir_refuses_a_file_with_the_recorded_ident(mode: str, root: Path) -> None:
    made = fsops.create_file(str(root), "sub/f", b"")
    with pytest.raises(errors.Conflict):
        fsops.rmdir(str(root), "sub/f", expect=made)
    assert (root / "sub" / "f").exists()


# ------------------------------------------------------------------------------------ rename, chmod


def test_rename_of_ours_and_conflict_for_a_swapped_source(
    mode: str, root: Path, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = fsops.symlink(str(root), "sub/tmp", "/somewhere")
    fsops.rename(str(root), "sub/tmp", "sub/final", expect=made)
    assert os.readlink(root / "sub" / "final") == "/somewhere"
    (root / "sub" / "tmp2").symlink_to(victim)
    with pytest.raises(errors.Conflict):
        fsops.rename(str(root), "sub/tmp2", "sub/final", expect=made)
    assert os.readlink(root / "sub" / "final") == "/somewhere"


def test_chmod_of_ours_and_never_through_a_link(
    mode: str, root: Path, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = fsops.create_file(str(root), "sub/f", b"")
    fsops.chmod(str(root), "sub/f", 0o644, expect=made)
    assert (root / "sub" / "f").stat().st_mode & 0o777 == 0o644
    before = fingerprint(victim)

    def swap(_name: str) -> None:
        (root / "sub" / "f").unlink()
        (root / "sub" / "f").symlink_to(victim)

    at_step(monkeypatch, "walked", swap)
    with pytest.raises(errors.Conflict):
        fsops.chmod(str(root), "sub/f", 0o666, expect=made)
    assert fingerprint(victim) == before


def test_chmod_of_a_hard_link_to_someone_elses_file_is_conflict(mode: str, root: Path, victim: Path) -> None:
    made = fsops.create_file(str(root), "sub/f", b"")
    (root / "sub" / "f").unlink()
    os.link(victim, root / "sub" / "f")
    before = fingerprint(victim)
    with pytest.raises(errors.Conflict):
        fsops.chmod(str(root), "sub/f", 0o666, expect=made)
    assert fingerprint(victim) == before


def test_is_ours_compares_without_following(mode: str, root: Path, victim: Path) -> None:
    made = fsops.create_file(str(root), "sub/f", b"")
    assert fsops.is_ours(str(root), "sub/f", made)
    (root / "sub" / "f").unlink()
    (root / "sub" / "f").symlink_to(victim)
    assert not fsops.is_ours(str(root), "sub/f", fsops.ident(victim.lstat()))
    assert not fsops.is_ours(str(root), "absent", made)


def test_a_racing_thread_swapping_links_never_reaches_the_victim(mode: str, root: Path, victim: Path) -> None:
    """A real racing thread flips sub/probe between our file and a link to the image while we create
    and remove; whatever interleaving happens, the image is untouched and nothing outside root grows."""
    before = fingerprint(victim)
    stop = threading.Event()

    def attacker() -> None:
        p = root / "sub" / "probe"
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
            with contextlib.suppress(FileExistsError):
                p.symlink_to(victim)

    t = threading.Thread(target=attacker)
    t.start()
    outcomes: set[str] = set()
    try:
        for _ in range(300):
            try:
                made = fsops.create_file(str(root), "sub/probe", b"x", sync=False)
            except FileExistsError:
                outcomes.add("exists")
                continue
            try:
                fsops.remove(str(root), "sub/probe", expect=made)
                outcomes.add("removed")
            except errors.Conflict:
                outcomes.add("conflict")
    finally:
        stop.set()
        t.join()
    assert fingerprint(victim) == before
    assert sorted(os.listdir(victim.parent)) == ["disk.qcow2"]
    assert outcomes  # the loop ran; which interleavings happened is the scheduler's
    shutil.rmtree(root)


def test_remove_compares_the_type_too_so_a_reused_inode_is_not_ours(mode: str, root: Path) -> None:
    """Inode numbers are reused at once after a delete (tmpfs, ext4): a link made at our name after
    ours was deleted can carry our (dev, ino); the type tells it apart."""
    made = fsops.create_file(str(root), "sub/probe", b"x")
    (root / "sub" / "probe").unlink()
    (root / "sub" / "probe").symlink_to("/anything")
    if fsops.ident((root / "sub" / "probe").lstat()) != made:
        made = fsops.ident((root / "sub" / "probe").lstat())  # force the reuse this test is about
    with pytest.raises(errors.Conflict):
        fsops.remove(str(root), "sub/probe", expect=made)
    assert fsops.remove(str(root), "sub/probe", expect=made, kind="link") is True


def test_remove_refuses_a_directory_kind(root: Path) -> None:
    with pytest.raises(ValueError, match="not 'dir'"):
        fsops.remove(str(root), "sub", expect=(0, 0), kind="dir")
