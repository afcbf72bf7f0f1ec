"""``hoststorage completion bash|zsh``: the scripts know every subcommand and flag the parser has, and
bash really completes with them (the script is sourced and its function called the way bash calls it).

What is expected is read off the parser here, not off the completion module, so a flag the generator
forgot fails."""

from __future__ import annotations

import argparse
import functools
import pathlib
import shutil
import subprocess
import sys

import pytest

from controller import cli

HOSTSTORAGE = str(pathlib.Path(sys.executable).parent / "hoststorage")


@functools.cache
def script(shell: str) -> str:
    proc = subprocess.run([HOSTSTORAGE, "completion", shell], capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def parser_words() -> dict[str, set[str]]:
    """Every subcommand with all its option strings, and "" for the top level."""
    parser = cli.build_parser(every=True)
    out = {"": {s for a in parser._actions for s in a.option_strings}}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[name] = {s for a in sub._actions for s in a.option_strings}
    return out


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_the_script_names_every_subcommand_and_flag(shell: str) -> None:
    text = script(shell)
    words = parser_words()
    assert set(words) - {""} == {c.name for c in cli.SUBCOMMANDS}
    for command, flags in words.items():
        assert not command or command in text, command
        for flag in flags:
            assert flag in text, (shell, command, flag)


def bash_complete(line: str) -> list[str]:
    """COMPREPLY for the command line ``line`` (the cursor at its end), from the real script in bash."""
    words = line.split(" ")
    program = (
        f"source /dev/stdin <<'SCRIPT'\n{script('bash')}SCRIPT\n"
        f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
        "_hoststorage; printf '%s\\n' \"${COMPREPLY[@]}\"\n"
    )
    proc = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return [w for w in proc.stdout.splitlines() if w]


def test_bash_completes_subcommands_and_every_flag_of_each() -> None:
    assert bash_complete("hoststorage ap") == ["apply"]
    assert set(bash_complete("hoststorage ")) >= {c.name for c in cli.SUBCOMMANDS}
    for command, flags in parser_words().items():
        if command:
            offered = set(bash_complete(f"hoststorage {command} -"))
            assert offered == flags, command


def test_bash_completes_flag_values(tmp_path: pathlib.Path) -> None:
    assert bash_complete("hoststorage apply -f x -o ") == ["table", "yaml", "json"]
    assert bash_complete("hoststorage status --log-level W") == ["WARNING"]
    assert bash_complete("hoststorage --log-level D") == ["DEBUG"]
    assert bash_complete("hoststorage completion ") == ["bash", "zsh"]
    assert bash_complete("hoststorage agent --health-port ") == []
    (tmp_path / "subdir").mkdir()
    (tmp_path / "file.yaml").write_text("")
    # Directories for DIR flags (before or after the command), files for -f.
    assert bash_complete(f"hoststorage --state-dir {tmp_path}/") == [f"{tmp_path}/subdir"]
    assert bash_complete(f"hoststorage status --state-dir {tmp_path}/") == [f"{tmp_path}/subdir"]
    assert sorted(bash_complete(f"hoststorage apply -f {tmp_path}/")) == [
        f"{tmp_path}/file.yaml", f"{tmp_path}/subdir"]  # fmt: skip


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed (scripts/setup.sh installs it)")
def test_zsh_script_parses_and_registers_itself(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "_hoststorage"
    path.write_text(script("zsh"))
    check = subprocess.run(["zsh", "-n", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stderr
    program = (
        f"autoload -Uz compinit && compinit -u -d {tmp_path}/zcd; source {path}; "
        "print -r -- $_comps[hoststorage]"
    )
    proc = subprocess.run(["zsh", "-f", "-c", program], capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "_hoststorage"


def test_an_unknown_shell_is_a_usage_error() -> None:
    proc = subprocess.run([HOSTSTORAGE, "completion", "fish"], capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    assert proc.returncode == 2 and "invalid choice: 'fish'" in proc.stderr
