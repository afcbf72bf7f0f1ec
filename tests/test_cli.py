"""The ``hoststorage`` command line: settings precedence, clean errors, input handling.

Subprocess tests run the installed console script; settings tests call ``Settings.build`` directly.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

from controller import cli, settings
from hostlib import ledger

HOSTSTORAGE = str(pathlib.Path(sys.executable).parent / "hoststorage")


def run(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HOSTSTORAGE_")}
    full_env.update(env or {})
    return subprocess.run(
        [HOSTSTORAGE, *args],
        capture_output=True,
        text=True,
        input=stdin,
        env=full_env,
        timeout=60,
        check=False,
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("hoststorage: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def localfs_doc(tmp_path: pathlib.Path, name: str) -> str:
    """A localfs StorageConnection of ``tmp_path``/d (made here); allow it with ``--allowed-host-path``."""
    (tmp_path / "d").mkdir()
    return textwrap.dedent(f"""\
        apiVersion: hoststorage.io/v1alpha1
        kind: StorageConnection
        metadata: {{name: {name}}}
        spec: {{type: localfs, localfs: {{path: {tmp_path}/d}}}}
        """)


# ---------------------------------------------------------------------------------------- settings


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args([*argv, "status"])


def test_settings_defaults() -> None:
    s = settings.Settings.build(parse(), {})
    assert s.state_dir == "/var/lib/hoststorage"
    assert s.effective_mount_base == "/var/lib/hoststorage/mnt"
    assert s.allowed_host_paths == ()
    assert s.libvirt_uri == "qemu:///system"
    conf = s.host_config()
    assert conf.mount_base == "/var/lib/hoststorage/mnt" and conf.state_dir == "/var/lib/hoststorage"
    assert s.qemu_user == "auto" and conf.qemu_user == "auto"  # VDSM checks qemu's access by default
    off = settings.Settings.build(parse(), {"HOSTSTORAGE_QEMU_USER": "none"})
    assert off.host_config().qemu_user == ""
    named = settings.Settings.build(parse(), {"HOSTSTORAGE_QEMU_USER": "libvirt-qemu"})
    assert named.host_config().qemu_user == "libvirt-qemu"


def test_shared_sources_are_refused_unless_the_admin_allows_them() -> None:
    """Off by default; the flag or HOSTSTORAGE_ALLOW_SHARED_SOURCES turns it on, into the HostConfig."""
    assert settings.Settings.build(parse(), {}).host_config().allow_shared_sources is False
    flag = settings.Settings.build(parse("--allow-shared-sources"), {})
    assert flag.allow_shared_sources is True and flag.host_config().allow_shared_sources is True
    env = settings.Settings.build(parse(), {"HOSTSTORAGE_ALLOW_SHARED_SOURCES": "true"})
    assert env.host_config().allow_shared_sources is True
    off = settings.Settings.build(parse(), {"HOSTSTORAGE_ALLOW_SHARED_SOURCES": "false"})
    assert off.host_config().allow_shared_sources is False


def test_flags_override_environment_which_overrides_defaults() -> None:
    env = {
        "HOSTSTORAGE_STATE_DIR": "/env/state",
        "HOSTSTORAGE_MOUNT_BASE": "/env/mnt",
        "HOSTSTORAGE_ALLOWED_HOST_PATHS": "/a:/b",
        "HOSTSTORAGE_COMMAND_TIMEOUT": "5",
        "HOSTSTORAGE_ALLOW_SUID": "yes",
    }
    from_env = settings.Settings.build(parse(), env)
    assert (from_env.state_dir, from_env.mount_base, from_env.allowed_host_paths) == (
        "/env/state",
        "/env/mnt",
        ("/a", "/b"),
    )
    assert from_env.command_timeout == 5.0 and from_env.allow_suid is True
    flags = parse("--state-dir", "/f/state", "--allowed-host-path", "/x", "--allowed-host-path", "/y")
    from_flags = settings.Settings.build(flags, env)
    assert from_flags.state_dir == "/f/state" and from_flags.allowed_host_paths == ("/x", "/y")
    assert from_flags.mount_base == "/env/mnt"
    # The mount base follows the state dir unless set.
    assert settings.Settings.build(parse("--state-dir", "/s"), {}).effective_mount_base == "/s/mnt"


@pytest.mark.parametrize(
    ("argv", "env", "words"),
    [
        (("--state-dir", "relative"), {}, "state-dir must be an absolute path"),
        ((), {"HOSTSTORAGE_MOUNT_BASE": "mnt"}, "mount-base must be an absolute path"),
        (("--allowed-host-path", "/"), {}, "would allow the whole host"),
        ((), {"HOSTSTORAGE_ALLOW_DEV": "maybe"}, "HOSTSTORAGE_ALLOW_DEV='maybe': expected true or false"),
        ((), {"HOSTSTORAGE_LOCK_TIMEOUT": "soon"}, "expected a number"),
        (("--log-level", "LOUD"), {}, "not a logging level"),
        ((), {"HOSTSTORAGE_QEMU_USER": "-oops"}, "qemu-user '-oops' is not auto, none or a user name"),
    ],
)
def test_bad_settings_are_one_line_errors(argv: tuple[str, ...], env: dict[str, str], words: str) -> None:
    with pytest.raises(settings.SettingsError, match=words):
        settings.Settings.build(parse(*argv), env)
    proc = run(*argv, "status", env=env)
    assert proc.returncode == 2 and words in one_line_error(proc)


@pytest.mark.parametrize(
    ("seconds", "ok"),
    [(0, True), (-1, False), (9.99, False), (10, True), (3600, True), (86400, True), (86400.5, False)],
)
def test_the_relist_period_is_off_or_bounded(seconds: float, ok: bool) -> None:
    conf = settings.Settings(relist_seconds=seconds)
    if ok:
        conf.validate()
    else:
        with pytest.raises(settings.SettingsError, match=re.escape("be 0 (off) or between 10 and 86400")):
            conf.validate()


def test_every_setting_has_a_default_and_a_docstring() -> None:
    tree = ast.parse(inspect.getsource(settings.Settings))
    body = tree.body[0].body  # type: ignore[attr-defined]
    documented = {
        stmt.target.id
        for stmt, following in itertools.pairwise(body)
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
        and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
        and isinstance(following.value.value, str)
    }  # fmt: skip
    for field in dataclasses.fields(settings.Settings):
        assert field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
        assert field.name in documented, f"{field.name} needs a docstring"


# ------------------------------------------------------------------------------------------ command


def test_version() -> None:
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("hoststorage ")


def test_no_command_is_a_usage_error() -> None:
    proc = run()
    assert proc.returncode == 2 and "a command is required" in proc.stderr


def test_unreadable_file(tmp_path: pathlib.Path) -> None:
    proc = run("--state-dir", str(tmp_path), "apply", "-f", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 2
    assert one_line_error(proc).endswith("missing.yaml: No such file or directory")


def test_bad_yaml_names_the_line(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: [unclosed\n")
    proc = run("--state-dir", str(tmp_path), "apply", "-f", str(bad))
    assert proc.returncode == 2
    assert f"InvalidSpec: {bad}#1: invalid YAML at line 3: " in one_line_error(proc)


def test_a_document_must_be_a_mapping(tmp_path: pathlib.Path) -> None:
    proc = run("--state-dir", str(tmp_path), "apply", "-f", "-", stdin="- a\n- b\n")
    assert proc.returncode == 2 and "stdin#1: a document must be a mapping" in one_line_error(proc)


def test_bad_secret_data_is_refused_without_echoing_it(tmp_path: pathlib.Path) -> None:
    text = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {password: 'not*base64!'}\n"
    proc = run("--state-dir", str(tmp_path), "apply", "-f", "-", stdin=text)
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert "stdin#1: data.password: is not base64" in line and "not*base64!" not in proc.stderr + proc.stdout


def test_only_unknown_kinds_is_nothing_to_do(tmp_path: pathlib.Path) -> None:
    proc = run(
        "--state-dir",
        str(tmp_path),
        "apply",
        "-f",
        "-",
        stdin="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
    )
    assert proc.returncode == 0 and "No objects." in proc.stdout
    assert "skipped stdin#1: kind 'ConfigMap'" in proc.stderr


def test_duplicate_names_are_invalid(tmp_path: pathlib.Path) -> None:
    doc = localfs_doc(tmp_path, "twice")
    proc = run("--state-dir", str(tmp_path / "s"), "--allowed-host-path", str(tmp_path), "apply", "-f", "-",
               "-o", "json", stdin=doc + "---\n" + doc)  # fmt: skip
    first, second = json.loads(proc.stdout)
    assert proc.returncode == 2 and first["ready"] is True  # the first is applied, the run says "bad input"
    assert second["reason"] == "InvalidSpec" and "duplicate StorageConnection 'twice'" in second["message"]
    run(
        "--state-dir",
        str(tmp_path / "s"),
        "--allowed-host-path",
        str(tmp_path),
        "delete",
        "-f",
        "-",
        stdin=doc,
    )


def test_held_host_lock_is_reported_with_the_holder(tmp_path: pathlib.Path) -> None:
    with ledger.host_lock(str(tmp_path)):
        proc = run("--state-dir", str(tmp_path), "apply", "-f", "-", stdin="",
                   env={"HOSTSTORAGE_LOCK_TIMEOUT": "0.2"})  # fmt: skip
    assert proc.returncode == 1
    assert f"HostLocked: host lock {tmp_path}/lock is held by pid {os.getpid()}" in one_line_error(proc)


def test_status_of_a_fresh_host_is_empty(tmp_path: pathlib.Path) -> None:
    proc = run("--state-dir", str(tmp_path / "never"), "status", "-o", "json")
    assert proc.returncode == 0 and json.loads(proc.stdout) == []
    assert not (tmp_path / "never").exists()


def test_help_lists_every_subcommand() -> None:
    proc = run("--help")
    for cmd in cli.SUBCOMMANDS:
        assert cmd.name in proc.stdout


def test_local_commands_do_not_import_the_cluster_stack() -> None:
    code = "import sys; from controller import cli; cli.build_parser('status'); print('kopf' in sys.modules)"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert proc.stdout.strip() == "False"


def test_state_dir_from_the_environment(tmp_path: pathlib.Path) -> None:
    doc = localfs_doc(tmp_path, "env")
    env = {
        "HOSTSTORAGE_STATE_DIR": str(tmp_path / "s"),
        "HOSTSTORAGE_ALLOWED_HOST_PATHS": f"/nonexistent:{tmp_path}",
    }
    assert run("apply", "-f", "-", stdin=doc, env=env).returncode == 0
    assert (tmp_path / "s" / "ledger.json").exists() and (tmp_path / "s" / "mnt").is_dir()
    assert json.loads(run("status", "-o", "json", env=env).stdout)[0]["name"] == "env"
    assert run("delete", "-f", "-", stdin=doc, env=env).returncode == 0


# ------------------------------------------------------------------------ global flags, both places

# The arguments each subcommand needs besides the global flags; a new subcommand with a required
# argument fails here until it is listed.
REQUIRED = {"apply": ["-f", "x.yaml"], "delete": ["-f", "x.yaml"], "monitor": ["-f", "x.yaml"],
            "completion": ["bash"]}  # fmt: skip
GLOBAL_VALUES = {"DIR": ("/before", "/after"), "URI": ("qemu:///before", "qemu:///after"),
                 "LEVEL": ("ERROR", "DEBUG"), "TYPE": ("ocfs2", "gfs2")}  # fmt: skip


def _global_flags() -> list[argparse.Action]:
    """The top-level parser's flags other than --help/--version, read off the parser itself."""
    return [a for a in cli.build_parser()._actions if a.option_strings and a.dest not in ("help", "version")]


