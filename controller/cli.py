"""The ``hoststorage`` command: the composition root of every mode.

It parses the command line (the global flags of :data:`GLOBAL_FLAGS` before or after the subcommand's
name, the one after winning), builds :class:`controller.settings.Settings` once (flags, then
``HOSTSTORAGE_*`` environment variables, then defaults), sets up logging, and hands over to one
subcommand. Each subcommand is one line in :data:`SUBCOMMANDS`: its name, a help line, and the module
(imported only when that subcommand runs, so ``apply`` never pays for kopf) with the names of the
function adding its arguments to its sub-parser and of the function running it,
``run(args, settings) -> exit code``. A module may export ``USER_ERRORS``, a tuple of exception types
that mean "the user can fix this": they end as one line on stderr and exit code 2.

Errors a user can fix (an unreadable file, bad YAML, a bad flag value, the host lock held) end as one
line on stderr and a non-zero exit code, never a traceback; so does a bug (``internal error``, exit
:data:`EXIT_INTERNAL`, the traceback only with ``--log-level DEBUG``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.metadata
import logging
import sys
import types
from collections.abc import Callable, Sequence

from controller import settings

log = logging.getLogger(__name__)

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace, settings.Settings], int]


@dataclasses.dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    module: str
    """Imported only when this subcommand is chosen."""
    add_arguments: str = "add_arguments"
    run: str = "run"


_LOCAL = "controller.local"
SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand("apply", "make this host match the manifests", _LOCAL, "add_apply_arguments", "run_apply"),
    Subcommand("delete", "undo what the manifests describe", _LOCAL, "add_delete_arguments", "run_delete"),
    Subcommand("status", "show what hoststorage owns here", _LOCAL, "add_status_arguments", "run_status"),
    Subcommand("monitor", "watch the manifests' DomainMonitors in the foreground", "controller.monitor_cmd"),
    Subcommand("agent", "the node agent: reconcile this node against the cluster", "controller.agent"),
    Subcommand("controller", "the cluster controller: roll-ups, finalizers, clean-up", "controller.cluster"),
    Subcommand("completion", "print a bash or zsh completion script", "controller.completion"),
)

# Exit codes: 0 success / everything Ready, 1 some object not Ready, 2 usage or input error.
EXIT_USAGE = 2
EXIT_INTERNAL = 70  # EX_SOFTWARE (sysexits.h): a bug in hoststorage, not in its input


def version() -> str:
    try:
        return importlib.metadata.version("hoststorage")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclasses.dataclass(frozen=True)
class GlobalFlag:
    """A flag every subcommand takes, before or after its name (like kubectl's and helm's)."""

    flag: str
    dest: str
    """The :class:`controller.settings.Settings` field it sets."""
    metavar: str
    help: str
    repeatable: bool = False
    switch: bool = False
    """A flag without a value that turns the (boolean) setting on."""


GLOBAL_FLAGS: tuple[GlobalFlag, ...] = (
    GlobalFlag("--state-dir", "state_dir", "DIR",
               "ledger, host lock and probe files (env HOSTSTORAGE_STATE_DIR; default /var/lib/hoststorage)"),
    GlobalFlag("--mount-base", "mount_base", "DIR",
               "root of every mount point and link (env HOSTSTORAGE_MOUNT_BASE; default <state-dir>/mnt)"),
    GlobalFlag("--allowed-host-path", "allowed_host_paths", "DIR",
               "a directory localfs connections, dir pools and hostPath monitors may use; repeatable "
               "(env HOSTSTORAGE_ALLOWED_HOST_PATHS, colon-separated)", repeatable=True),
    GlobalFlag("--allow-vfs-type", "extra_vfs_types", "TYPE",
               "a posixfs file system type to allow beside the built-in list (common mount options only); "
               "repeatable (env HOSTSTORAGE_EXTRA_VFS_TYPES, colon-separated)", repeatable=True),
    GlobalFlag("--allow-shared-sources", "allow_shared_sources", "",
               "mount a block source even when it is in use elsewhere on this host (mounted, backing /, "
               "held by device-mapper/md, swap); off by default (env HOSTSTORAGE_ALLOW_SHARED_SOURCES)",
               switch=True),
    GlobalFlag("--libvirt-uri", "libvirt_uri", "URI",
               "libvirt connection for StoragePools (env HOSTSTORAGE_LIBVIRT_URI; default qemu:///system)"),
    GlobalFlag("--log-level", "log_level", "LEVEL",
               "DEBUG, INFO, WARNING (default) or ERROR (env HOSTSTORAGE_LOG_LEVEL)"),
)
_AFTER = "after_command_"
"""Prefix of the destinations the copies after the subcommand write to (merged by :func:`merge_globals`)."""


def add_global_arguments(parser: argparse.ArgumentParser, *, after: bool) -> None:
    """The global flags, on the top-level parser (``after=False``) or on a subcommand's.

    Before the subcommand they default to None ("not given": :meth:`Settings.build` then reads the
    environment); after it they leave no trace unless given, so :func:`merge_globals` can tell.
    """
    title = "global options (also accepted before the command; given here, they win)" if after else (
        "global options (also accepted after the command)")
    group = parser.add_argument_group(title)
    group.add_argument("--version", action="version", version=f"hoststorage {version()}")
    for spec in GLOBAL_FLAGS:
        if spec.switch:
            group.add_argument(
                spec.flag,
                dest=_AFTER + spec.dest if after else spec.dest,
                action="store_const",
                const=True,
                default=argparse.SUPPRESS if after else None,
                help=spec.help,
            )
            continue
        group.add_argument(
            spec.flag,
            dest=_AFTER + spec.dest if after else spec.dest,
            action="append" if spec.repeatable else "store",
            default=argparse.SUPPRESS if after else None,
            metavar=spec.metavar,
            help=spec.help,
        )


def merge_globals(args: argparse.Namespace) -> argparse.Namespace:
    """Fold the global flags given after the subcommand into ``args``: a single-valued flag given after
    wins over the same flag before; a repeatable one adds up (every ``--allowed-host-path`` counts)."""
    for spec in GLOBAL_FLAGS:
        key = _AFTER + spec.dest
        if not hasattr(args, key):
            continue
        value = getattr(args, key)
        delattr(args, key)
        if spec.repeatable:
            value = [*(getattr(args, spec.dest, None) or []), *value]
        setattr(args, spec.dest, value)
    return args


def build_parser(chosen: str | None = None, *, every: bool = False) -> argparse.ArgumentParser:
    """The full parser; only the ``chosen`` subcommand's module is imported and given its arguments
    (``every``: all of them, for shell completion)."""
    parser = argparse.ArgumentParser(
        prog="hoststorage",
        description="Declarative host storage: connections, libvirt pools and domain monitors.",
    )
    add_global_arguments(parser, after=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in SUBCOMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        if every or cmd.name == chosen:
            module = importlib.import_module(cmd.module)
            add_arguments: AddArguments = getattr(module, cmd.add_arguments)
            add_arguments(p)
            p.set_defaults(run=getattr(module, cmd.run), module=module)
        add_global_arguments(p, after=True)
    return parser


def _chosen(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line, before full parsing: the first word that is one.

    A global flag's value cannot be mistaken for it: paths must be absolute, and no URI or level is
    spelt like a subcommand.
    """
    names = {cmd.name for cmd in SUBCOMMANDS}
    return next((word for word in argv if word in names), None)


