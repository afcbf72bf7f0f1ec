"""Cluster-less mode: ``hoststorage apply|delete|status`` reconcile this host from manifest files.

The same reconcilers as the agent run here, in one process, under the host lock (so an agent and a
command on one host never act at once). Manifests are multi-document YAML (``-f -`` is stdin);
objects are handled in dependency order (connections, pools, monitors; the reverse for ``delete``);
Secrets in the same files serve ``chapSecretRef`` and are never printed; other kinds are reported on
stderr and skipped.

Registering a kind: add its reconciler module to :data:`KINDS`. The module exports ``KIND``,
``DETAIL_KEY``, ``ORDER``, ``parse(obj)``, ``reconcile(spec, host, *, dry_run)``,
``teardown(spec, host, *, force)`` and optionally ``observe(entry, host)`` (what ``status`` shows for
one ledger entry; without it ``status`` lists the entry as recorded).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import logging
import os
import socket
import sys
import types
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from controller import output, settings
from hostlib import errors, ledger
from reconcilers import domain_monitor, status, storage_connection, storage_pool
from reconcilers import host as host_mod

log = logging.getLogger(__name__)

# The reconciler modules this mode knows, each with KIND, DETAIL_KEY, ORDER, parse, reconcile, teardown.
KINDS: tuple[types.ModuleType, ...] = (storage_connection, storage_pool, domain_monitor)

# Bigger manifests are a mistake or an attack; a thousand objects fit in well under this.
MAX_INPUT_BYTES = 8 * 1024 * 1024
MAX_DOCUMENTS = 5000

EXIT_OK = 0
EXIT_NOT_READY = 1


class InputError(Exception):
    """The input cannot be used at all (unreadable file, invalid YAML): one line, exit code 2."""


@dataclasses.dataclass(frozen=True)
class Document:
    source: str
    """Where the object came from, ``FILE#N`` (N counts documents from 1)."""
    obj: Mapping[str, Any]


def kinds_by_name() -> dict[str, types.ModuleType]:
    return {m.KIND: m for m in KINDS}


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


class Secrets:
    """Secrets from the input files, decoded; served to reconcilers as ``host.secret_lookup``."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, str], dict[str, str]] = {}

    def add(self, doc: Document) -> None:
        meta = doc.obj.get("metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            raise InputError(f"{doc.source}: Secret without metadata.name")
        namespace = meta.get("namespace") or "default"
        if not isinstance(namespace, str):
            raise InputError(f"{doc.source}: Secret metadata.namespace must be a string")
        data: dict[str, str] = {}
        raw = doc.obj.get("data") or {}
        if not isinstance(raw, dict):
            raise InputError(f"{doc.source}: Secret data must be a mapping")
        for key, value in raw.items():
            try:
                data[str(key)] = base64.b64decode(str(value), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                # The value itself is never echoed: it is a secret.
                raise InputError(f"{doc.source}: Secret data.{key} is not base64 of UTF-8 text") from None
        string_data = doc.obj.get("stringData") or {}
        if not isinstance(string_data, dict):
            raise InputError(f"{doc.source}: Secret stringData must be a mapping")
        data.update({str(k): str(v) for k, v in string_data.items()})
        self._data[(namespace, meta["name"])] = data

    def lookup(self, namespace: str, name: str) -> Mapping[str, str]:
        return self._data[(namespace or "default", name)]

    def __len__(self) -> int:
        return len(self._data)


def classify(docs: Sequence[Document]) -> tuple[list[tuple[types.ModuleType, Document]], Secrets]:
    """Known kinds (in input order) and the Secrets; every other kind is reported on stderr."""
    known = kinds_by_name()
    objects: list[tuple[types.ModuleType, Document]] = []
    secrets = Secrets()
    for doc in docs:
        kind = doc.obj.get("kind")
        if kind == "Secret":
            secrets.add(doc)
        elif isinstance(kind, str) and kind in known:
            objects.append((known[kind], doc))
        else:
            print(
                f"hoststorage: skipped {doc.source}: kind {kind!r} is not one of {', '.join(sorted(known))}",
                file=sys.stderr,
            )
    return objects, secrets


# ---------------------------------------------------------------------------------------- reconcile


def _name_of(doc: Document) -> str:
    meta = doc.obj.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) and name else f"<{doc.source}>"


def failed_result(module: types.ModuleType, name: str, reason: str, message: str) -> status.NodeResult:
    return status.NodeResult(
        kind=module.KIND,
        name=name,
        phase="Failed",
        ready=False,
        reason=reason,
        message=message,
        detail_key=module.DETAIL_KEY,
        conditions=(status.Condition("Ready", status.ConditionStatus.FALSE, reason, message),),
    )


def _parse_all(
    objects: Sequence[tuple[types.ModuleType, Document]],
) -> list[tuple[types.ModuleType, Document, Any, status.NodeResult | None]]:
    """(module, doc, spec or None, the InvalidSpec result or None), duplicates refused."""
    seen: dict[tuple[str, str], str] = {}
    out: list[tuple[types.ModuleType, Document, Any, status.NodeResult | None]] = []
    for module, doc in objects:
        name = _name_of(doc)
        try:
            spec = module.parse(doc.obj)
        except errors.InvalidSpec as exc:
            out.append((module, doc, None, failed_result(module, name, exc.reason, f"{doc.source}: {exc}")))
            continue
        key = (module.KIND, name)
        if key in seen:
            msg = f"{doc.source}: metadata.name: duplicate {module.KIND} {name!r} (first in {seen[key]})"
            out.append((module, doc, None, failed_result(module, name, "InvalidSpec", msg)))
            continue
        seen[key] = doc.source
        out.append((module, doc, spec, None))
    return out


def _guarded(module: types.ModuleType, name: str, call: Any, *args: Any, **kwargs: Any) -> status.NodeResult:
    """Run one reconcile/teardown; a bug in one object's reconciler must not abort the others."""
    try:
        result: status.NodeResult = call(*args, **kwargs)
        return result
    except errors.HostStorageError as exc:
        return failed_result(module, name, exc.reason, exc.message)
    except Exception as exc:
        debug = log.isEnabledFor(logging.DEBUG)
        log.error("%s/%s: internal error: %s", module.KIND, name, exc, exc_info=debug)
        return failed_result(module, name, "InternalError", f"{type(exc).__name__}: {exc}")


