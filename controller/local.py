"""Cluster-less mode: ``hoststorage apply|delete|status`` reconcile this host from manifest files.

This module reads the manifests through :mod:`controller.manifests` (multi-document YAML, ``-f -`` is
stdin), runs them through :mod:`controller.engine` (the reconcilers in dependency order under the host
lock, Secrets of the same files serving ``chapSecretRef``) and prints the results. The kinds are those
of :mod:`controller.registry`; nothing here is per kind.

Bad input, as with ``kubectl apply``: a document that is refused (broken YAML, a bound exceeded, a bad
Secret) is reported on stderr, an object whose spec is invalid gets an ``InvalidSpec`` row, and every
other object of the run is still done; the run then exits :data:`EXIT_BAD_INPUT`. An input that cannot
be read at all stops the run before anything is done (:class:`InputError`, also exit 2).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from controller import engine, manifests, output, settings
from hostlib import errors
from reconcilers import status

log = logging.getLogger(__name__)

EXIT_OK = engine.EXIT_OK
EXIT_NOT_READY = engine.EXIT_NOT_READY
EXIT_BAD_INPUT = engine.EXIT_BAD_INPUT
EXIT_HELP = (
    "exit status: 0 done (every object Ready, or torn down); 1 every object valid but some not done; "
    "2 some document or object refused as invalid (the others were still done) or the input unreadable; "
    "70 an internal error (a bug: run with --log-level DEBUG for its traceback)"
)
InputError = engine.InputError


# ---------------------------------------------------------------------------------------- commands


def _add_files(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f", "--filename", dest="filenames", action="append", required=True, metavar="FILE",
        help="a YAML manifest (multi-document); - reads stdin; repeatable",
    )


def _add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=output.FORMATS, default="table", help="output format")


def add_apply_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXIT_HELP
    _add_files(parser)
    parser.add_argument(
        "--dry-run", action="store_true", help="print the planned actions (with their argv); change nothing"
    )
    _add_output(parser)


def add_delete_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXIT_HELP
    _add_files(parser)
    parser.add_argument(
        "--force",
        action="store_true",
        help="finish the teardown as far as is safe: lazy-unmount a busy mount instead of reporting InUse, "
        "and forget an entry whose host object is no longer hoststorage's (Conflict), touching nothing",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be torn down (with the argv of each command); change nothing",
    )
    _add_output(parser)


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    _add_output(parser)


def _print(results: Sequence[status.NodeResult], fmt: str, *, with_actions: bool = False) -> None:
    sys.stdout.write(output.render(results, fmt, with_actions=with_actions))


def exit_code(
    outcome: engine.Outcome,
    refused: Sequence[manifests.Refused],
    done: Callable[[status.NodeResult], bool],
) -> int:
    """:data:`EXIT_BAD_INPUT` if anything was refused as invalid, else whether every result is ``done``."""
    if refused or outcome.refused or any(r.reason == errors.InvalidSpec.reason for r in outcome.results):
        return EXIT_BAD_INPUT
    return EXIT_OK if all(done(r) for r in outcome.results) else EXIT_NOT_READY


def run_apply(args: argparse.Namespace, conf: settings.Settings) -> int:
    loaded = manifests.load(args.filenames)
    manifests.report(loaded.refused)
    outcome = engine.apply(loaded.documents, conf, dry_run=args.dry_run)
    _print(outcome.results, args.output, with_actions=args.dry_run)
    if args.output == "table":
        if args.dry_run:
            planned = sum(len(r.actions) for r in outcome.results)
            print(f"dry run: {planned} planned action(s); nothing was changed" if planned
                  else "dry run: no actions; the host already matches")
        else:
            changed = outcome.changed
            print("changed: the host now matches" if changed else "no change: the host already matched")
    if args.dry_run:
        # A dry run succeeds when every object is valid and plannable; Ready is not expected yet.
        return exit_code(outcome, loaded.refused, lambda r: r.phase != status.Phase.FAILED)
    return exit_code(outcome, loaded.refused, lambda r: r.ready)


def _would_finish(result: status.NodeResult) -> bool:
    return result.phase == status.Phase.DETACHED or result.reason in engine.WOULD_COMPLETE


def run_delete(args: argparse.Namespace, conf: settings.Settings) -> int:
    loaded = manifests.load(args.filenames)
    manifests.report(loaded.refused)
    outcome = engine.delete(loaded.documents, conf, force=args.force, dry_run=args.dry_run)
    _print(outcome.results, args.output, with_actions=args.dry_run)
    if args.dry_run:
        if args.output == "table":
            planned = sum(len(r.actions) for r in outcome.results)
            print(f"dry run: {planned} planned action(s); nothing was changed" if planned
                  else "dry run: nothing to tear down")
        # Succeeds when the real delete would finish every object (no InUse, nothing invalid).
        return exit_code(outcome, loaded.refused, _would_finish)
    if args.output == "table" and not outcome.changed:
        print("no change: nothing to tear down")
    return exit_code(outcome, loaded.refused, lambda r: r.phase == status.Phase.DETACHED)


def run_status(args: argparse.Namespace, conf: settings.Settings) -> int:
    results = engine.observe_all(conf)
    _print(results, args.output)
    return EXIT_OK if all(r.ready for r in results) else EXIT_NOT_READY
