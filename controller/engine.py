"""Reconcile this host from manifest objects, with no cluster: what the local CLI and the monitor CLI share.

The same reconcilers as the agent run here, in one process, under the host lock (so an agent and a
command on one host never act at once). Objects are handled in dependency order (the registry's:
connections, pools, monitors; the reverse for ``delete``); Secrets among the objects serve
``chapSecretRef`` and are never printed; other kinds are reported on stderr and skipped. Reading the
manifest files is the caller's: this module takes objects with a ``source`` (``FILE#N``) and ``obj``.

This module is the composition root of the host for those programs: it hands the reconcilers this
host's libvirt layer (:func:`hostlib.libvirt_pools.shared`, connected on first use) and Secrets.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from controller import manifests, registry, settings
from hostlib import checker, errors, ledger, libvirt_pools
from reconcilers import host as host_mod
from reconcilers import kind as kind_mod
from reconcilers import status

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_NOT_READY = 1
"""Every object was valid, but some did not reach the wanted phase (not Ready, InUse, ...)."""
EXIT_BAD_INPUT = 2
"""Some document or object was refused (InvalidSpec), or the input could not be read at all."""
WOULD_COMPLETE = status.WOULD_COMPLETE

Kind = kind_mod.Kind[Any]


InputError = manifests.InputError
"""The input cannot be used at all (an unreadable file): one line, exit code 2."""


class Document(Protocol):
    @property
    def source(self) -> str:
        """Where the object came from, ``FILE#N`` (N counts documents from 1)."""
        ...

    @property
    def obj(self) -> Mapping[str, Any]: ...


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


def kinds() -> dict[str, Kind]:
    """Every registered kind module, in dependency order."""
    return registry.load_all()


def classify(
    docs: Sequence[Document],
) -> tuple[list[tuple[Kind, Document]], Secrets, list[manifests.Refused]]:
    """Known kinds (in input order), the Secrets and the refused Secrets (already reported on stderr);
    every other kind is reported on stderr and skipped."""
    known = kinds()
    objects: list[tuple[Kind, Document]] = []
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
    manifests.report(refused)
    return objects, secrets, refused


def _name_of(doc: Document) -> str:
    meta = doc.obj.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    return name if isinstance(name, str) and 0 < len(name) <= errors.SHOWN_LIMIT else f"<{doc.source}>"


def failed(module: Kind, name: str, reason: str, message: str) -> status.NodeResult:
    return module.RESULTS.make(name, status.Phase.FAILED, reason, message)


Parsed = tuple[Kind, Document, Any, status.NodeResult | None]


def _parse_all(objects: Sequence[tuple[Kind, Document]]) -> list[Parsed]:
    """(module, doc, spec or None, the InvalidSpec result or None), duplicates refused."""
    seen: dict[tuple[str, str], str] = {}
    out: list[Parsed] = []
    for module, doc in objects:
        name = _name_of(doc)
        try:
            spec = module.parse(doc.obj)
        except errors.InvalidSpec as exc:
            out.append((module, doc, None, module.RESULTS.invalid(name, exc, source=doc.source)))
            continue
        key = (module.KIND, name)
        if key in seen:
            msg = f"{doc.source}: metadata.name: duplicate {module.KIND} {name!r} (first in {seen[key]})"
            out.append((module, doc, None, failed(module, name, errors.InvalidSpec.reason, msg)))
            continue
        seen[key] = doc.source
        out.append((module, doc, spec, None))
    return out


def _guarded(module: Kind, name: str, call: Callable[[], status.NodeResult]) -> status.NodeResult:
    """Run one reconcile/teardown; a bug in one object's reconciler must not abort the others."""
    try:
        return call()
    except errors.HostStorageError as exc:
        return module.RESULTS.error(name, exc)
    except Exception as exc:
        debug = log.isEnabledFor(logging.DEBUG)
        log.error("%s/%s: internal error: %s", module.KIND, name, errors.shown(exc), exc_info=debug)
        return failed(module, name, "InternalError", errors.shown(exc, errors.MESSAGE_LIMIT))


@dataclasses.dataclass(frozen=True)
class Outcome:
    results: list[status.NodeResult]
    changed: bool
    refused: Sequence[manifests.Refused] = ()
    """Documents refused on the way (bad Secrets), already reported on stderr."""