@dataclasses.dataclass(frozen=True)
class Outcome:
    results: list[status.NodeResult]
    changed: bool


def _make_host(conf: settings.Settings, secrets: Secrets | None = None) -> host_mod.Host:
    return host_mod.Host.for_config(
        conf.host_config(),
        secret_lookup=secrets.lookup if secrets is not None else None,
        node_name=socket.gethostname(),
    )


@dataclasses.dataclass
class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _lock(conf: settings.Settings, *, dry_run: bool) -> Any:
    # A dry run on a host that never ran hoststorage must not even create the state dir.
    if dry_run and not os.path.isdir(conf.state_dir):
        return _NoLock()
    return ledger.host_lock(conf.state_dir, timeout=conf.lock_timeout)


def apply(docs: Sequence[Document], conf: settings.Settings, *, dry_run: bool = False) -> Outcome:
    objects, secrets = classify(docs)
    parsed = _parse_all(objects)
    order = sorted(range(len(parsed)), key=lambda i: (parsed[i][0].ORDER, i))
    results: list[status.NodeResult | None] = [None] * len(parsed)
    with _lock(conf, dry_run=dry_run):
        host = _make_host(conf, secrets)
        for i in order:
            module, _doc, spec, invalid = parsed[i]
            if invalid is not None:
                results[i] = invalid
                continue
            results[i] = _guarded(module, spec.name, module.reconcile, spec, host, dry_run=dry_run)
    done = [r for r in results if r is not None]
    return Outcome(done, any(r.changed for r in done))


WOULD_COMPLETE = frozenset({"WouldDetach", "WouldRetain", "WouldForget"})
"""Dry-run teardown reasons of an object whose real teardown would finish."""


def delete(
    docs: Sequence[Document], conf: settings.Settings, *, force: bool = False, dry_run: bool = False
) -> Outcome:
    """Tear down what the documents describe, users before what they use (monitors, pools, connections).

    ``dry_run`` changes nothing on the host or in the ledger: each object's planned actions are listed,
    and the dry run works on a scratch copy of the ledger, so a connection whose pools and monitors are
    in the same files is planned as their real delete would leave it (free, not ``InUse``)."""
    objects, _ = classify(docs)
    parsed = _parse_all(objects)
    order = sorted(range(len(parsed)), key=lambda i: (-parsed[i][0].ORDER, -i))
    results: list[status.NodeResult | None] = [None] * len(parsed)
    with _lock(conf, dry_run=dry_run):
        host = _make_host(conf)
        if dry_run:
            host.ledger = host.ledger.scratch_copy()
        for i in order:
            module, _doc, spec, invalid = parsed[i]
            if invalid is not None:
                results[i] = invalid
                continue
            result = _guarded(module, spec.name, module.teardown, spec, host, force=force, dry_run=dry_run)
            if dry_run and result.reason in WOULD_COMPLETE:
                host.ledger.remove(module.KIND, spec.name)  # the scratch copy: what the real delete leaves
            results[i] = result
    done = [r for r in results if r is not None]
    return Outcome(done, any(r.changed for r in done))


def observe_all(conf: settings.Settings) -> list[status.NodeResult]:
    """One result per ledger entry, observed now; no host change."""
    if not os.path.isdir(conf.state_dir):
        return []
    host = _make_host(conf)
    known = kinds_by_name()
    results: list[status.NodeResult] = []
    entries = sorted(host.ledger.entries(), key=lambda e: (getattr(known.get(e.kind), "ORDER", 99), e.key))
    for entry in entries:
        module = known.get(entry.kind)
        if module is not None and hasattr(module, "observe"):
            results.append(_guarded(module, entry.name, module.observe, entry, host))
        else:
            results.append(
                status.NodeResult(
                    kind=entry.kind,
                    name=entry.name,
                    phase="Unknown",
                    ready=False,
                    reason="Recorded",
                    message="recorded in the ledger; this command cannot observe this kind",
                    detail_key="resource",
                    detail=dict(entry.resource),
                )
            )
    return results


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
    outcome = apply(docs, conf, dry_run=args.dry_run)
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
    outcome = delete(docs, conf, force=args.force, dry_run=args.dry_run)
    _print(outcome.results, args.output, with_actions=args.dry_run)
    if args.dry_run:
        if args.output == "table":
            planned = sum(len(r.actions) for r in outcome.results)
            print(f"dry run: {planned} planned action(s); nothing was changed" if planned
                  else "dry run: nothing to tear down")
        # Succeeds when the real delete would finish every object (no InUse, nothing invalid).
        done = all(r.phase == "Detached" or r.reason in WOULD_COMPLETE for r in outcome.results)
        return EXIT_OK if done else EXIT_NOT_READY
    if args.output == "table" and not outcome.changed:
        print("no change: nothing to tear down")
    return EXIT_OK if all(r.phase == "Detached" for r in outcome.results) else EXIT_NOT_READY


def run_status(args: argparse.Namespace, conf: settings.Settings) -> int:
    results = observe_all(conf)
    _print(results, args.output)
    return EXIT_OK if all(r.ready for r in results) else EXIT_NOT_READY
