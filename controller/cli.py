"""The ``hoststorage`` command: the composition root of every mode.

It parses the command line, builds :class:`controller.settings.Settings` once (flags, then
``HOSTSTORAGE_*`` environment variables, then defaults), sets up logging, and hands over to one
subcommand. Each subcommand is one line in :data:`SUBCOMMANDS`: a name, a help line, a function adding
its arguments to its sub-parser and a function running it, ``run(args, settings) -> exit code``.
Keep the modules imported here light; import heavy libraries (kopf, libvirt) inside ``run``.

Errors a user can fix (an unreadable file, bad YAML, a bad flag value, the host lock held) end as one
line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import sys
from collections.abc import Callable, Sequence

from controller import local, settings
from hostlib import errors

log = logging.getLogger(__name__)

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace, settings.Settings], int]

# name, help, add_arguments(subparser), run(args, settings) -> exit code.
SUBCOMMANDS: tuple[tuple[str, str, AddArguments, Run], ...] = (
    ("apply", "make this host match the manifests", local.add_apply_arguments, local.run_apply),
    ("delete", "tear down what the manifests describe", local.add_delete_arguments, local.run_delete),
    ("status", "what hoststorage owns here, observed now", local.add_status_arguments, local.run_status),
)

# Exit codes: 0 success / everything Ready, 1 some object not Ready, 2 usage or input error.
EXIT_USAGE = 2


def version() -> str:
    try:
        return importlib.metadata.version("hoststorage")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
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
        "--libvirt-uri", dest="libvirt_uri", default=None, metavar="URI",
        help="libvirt connection for StoragePools (env HOSTSTORAGE_LIBVIRT_URI; default qemu:///system)",
    )
    parser.add_argument(
        "--log-level", dest="log_level", default=None, metavar="LEVEL",
        help="DEBUG, INFO, WARNING (default) or ERROR (env HOSTSTORAGE_LOG_LEVEL)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text, add_arguments, run in SUBCOMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
    try:
        return run(args, conf)
    except local.InputError as exc:
        print(f"hoststorage: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except errors.HostStorageError as exc:
        # Lock held, ledger corrupt, ...: the host layer's message already says what and where.
        print(f"hoststorage: error: {exc.reason}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hoststorage: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