def make_host(conf: settings.Settings, secrets: Secrets | None = None) -> host_mod.Host:
    """This host for a command: its ledger, the Secrets of the input, libvirt on first use."""
    return host_mod.Host.for_config(
        conf.host_config(),
        secret_lookup=secrets.lookup if secrets is not None else None,
        pools=functools.partial(libvirt_pools.shared, conf.libvirt_uri),
        checker=checker.Checker,
        # The node name names this host's probe files on shared storage: NODE_NAME when set (as the
        # agent's), else the host name.
        node_name=conf.node_name or socket.gethostname(),
    )


def _lock(conf: settings.Settings, *, dry_run: bool) -> Any:
    # A dry run creates and writes nothing, not even the lock file or the state dir.
    if dry_run:
        return ledger.read_lock(conf.state_dir, timeout=conf.lock_timeout)
    return ledger.host_lock(conf.state_dir, timeout=conf.lock_timeout)


def _order(parsed: Sequence[Parsed], *, reverse: bool) -> list[int]:
    sign = -1 if reverse else 1
    return sorted(range(len(parsed)), key=lambda i: (sign * registry.row(parsed[i][0].KIND).order, sign * i))


def apply(docs: Sequence[Document], conf: settings.Settings, *, dry_run: bool = False) -> Outcome:
    objects, secrets, refused = classify(docs)
    parsed = _parse_all(objects)
    results: list[status.NodeResult | None] = [None] * len(parsed)
    with _lock(conf, dry_run=dry_run):
        host = make_host(conf, secrets)
        for i in _order(parsed, reverse=False):
            module, _doc, spec, invalid = parsed[i]
            if invalid is not None:
                results[i] = invalid
                continue
            results[i] = _guarded(
                module, spec.name, functools.partial(module.reconcile, spec, host, dry_run=dry_run)
            )
    done = [r for r in results if r is not None]
    return Outcome(done, any(r.changed for r in done), refused)


def delete(
    docs: Sequence[Document], conf: settings.Settings, *, force: bool = False, dry_run: bool = False
) -> Outcome:
    """Tear down what the documents describe, users before what they use (monitors, pools, connections).

    ``dry_run`` changes nothing on the host or in the ledger: each object's planned actions are listed,
    and the dry run works on a scratch copy of the ledger, so a connection whose pools and monitors are
    in the same files is planned as their real delete would leave it (free, not ``InUse``)."""
    objects, _, refused = classify(docs)
    parsed = _parse_all(objects)
    results: list[status.NodeResult | None] = [None] * len(parsed)
    with _lock(conf, dry_run=dry_run):
        host = make_host(conf)
        if dry_run:
            host.ledger = host.ledger.scratch_copy()
        elif parsed:
            # Before any host change: forgetting what is torn down must find room even on a full disk.
            host.ledger.ensure_reserve()
        for i in _order(parsed, reverse=True):
            module, _doc, spec, invalid = parsed[i]
            if invalid is not None:
                results[i] = invalid
                continue
            call = functools.partial(module.teardown, spec, host, force=force, dry_run=dry_run)
            result = _guarded(module, spec.name, call)
            if dry_run and result.reason in WOULD_COMPLETE:
                host.ledger.remove(module.KIND, spec.name)  # the scratch copy: what the real delete leaves
            results[i] = result
    done = [r for r in results if r is not None]
    return Outcome(done, any(r.changed for r in done), refused)


def observe_all(conf: settings.Settings) -> list[status.NodeResult]:
    """One result per ledger entry, observed now; no host change."""
    if not os.path.lexists(conf.state_dir):
        return []
    host = make_host(conf)
    known = kinds()
    results: list[status.NodeResult] = []

    def order(entry: ledger.LedgerEntry) -> tuple[int, tuple[str, str]]:
        return (registry.row(entry.kind).order if entry.kind in registry.BY_KIND else 99, entry.key)

    for entry in sorted(host.ledger.entries(), key=order):
        module = known.get(entry.kind)
        if module is not None:
            results.append(_guarded(module, entry.name, functools.partial(module.observe, entry, host)))
        else:
            results.append(
                status.NodeResult(
                    kind=entry.kind,
                    name=entry.name,
                    phase=str(status.Phase.UNKNOWN),
                    ready=False,
                    reason="Recorded",
                    message="recorded in the ledger; this command cannot observe this kind",
                    detail_key="resource",
                    detail=dict(entry.resource),
                )
            )
    return results
