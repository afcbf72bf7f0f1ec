"""``hoststorage completion bash|zsh``: shell completion scripts, generated from the argument parser.

Nothing here lists a subcommand or a flag by hand: :func:`describe` walks the parser
:func:`controller.cli.build_parser` builds with every subcommand's arguments, so a new flag is completed
as soon as it exists. What a flag's value completes to comes from the flag itself: its ``choices``
(``-o table|yaml|json``), the log level names for ``LEVEL``, directories for ``DIR``, nothing for a
number, file names otherwise.

Install (bash): ``hoststorage completion bash > /etc/bash_completion.d/hoststorage``; (zsh):
``hoststorage completion zsh > "${fpath[1]}/_hoststorage"``, or ``source <(hoststorage completion zsh)``
after ``compinit``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from controller import cli, settings

SHELLS = ("bash", "zsh")
PROG = "hoststorage"


@dataclasses.dataclass(frozen=True)
class Option:
    names: tuple[str, ...]
    help: str
    takes_value: bool
    repeatable: bool = False
    value: str = "file"
    """What the value completes to: ``words``, ``dir``, ``file`` or ``none`` (a number, free text)."""
    words: tuple[str, ...] = ()
    metavar: str = ""


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    help: str
    options: tuple[Option, ...]
    positional_words: tuple[str, ...] = ()
    """Choices of the command's positional arguments (``completion bash|zsh``)."""


def _short_help(text: str | None) -> str:
    text = (text or "").replace("\n", " ")
    return text.split(" (", 1)[0].strip()


def _option(action: argparse.Action) -> Option:
    takes_value = action.nargs != 0
    repeatable = isinstance(action, argparse._AppendAction)
    metavar = action.metavar if isinstance(action.metavar, str) else ""
    value = "file"
    words: tuple[str, ...] = ()
    if action.choices is not None:
        value, words = "words", tuple(str(c) for c in action.choices)
    elif metavar == "LEVEL":
        value, words = "words", settings.LOG_LEVELS
    elif metavar == "DIR":
        value = "dir"
    elif action.type in (int, float):
        value = "none"
    return Option(
        names=tuple(action.option_strings),
        help=_short_help(action.help),
        takes_value=takes_value,
        repeatable=repeatable,
        value=value,
        words=words,
        metavar=metavar or (action.dest.upper() if takes_value else ""),
    )


def _options(parser: argparse.ArgumentParser) -> tuple[tuple[Option, ...], tuple[str, ...]]:
    options: list[Option] = []
    positional: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        if action.option_strings:
            options.append(_option(action))
        elif action.choices is not None:
            positional.extend(str(c) for c in action.choices)
    return tuple(options), tuple(positional)


def describe(parser: argparse.ArgumentParser) -> tuple[tuple[Option, ...], tuple[Command, ...]]:
    """The top-level options and every subcommand with its options, read off ``parser``."""
    top, _ = _options(parser)
    commands: list[Command] = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help or "" for a in action._choices_actions}
        for name, sub in action.choices.items():
            options, positional = _options(sub)
            commands.append(Command(name, _short_help(helps.get(name)), options, positional))
    return top, tuple(commands)


# ------------------------------------------------------------------------------------------ bash


def _bash_value(opt: Option) -> str:
    if opt.value == "words":
        return f'mapfile -t COMPREPLY < <(compgen -W "{" ".join(opt.words)}" -- "$cur")'
    if opt.value == "dir":
        return 'mapfile -t COMPREPLY < <(compgen -d -- "$cur")'
    if opt.value == "none":
        return "COMPREPLY=()"
    return 'mapfile -t COMPREPLY < <(compgen -f -- "$cur")'


