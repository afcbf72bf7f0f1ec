"""The ``hoststorage`` command: the composition root of every mode.

It parses the command line, builds :class:`controller.settings.Settings` once (flags, then
``HOSTSTORAGE_*`` environment variables, then defaults), sets up logging, and hands over to one
subcommand. Each subcommand is one line in :data:`SUBCOMMANDS`: its name, a help line, and the module
(imported only when that subcommand runs, so ``apply`` never pays for kopf) with the names of the
function adding its arguments to its sub-parser and of the function running it,
``run(args, settings) -> exit code``. A module may export ``USER_ERRORS``, a tuple of exception types
that mean "the user can fix this": they end as one line on stderr and exit code 2.

Errors a user can fix (an unreadable file, bad YAML, a bad flag value, the host lock held) end as one
line on stderr and a non-zero exit code, never a traceback.
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
)

# Exit codes: 0 success / everything Ready, 1 some object not Ready, 2 usage or input error.
EXIT_USAGE = 2


def version() -> str:
    try:
        return importlib.metadata.version("hoststorage")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only the ``chosen`` subcommand's module is imported and given its arguments."""
    parser = argparse.ArgumentParser(
        prog="hoststorage",
        description="Declarative host storage: connections, libvirt pools and domain monitors.",
    )
    parser.add_argument("--version", action="version", version=f"hoststorage {version()}")
    # Global flags default to None so Settings.build can tell "not given" from a value.
    parser.add_argument(
        "--state-dir", dest="state_dir", default=None, metavar="DIR",
        help="ledger, host lock and probe files (env HOSTSTORAGE_STATE_DIR; default /var/lib/hoststorage)",
    )
    parser.add_argument(
        "--mount-base", dest="mount_base", default=None, metavar="DIR",
        help="root of every mount point and link (env HOSTSTORAGE_MOUNT_BASE; default <state-dir>/mnt)",
    )
    parser.add_argument(
        "--allowed-host-path", dest="allowed_host_paths", action="append", default=None, metavar="DIR",
        help="a directory localfs connections, dir pools and hostPath monitors may use; repeatable "
        "(env HOSTSTORAGE_ALLOWED_HOST_PATHS, colon-separated)",
    )
    parser.add_argument(
        "--allow-vfs-type", dest="extra_vfs_types", action="append", default=None, metavar="TYPE",
        help="a posixfs file system type to allow beside the built-in list (common mount options only); "
        "repeatable (env HOSTSTORAGE_EXTRA_VFS_TYPES, colon-separated)",
    )
    parser.add_argument(
        "--libvirt-uri", dest="libvirt_uri", default=None, metavar="URI",
        help="libvirt connection for StoragePools (env HOSTSTORAGE_LIBVIRT_URI; default qemu:///system)",
    )
    parser.add_argument(
        "--log-level", dest="log_level", default=None, metavar="LEVEL",
        help="DEBUG, INFO, WARNING (default) or ERROR (env HOSTSTORAGE_LOG_LEVEL)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in SUBCOMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        if cmd.name == chosen:
            module = importlib.import_module(cmd.module)
            add_arguments: AddArguments = getattr(module, cmd.add_arguments)
            add_arguments(p)
            p.set_defaults(run=getattr(module, cmd.run), module=module)
    return parser


def _chosen(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line, before full parsing: the first word that is one.

    A global flag's value cannot be mistaken for it: paths must be absolute, and no URI or level is
    spelt like a subcommand.
    """
    names = {cmd.name for cmd in SUBCOMMANDS}
    return next((word for word in argv if word in names), None)


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_chosen(words))
    args = parser.parse_args(words)
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