def test_the_global_flags_are_the_settings_flags() -> None:
    fields = {f.name for f in dataclasses.fields(settings.Settings)}
    flags = _global_flags()
    assert {a.option_strings[0] for a in flags} == {g.flag for g in cli.GLOBAL_FLAGS}
    assert all(a.dest in fields for a in flags)


@pytest.mark.parametrize("command", [c.name for c in cli.SUBCOMMANDS])
def test_every_global_flag_works_before_and_after_every_subcommand(command: str) -> None:
    rest = REQUIRED.get(command, [])
    for action in _global_flags():
        flag, dest = action.option_strings[0], action.dest
        if action.nargs == 0:  # a switch: on when given, in either place
            assert getattr(cli.parse([command, *rest])[1], dest) is None, (flag, command)
            assert getattr(cli.parse([flag, command, *rest])[1], dest) is True, (flag, "before", command)
            assert getattr(cli.parse([command, *rest, flag])[1], dest) is True, (flag, "after", command)
            continue
        before, after = GLOBAL_VALUES[str(action.metavar)]
        repeatable = isinstance(action, argparse._AppendAction)
        expect = (lambda v: [v]) if repeatable else (lambda v: v)
        _, args = cli.parse([flag, before, command, *rest])
        assert getattr(args, dest) == expect(before), (flag, "before", command)
        _, args = cli.parse([command, *rest, flag, after])
        assert getattr(args, dest) == expect(after), (flag, "after", command)
        _, args = cli.parse([command, f"{flag}={after}", *rest])
        assert getattr(args, dest) == expect(after), (flag, "after, = form", command)
        # Nothing of the after-copy is left for Settings.build to trip over.
        assert not [k for k in vars(args) if k.startswith("after_command_")]