def bash(parser: argparse.ArgumentParser) -> str:
    top, commands = describe(parser)
    names = "|".join(c.name for c in commands)
    # A global flag's value completes the same way before and after any command: one case for it.
    value_cases = []
    for opt in top:
        if opt.takes_value:
            patterns = "|".join(f'*" {n}"' for n in opt.names)
            value_cases.append(f"        {patterns}) {_bash_value(opt)}; return ;;")
    for c in commands:
        for opt in c.options:
            if opt.takes_value and opt not in top:
                patterns = "|".join(f'"{c.name} {n}"' for n in opt.names)
                value_cases.append(f"        {patterns}) {_bash_value(opt)}; return ;;")
    word_cases = []
    top_words = [n for o in top for n in o.names] + [c.name for c in commands]
    word_cases.append(f'        "") words="{" ".join(top_words)}" ;;')
    for c in commands:
        words = [n for o in c.options for n in o.names]
        positional = (
            f'; [[ $cur == -* ]] || words="{" ".join(c.positional_words)}"' if c.positional_words else ""
        )
        word_cases.append(f'        {c.name}) words="{" ".join(words)}"{positional} ;;')
    lines = [
        f"# bash completion for {PROG}, generated from its argument parser by `{PROG} completion bash`.",
        f"# Install: {PROG} completion bash > /etc/bash_completion.d/{PROG}",
        f"_{PROG}() {{",
        '    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} cmd="" words="" i',
        '    if [[ $prev == "=" ]]; then prev=${COMP_WORDS[COMP_CWORD-2]}; fi',
        '    if [[ $cur == "=" ]]; then cur=""; fi',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        f'        case ${{COMP_WORDS[i]}} in {names}) cmd=${{COMP_WORDS[i]}}; break ;; esac',
        "    done",
        '    case "$cmd $prev" in',
        *value_cases,
        "    esac",
        "    case $cmd in",
        *word_cases,
        "    esac",
        '    mapfile -t COMPREPLY < <(compgen -W "$words" -- "$cur")',
        "}",
        f"complete -o filenames -F _{PROG} {PROG}",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- zsh


def _zsh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _zsh_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]").replace(":", "\\:")


def _zsh_specs(options: tuple[Option, ...]) -> list[str]:
    specs = []
    for opt in options:
        action = ""
        if opt.takes_value:
            what = {"words": f"({' '.join(opt.words)})", "dir": "_files -/", "file": "_files", "none": " "}
            action = f":{_zsh_escape(opt.metavar.lower())}:{what[opt.value]}"
        exclusive = "" if opt.repeatable or len(opt.names) < 2 else f"({' '.join(opt.names)})"
        if "--help" in opt.names or "--version" in opt.names:
            exclusive = "(- *)"
        for name in opt.names:
            prefix = "*" if opt.repeatable else exclusive
            specs.append(_zsh_quote(f"{prefix}{name}[{_zsh_escape(opt.help)}]{action}"))
    return specs


def zsh(parser: argparse.ArgumentParser) -> str:
    top, commands = describe(parser)
    described = " ".join(_zsh_quote(f"{c.name.replace(':', chr(92) + ':')}:{c.help}") for c in commands)
    cases = []
    for c in commands:
        specs = _zsh_specs(c.options)
        if c.positional_words:
            specs.append(_zsh_quote(f"1:{c.name} argument:({' '.join(c.positional_words)})"))
        cases.append(f"        ({c.name}) _arguments -s {' '.join(specs)} && ret=0 ;;")
    lines = [
        f"#compdef {PROG}",
        f"# zsh completion for {PROG}, generated from its argument parser by `{PROG} completion zsh`.",
        f'# Install: {PROG} completion zsh > "${{fpath[1]}}/_{PROG}", or after compinit:',
        f"#   source <({PROG} completion zsh)",
        f"_{PROG}() {{",
        "    local curcontext=$curcontext state line ret=1",
        "    typeset -A opt_args",
        f"    _arguments -C -s {' '.join(_zsh_specs(top))} '1: :->command' '*:: :->args' && ret=0",
        "    case $state in",
        "    (command)",
        f"        local -a commands=({described})",
        f"        _describe -t commands '{PROG} command' commands && ret=0 ;;",
        "    (args)",
        f"        curcontext=${{curcontext%:*:*}}:{PROG}-$line[1]:",
        "        case $line[1] in",
        *cases,
        "        esac ;;",
        "    esac",
        "    return ret",
        "}",
        f'if [[ $funcstack[1] == _{PROG} ]]; then _{PROG} "$@"; else compdef _{PROG} {PROG}; fi',
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ subcommand


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shell", choices=SHELLS, help="the shell to print a completion script for")


def run(args: argparse.Namespace, conf: settings.Settings) -> int:
    """The ``completion`` subcommand."""
    parser = cli.build_parser(every=True)
    sys.stdout.write(bash(parser) if args.shell == "bash" else zsh(parser))
    return 0
