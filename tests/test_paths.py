"""Validators and confinement: malformed input next to good input, each refusal with a specific message."""

from __future__ import annotations

import os
import pathlib

import pytest

from hostlib import commands, errors, paths


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a", "a"),
        ("nfs-1.example", "nfs-1.example"),
        ("x" * 253, "x" * 253),
    ],
)
def test_good_names(value: str, expected: str) -> None:
    assert paths.validate_name(value, field="metadata.name") == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "must not be empty"),
        ("A", "not a valid name"),
        ("-a", "not a valid name"),
        ("a-", "not a valid name"),
        ("a_b", "not a valid name"),
        ("a/b", "not a valid name"),
        ("a b", "not a valid name"),
        ("a;rm -rf", "not a valid name"),
        ("x" * 254, "limit is 253"),
        (7, "must be a string"),
        (None, "must be a string"),
    ],
)
def test_bad_names(value: object, message: str) -> None:
    with pytest.raises(errors.InvalidSpec, match=message) as info:
        paths.validate_name(value, field="metadata.name")
    assert info.value.field == "metadata.name"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("nfs.example.com", "nfs.example.com"),
        ("nfs.example.com.", "nfs.example.com"),
        ("server", "server"),
        ("10.0.0.1", "10.0.0.1"),
        ("[fd00::1]", "[fd00::1]"),
        ("fd00:0::1", "[fd00::1]"),
        ("[FD00:0:0::1]", "[fd00::1]"),
        ("a-b.c0", "a-b.c0"),
    ],
)
def test_good_hostnames(value: str, expected: str) -> None:
    assert paths.validate_hostname(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "must not be empty"),
        ("-oexec", "not a valid hostname"),
        ("a..b", "not a valid hostname"),
        ("a_b", "not a valid hostname"),
        ("a b", "not a valid hostname"),
        ("a;b", "not a valid hostname"),
        ("$(reboot)", "not a valid hostname"),
        ("a\nb", "control character"),
        ("a\0b", "control character"),
        ("10.0.0.256", "not a valid IPv4"),
        ("1.2.3", "not a valid IPv4"),
        ("[fd00::1", "bracketed IPv6"),
        ("[nothex]", "bracketed IPv6"),
        ("[fe80::1%eth0]", "bracketed IPv6"),
        ("host:2049", "not a hostname or IP"),
        ("x" * 64 + ".com", "not a valid hostname"),
        ("a." * 127 + "ab", "longer than 253"),
        (["host"], "must be a string"),
    ],
)
def test_bad_hostnames(value: object, message: str) -> None:
    with pytest.raises(errors.InvalidSpec, match=message):
        paths.validate_hostname(value, field="spec.nfs.server")


def test_bare_ipv6_can_be_refused() -> None:
    with pytest.raises(errors.InvalidSpec, match="IPv6 as \\[addr\\]"):
        paths.validate_hostname("fd00::1", allow_bare_ipv6=False)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.0.0.1", ("10.0.0.1", 3260)),
        ("10.0.0.1:3261", ("10.0.0.1", 3261)),
        ("[fd00::1]", ("[fd00::1]", 3260)),
        ("[fd00::1]:860", ("[fd00::1]", 860)),
        ("san.example", ("san.example", 3260)),
    ],
)
def test_split_host_port(value: str, expected: tuple[str, int]) -> None:
    assert paths.split_host_port(value, default_port=3260) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10.0.0.1:", "empty port"),
        ("10.0.0.1:0", "port must be"),
        ("10.0.0.1:65536", "port must be"),
        ("10.0.0.1:x", "port must be"),
        ("fd00::1", "IPv6 address as"),
        ("[fd00::1", "unterminated"),
        ("[fd00::1]3260", "expected ':port'"),
        ("-p:1", "not a valid hostname"),
    ],
)
def test_bad_host_port(value: str, message: str) -> None:
    with pytest.raises(errors.InvalidSpec, match=message):
        paths.split_host_port(value, default_port=3260)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/", "/"),
        ("/export", "/export"),
        ("/export/", "/export"),
        ("//export//a/", "/export/a"),
        ("/a/./b", "/a/b"),
        ("/with space/ok", "/with space/ok"),
        ("/" + "a" * 1023, "/" + "a" * 1023),
    ],
)
def test_good_abs_paths(value: str, expected: str) -> None:
    assert paths.validate_abs_path(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "must not be empty"),
        ("export", "not an absolute path"),
        ("./export", "not an absolute path"),
        ("/a/../b", "'..' component"),
        ("/..", "'..' component"),
        ("/a/..", "'..' component"),
        ("/a\0b", "NUL byte"),
        ("/a\nb", "control character"),
        ("/a\tb", "control character"),
        ("/" + "a" * 1024, "longer than 1024 bytes"),
        (b"/bytes", "must be a string"),
    ],
)
def test_bad_abs_paths(value: object, message: str) -> None:
    with pytest.raises(errors.InvalidSpec, match=message) as info:
        paths.validate_abs_path(value, field="spec.nfs.export")
    assert str(info.value).startswith("spec.nfs.export: ")