@pytest.mark.parametrize("command", [c.name for c in cli.SUBCOMMANDS])
def test_a_flag_after_the_subcommand_wins_and_repeated_paths_add_up(command: str) -> None:
    rest = REQUIRED.get(command, [])
    _, args = cli.parse(["--log-level", "ERROR", "--state-dir", "/s1", "--allowed-host-path", "/a",
                         command, *rest, "--state-dir", "/s2", "--allowed-host-path", "/b"])  # fmt: skip
    conf = settings.Settings.build(args, {})
    assert conf.state_dir == "/s2" and conf.log_level == "ERROR"
    assert conf.allowed_host_paths == ("/a", "/b")
    # Not given after: the value before stands.
    _, args = cli.parse(["--state-dir", "/s1", command, *rest])
    assert settings.Settings.build(args, {}).state_dir == "/s1"


def test_global_flags_after_the_subcommand_on_the_real_command(tmp_path: pathlib.Path) -> None:
    doc = localfs_doc(tmp_path, "after")
    state = str(tmp_path / "s")
    proc = run("apply", "-f", "-", "--state-dir", state, "--allowed-host-path", str(tmp_path), stdin=doc)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "s" / "ledger.json").exists()
    assert json.loads(run("status", "-o", "json", "--state-dir", state).stdout)[0]["name"] == "after"
    gone = run("delete", "--state-dir", state, "-f", "-", "--allowed-host-path", str(tmp_path), stdin=doc)
    assert gone.returncode == 0, gone.stdout
    bad = run("status", "--state-dir", "relative")
    assert bad.returncode == 2 and "state-dir must be an absolute path" in one_line_error(bad)


@pytest.mark.parametrize("command", [c.name for c in cli.SUBCOMMANDS])
def test_every_subcommand_help_shows_the_global_flags(command: str) -> None:
    proc = run(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "global options (also accepted before the command; given here, they win)" in proc.stdout
    for spec in cli.GLOBAL_FLAGS:
        shown = spec.flag if spec.switch else f"{spec.flag} {spec.metavar}"
        assert shown in proc.stdout, (command, spec.flag)
