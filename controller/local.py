"""Cluster-less mode: ``hoststorage apply|delete|status`` reconcile this host from manifest files.

The same reconcilers as the agent run here, in one process, under the host lock (so an agent and a
command on one host never act at once). Manifests are multi-document YAML (``-f -`` is stdin), read
by :mod:`controller.manifests`; objects are handled in dependency order (connections, pools,
monitors; the reverse for ``delete``); Secrets in the same files serve ``chapSecretRef`` and are never
printed; other kinds are reported on stderr and skipped.

Bad input, as with ``kubectl apply``: a document that is refused (broken YAML, a bound exceeded, a bad
Secret) is reported on stderr, an object whose spec is invalid gets an ``InvalidSpec`` row, and every
other object of the run is still done; the run then exits :data:`EXIT_BAD_INPUT`. An input that cannot
be read at all stops the run before anything is done (:class:`InputError`, also exit 2).

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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from controller import manifests, output, settings
from hostlib import errors, ledger
from reconcilers import domain_monitor, status, storage_connection, storage_pool
from reconcilers import host as host_mod

log = logging.getLogger(__name__)

# The reconciler modules this mode knows, each with KIND, DETAIL_KEY, ORDER, parse, reconcile, teardown.
KINDS: tuple[types.ModuleType, ...] = (storage_connection, storage_pool, domain_monitor)

EXIT_OK = 0
EXIT_NOT_READY = 1
"""Every object was valid, but some did not reach the wanted phase (not Ready, InUse, ...)."""
EXIT_BAD_INPUT = 2
"""Some document or object was refused (InvalidSpec), or the input could not be read at all."""
EXIT_HELP = (
    "exit status: 0 done (every object Ready, or torn down); 1 every object valid but some not done; "
    "2 some document or object refused as invalid (the others were still done) or the input unreadable; "
    "70 an internal error (a bug: run with --log-level DEBUG for its traceback)"
)

InputError = manifests.InputError
Document = manifests.Document


def kinds_by_name() -> dict[str, types.ModuleType]:
    return {m.KIND: m for m in KINDS}


class Secrets:
    """Secrets from the input files, decoded; served to reconcilers as ``host.secret_lookup``."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, str], dict[str, str]] = {}

    def add(self, doc: Document) -> None:
        """Keep one Secret; a malformed one is InvalidSpec (its values are never in the message)."""
        meta = doc.obj.get("metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            raise errors.InvalidSpec("a Secret needs a name", field="metadata.name")
        namespace = meta.get("namespace") or "default"
        if not isinstance(namespace, str):
            raise errors.InvalidSpec("must be a string", field="metadata.namespace")
        data: dict[str, str] = {}
        raw = doc.obj.get("data") or {}
        if not isinstance(raw, dict):
            raise errors.InvalidSpec("must be a mapping", field="data")
        for key, value in raw.items():
            try:
                data[str(key)] = base64.b64decode(str(value), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                # The value itself is never echoed: it is a secret.
                field = manifests.field_path(["data", str(key)])
                raise errors.InvalidSpec("is not base64 of UTF-8 text", field=field) from None
        string_data = doc.obj.get("stringData") or {}
        if not isinstance(string_data, dict):
            raise errors.InvalidSpec("must be a mapping", field="stringData")
        data.update({str(k): str(v) for k, v in string_data.items()})
        self._data[(namespace, meta["name"])] = data

    def lookup(self, namespace: str, name: str) -> Mapping[str, str]:
        return self._data[(namespace or "default", name)]

    def __len__(self) -> int:
        return len(self._data)


def report(refused: Sequence[manifests.Refused]) -> None:
    """One line on stderr per refused document."""
    for refusal in refused:
        print(refusal.line(), file=sys.stderr)


def classify(
    docs: Sequence[Document],
) -> tuple[list[tuple[types.ModuleType, Document]], Secrets, list[manifests.Refused]]:
    """Known kinds (in input order), the Secrets and the refused Secrets (already reported on stderr);
    every other kind is reported on stderr and skipped."""
    known = kinds_by_name()
    objects: list[tuple[types.ModuleType, Document]] = []
    secrets = Secrets()
    refused: list[manifests.Refused] = []
    for doc in docs:
        kind = doc.obj.get("kind")
        if kind == "Secret":
            try:
                secrets.add(doc)
            except errors.InvalidSpec as exc:
                refused.append(manifests.Refused(doc.source, exc))
        elif isinstance(kind, str) and kind in known:
            objects.append((known[kind], doc))
        else:
            print(
                f"hoststorage: skipped {doc.source}: kind {errors.shown(kind)} is not one of "
                f"{', '.join(sorted(known))}",
                file=sys.stderr,
            )
    report(refused)
    return objects, secrets, refused


# ---------------------------------------------------------------------------------------- reconcile


def _name_of(doc: Document) -> str:
    """The object's name for its result row, or where it came from when it has no usable one."""
    meta = doc.obj.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) and 0 < len(name) <= errors.SHOWN_LIMIT else f"<{doc.source}>"


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
        log.error("%s/%s: internal error: %s", module.KIND, name, errors.shown(exc), exc_info=debug)
        return failed_result(module, name, "InternalError", errors.shown(exc, errors.MESSAGE_LIMIT))


@dataclasses.dataclass(frozen=True)
class Outcome:
    results: list[status.NodeResult]
    changed: bool
    refused: Sequence[manifests.Refused] = ()
    """Documents refused on the way (bad Secrets), already reported on stderr."""


def _make_host(conf: settings.Settings, secrets: Secrets | None = None) -> host_mod.Host:
    return host_mod.Host.for_config(
        conf.host_config(),
        secret_lookup=secrets.lookup if secrets is not None else None,
        node_name=socket.gethostname(),
    )


def _lock(conf: settings.Settings, *, dry_run: bool) -> Any:
    # A dry run creates and writes nothing, not even the lock file or the state dir.
    if dry_run:
        return ledger.read_lock(conf.state_dir, timeout=conf.lock_timeout)
    return ledger.host_lock(conf.state_dir, timeout=conf.lock_timeout)


def apply(docs: Sequence[Document], conf: settings.Settings, *, dry_run: bool = False) -> Outcome:
    objects, secrets, refused = classify(docs)
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
    return Outcome(done, any(r.changed for r in done), refused)


WOULD_COMPLETE = frozenset({"WouldDetach", "WouldRetain", "WouldForget"})
"""Dry-run teardown reasons of an object whose real teardown would finish."""


def delete(
    docs: Sequence[Document], conf: settings.Settings, *, force: bool = False, dry_run: bool = False
) -> Outcome:
    """Tear down what the documents describe, users before what they use (monitors, pools, connections).

    ``dry_run`` changes nothing on the host or in the ledger: each object's planned actions are listed,
    and the dry run works on a scratch copy of the ledger, so a connection whose pools and monitors are
    in the same files is planned as their real delete would leave it (free, not ``InUse``)."""
    objects, _, refused = classify(docs)
    parsed = _parse_all(objects)
    order = sorted(range(len(parsed)), key=lambda i: (-parsed[i][0].ORDER, -i))
    results: list[status.NodeResult | None] = [None] * len(parsed)
    with _lock(conf, dry_run=dry_run):
        host = _make_host(conf)
        if dry_run:
            host.ledger = host.ledger.scratch_copy()
        elif parsed:
            # Before any host change: forgetting what is torn down must find room even on a full disk.
            host.ledger.ensure_reserve()
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
    return Outcome(done, any(r.changed for r in done), refused)


def observe_all(conf: settings.Settings) -> list[status.NodeResult]:
    """One result per ledger entry, observed now; no host change."""
    if not os.path.lexists(conf.state_dir):
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


def exit_code(
    outcome: Outcome, refused: Sequence[manifests.Refused], done: Callable[[status.NodeResult], bool]
) -> int:
    """:data:`EXIT_BAD_INPUT` if anything was refused as invalid, else whether every result is ``done``."""
    if refused or outcome.refused or any(r.reason == errors.InvalidSpec.reason for r in outcome.results):
        return EXIT_BAD_INPUT
    return EXIT_OK if all(done(r) for r in outcome.results) else EXIT_NOT_READY


def run_apply(args: argparse.Namespace, conf: settings.Settings) -> int:
    loaded = manifests.load(args.filenames)
    report(loaded.refused)
    outcome = apply(loaded.documents, conf, dry_run=args.dry_run)
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
        return exit_code(outcome, loaded.refused, lambda r: r.phase != "Failed")
    return exit_code(outcome, loaded.refused, lambda r: r.ready)


def _would_finish(result: status.NodeResult) -> bool:
    return result.phase == "Detached" or result.reason in WOULD_COMPLETE


def run_delete(args: argparse.Namespace, conf: settings.Settings) -> int:
    loaded = manifests.load(args.filenames)
    report(loaded.refused)
    outcome = delete(loaded.documents, conf, force=args.force, dry_run=args.dry_run)
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
    return exit_code(outcome, loaded.refused, lambda r: r.phase == "Detached")


def run_status(args: argparse.Namespace, conf: settings.Settings) -> int:
    results = observe_all(conf)
    _print(results, args.output)
    return EXIT_OK if all(r.ready for r in results) else EXIT_NOT_READY