def parse(words: Sequence[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """Parse a command line: the chosen subcommand's arguments and the global flags in either place."""
    parser = build_parser(_chosen(words))
    return parser, merge_globals(parser.parse_args(words))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except Exception as exc:  # the last guard: a bug must still end as one line, never a traceback
        from hostlib import errors  # noqa: PLC0415 - here only: the controller never loads hostlib

        log.debug("internal error", exc_info=True)
        print(f"hoststorage: internal error: {errors.shown(exc, 500)}", file=sys.stderr)
        return EXIT_INTERNAL


def _main(argv: Sequence[str] | None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser, args = parse(words)
    if getattr(args, "run", None) is None:
        parser.print_usage(sys.stderr)
        print("hoststorage: error: a command is required", file=sys.stderr)
        return EXIT_USAGE
    try:
        conf = settings.Settings.build(args)
    except settings.SettingsError as exc:
        print(f"hoststorage: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=conf.log_level.upper(),
        stream=sys.stderr,
        format="hoststorage: %(levelname)s %(name)s: %(message)s",
    )
    run: Run = args.run
    user_errors = _user_errors(args.module)
    try:
        return run(args, conf)
    except user_errors as exc:
        print(f"hoststorage: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        # Lock held, ledger corrupt, ...: the host layer's message already says what and where. Looked up
        # in sys.modules: the cluster controller never loads the host layer.
        host_errors = sys.modules.get("hostlib.errors")
        if host_errors is None or not isinstance(exc, host_errors.HostStorageError):
            raise
        print(f"hoststorage: error: {exc.reason}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hoststorage: interrupted", file=sys.stderr)
        return 130


def _user_errors(module: types.ModuleType) -> tuple[type[Exception], ...]:
    found: list[type[Exception]] = list(getattr(module, "USER_ERRORS", ()))
    local = sys.modules.get("controller.local")
    if local is not None:
        found.append(local.InputError)
    # The cluster modules report start-up problems (no kubeconfig, no NODE_NAME) with kube.StartupError.
    kube = sys.modules.get("controller.kube")
    if kube is not None:
        found.append(kube.StartupError)
    return tuple(found)


if __name__ == "__main__":
    sys.exit(main())
