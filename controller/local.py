"""Cluster-less mode: ``hoststorage apply|delete|status`` reconcile this host from manifest files.

This module reads the manifests (multi-document YAML, ``-f -`` is stdin), runs them through
:mod:`controller.engine` (the reconcilers in dependency order under the host lock, Secrets of the same
files serving ``chapSecretRef``) and prints the results. The kinds are those of
:mod:`controller.registry`; nothing here is per kind.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from controller import engine, output, settings
from reconcilers import status

log = logging.getLogger(__name__)

# Bigger manifests are a mistake or an attack; a thousand objects fit in well under this.
MAX_INPUT_BYTES = 8 * 1024 * 1024
MAX_DOCUMENTS = 5000

EXIT_OK = engine.EXIT_OK
EXIT_NOT_READY = engine.EXIT_NOT_READY
InputError = engine.InputError


@dataclasses.dataclass(frozen=True)
class Document:
    source: str
    """Where the object came from, ``FILE#N`` (N counts documents from 1)."""
    obj: Mapping[str, Any]


# ---------------------------------------------------------------------------------------------- input


def _read(path: str) -> str:
    if path == "-":
        data = sys.stdin.read(MAX_INPUT_BYTES + 1)
        where = "stdin"
    else:
        try:
            with open(path, encoding="utf-8") as f:
                data = f.read(MAX_INPUT_BYTES + 1)
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise InputError(f"cannot read {path}: not UTF-8 text") from None
        where = path
    if len(data) > MAX_INPUT_BYTES:
        raise InputError(f"{where}: larger than {MAX_INPUT_BYTES} bytes")
    return data


def load_documents(paths: Sequence[str]) -> list[Document]:
    """Every mapping document of every file, in order. ``kind: List`` documents are flattened."""
    docs: list[Document] = []
    if list(paths).count("-") > 1:
        raise InputError("-f - (stdin) can be given only once")
    for path in paths:
        text = _read(path)
        name = "stdin" if path == "-" else path
        try:
            loaded = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise InputError(f"{name}:{where}: invalid YAML: {problem}") from None
        for i, obj in enumerate(loaded, start=1):
            if obj is None:
                continue
            src = f"{name}#{i}"
            if not isinstance(obj, dict):
                raise InputError(f"{src}: a document must be a mapping (an object), got {type(obj).__name__}")
            if obj.get("kind") == "List" and isinstance(obj.get("items"), list):
                for j, item in enumerate(obj["items"], start=1):
                    if not isinstance(item, dict):
                        raise InputError(f"{src}.items[{j}]: an item must be a mapping")
                    docs.append(Document(f"{src}.items[{j}]", item))
            else:
                docs.append(Document(src, obj))
        if len(docs) > MAX_DOCUMENTS:
            raise InputError(f"more than {MAX_DOCUMENTS} objects in the input")
    return docs


# ---------------------------------------------------------------------------------------- commands


def _add_files(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f", "--filename", dest="filenames", action="append", required=True, metavar="FILE",
        help="a YAML manifest (multi-document); - reads stdin; repeatable",
    )


def _add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=output.FORMATS, default="table", help="output format")


def add_apply_arguments(parser: argparse.ArgumentParser) -> None:
    _add_files(parser)
    parser.add_argument(
        "--dry-run", action="store_true", help="print the planned actions (with their argv); change nothing"
    )
    _add_output(parser)


def add_delete_arguments(parser: argparse.ArgumentParser) -> None:
    _add_files(parser)
    parser.add_argument(
        "--force", action="store_true", help="lazy-unmount a busy mount instead of reporting InUse"
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


def run_apply(args: argparse.Namespace, conf: settings.Settings) -> int:
    docs = load_documents(args.filenames)
    outcome = engine.apply(docs, conf, dry_run=args.dry_run)
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
        return EXIT_OK if all(r.phase != "Failed" for r in outcome.results) else EXIT_NOT_READY
    return EXIT_OK if all(r.ready for r in outcome.results) else EXIT_NOT_READY


def run_delete(args: argparse.Namespace, conf: settings.Settings) -> int:
    docs = load_documents(args.filenames)
    outcome = engine.delete(docs, conf, force=args.force, dry_run=args.dry_run)
    _print(outcome.results, args.output, with_actions=args.dry_run)
    if args.dry_run:
        if args.output == "table":
            planned = sum(len(r.actions) for r in outcome.results)
            print(f"dry run: {planned} planned action(s); nothing was changed" if planned
                  else "dry run: nothing to tear down")
        # Succeeds when the real delete would finish every object (no InUse, nothing invalid).
        done = all(r.phase == "Detached" or r.reason in engine.WOULD_COMPLETE for r in outcome.results)
        return EXIT_OK if done else EXIT_NOT_READY
    if args.output == "table" and not outcome.changed:
        print("no change: nothing to tear down")
    return EXIT_OK if all(r.phase == "Detached" for r in outcome.results) else EXIT_NOT_READY


def run_status(args: argparse.Namespace, conf: settings.Settings) -> int:
    results = engine.observe_all(conf)
    _print(results, args.output)
    return EXIT_OK if all(r.ready for r in results) else EXIT_NOT_READY