def test_confine_keeps_paths_inside(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    root = str(tmp_path)
    assert paths.confine(root, "a/b") == str(tmp_path / "a" / "b")
    assert paths.confine(root, "") == root
    assert paths.confine(root, "new/not/yet") == str(tmp_path / "new" / "not" / "yet")


@pytest.mark.parametrize(
    ("relative", "message"),
    [
        ("../etc", "'..' component"),
        ("a/../../etc", "'..' component"),
        ("/etc", "must be relative"),
        ("a\0", "NUL"),
        ("escape", "outside"),
        ("escape/passwd", "outside"),
        ("inner/../../x", "'..' component"),
    ],
)
def test_confine_refuses_escapes(tmp_path: pathlib.Path, relative: str, message: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    os.symlink("/etc", root / "escape")
    with pytest.raises(errors.InvalidSpec, match=message):
        paths.confine(str(root), relative, field="spec.connectionRef.path")


def test_ensure_under_follows_symlinks_both_ways(tmp_path: pathlib.Path) -> None:
    real_root = tmp_path / "real"
    (real_root / "d").mkdir(parents=True)
    os.symlink(real_root, tmp_path / "alias")
    os.symlink(real_root / "d", real_root / "inner-link")
    # a root that is itself a link works, links that stay inside are fine
    assert paths.ensure_under(str(tmp_path / "alias"), str(tmp_path / "alias" / "d")) == str(real_root / "d")
    assert paths.ensure_under(str(real_root), str(real_root / "inner-link")) == str(real_root / "d")
    # a sibling that shares the prefix is not inside
    (tmp_path / "realx").mkdir()
    with pytest.raises(errors.InvalidSpec, match="outside"):
        paths.ensure_under(str(real_root), str(tmp_path / "realx"))


@pytest.mark.parametrize(
    ("root", "path", "inside"),
    [
        ("/a", "/a", True),
        ("/a", "/a/b", True),
        ("/a/", "/a/b", True),
        ("/a", "/ab", False),
        ("/a", "/", False),
        ("/", "/anything", True),
    ],
)
def test_is_under(root: str, path: str, inside: bool) -> None:
    assert paths.is_under(root, path) is inside


def test_confine_on_storage_resolves_in_a_child_and_refuses_link_escapes(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "mnt"
    (root / "images").mkdir(parents=True)
    os.symlink("/etc", root / "escape")
    runner = commands.Runner()
    assert paths.confine_on_storage(str(root), "images", runner=runner) == str(root / "images")
    assert paths.confine_on_storage(str(root), "new/dir", runner=runner) == str(root / "new" / "dir")
    with pytest.raises(errors.InvalidSpec, match="outside"):
        paths.confine_on_storage(str(root), "escape/passwd", runner=runner, field="path")
    with pytest.raises(errors.InvalidSpec, match=r"'\.\.'"):
        paths.confine_on_storage(str(root), "../x", runner=runner)


def test_confine_on_storage_reports_hung_storage_as_a_timeout() -> None:
    def hung(argv: object, *, timeout: float, **_: object) -> commands.Result:
        raise commands.CommandError(["realpath"], None, "", timed_out=True)

    with pytest.raises(errors.Timeout, match="does not answer"):
        paths.confine_on_storage("/mnt/x", "a", runner=hung)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("rel", "how"),
    [
        ("state", "is"),  # the state dir itself
        ("state/ledger-dir", "lies inside"),
        ("state/mnt/x", "lies inside"),  # inside the mount base
        ("", "contains"),  # the parent of both
        ("link-to-state", "is"),  # a symlink to the state dir, resolved
        ("link-to-state/mnt", "lies inside"),
    ],
)
def test_a_host_path_that_is_holds_or_lies_in_an_own_dir_is_invalid(
    tmp_path: pathlib.Path, rel: str, how: str
) -> None:
    (tmp_path / "state" / "mnt").mkdir(parents=True)
    (tmp_path / "link-to-state").symlink_to(tmp_path / "state")
    own = (str(tmp_path / "state"), str(tmp_path / "state" / "mnt"))
    with pytest.raises(errors.InvalidSpec, match=f"{how} hoststorage's own directory") as info:
        paths.refuse_own_dirs(str(tmp_path / rel) if rel else str(tmp_path), own, field="spec.x")
    assert info.value.field == "spec.x"


@pytest.mark.parametrize("rel", ["data", "statex", "stat", "data/state"])
def test_a_sibling_of_the_own_dirs_is_fine(tmp_path: pathlib.Path, rel: str) -> None:
    (tmp_path / "state").mkdir()
    paths.refuse_own_dirs(str(tmp_path / rel), (str(tmp_path / "state"),))
