"""VDSM file storage domains: where their metadata lives and what it says.

A VDSM file domain is ``<mount>/<sdUUID>/dom_md/metadata`` (VDSM-NOTES.md, "File storage domain layout").
The metadata file holds ``KEY=VALUE`` lines sorted by key and a ``_SHA_CKSUM`` seal: SHA-1 over the other
``key=value`` strings in sorted order, concatenated without newlines, each encoded as ASCII with XML
character references for non-ASCII characters. Block domains pad the file with NULs; reads strip them.

This module is pure: it works on bytes and on names the checker's helper process listed. It never
touches storage itself (storage may hang; only :mod:`hostlib.checker` goes there, from a child process).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import logging
import os
import re
from collections.abc import Iterable, Mapping

log = logging.getLogger(__name__)

SHA_CKSUM_TAG = "_SHA_CKSUM"
DOM_MD = "dom_md"
METADATA = "metadata"
# VDSM writes a few hundred bytes; block domains use 512-byte slots. 1 MiB is far above anything real
# and keeps a hostile or corrupt file from costing the agent memory.
MAX_METADATA_BYTES = 1024 * 1024
# Keys we keep; a line longer than this is corrupt rather than metadata.
MAX_LINE_CHARS = 64 * 1024

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_KEY_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")

KNOWN_KEYS = frozenset(
    {
        "VERSION",
        "SDUUID",
        "TYPE",
        "CLASS",
        "ROLE",
        "DESCRIPTION",
        "POOL_UUID",
        "LOCKPOLICY",
        "LOCKRENEWALINTERVALSEC",
        "LEASETIMESEC",
        "IOOPTIMEOUTSEC",
        "LEASERETRIES",
        "ALIGNMENT",
        "BLOCK_SIZE",
        "REMOTE_PATH",
        "POOL_DESCRIPTION",
        "POOL_DOMAINS",
        "POOL_SPM_ID",
        "POOL_SPM_LVER",
        "MASTER_VERSION",
        "LOGBLKSIZE",
        "PHYBLKSIZE",
        "VGUUID",
        SHA_CKSUM_TAG,
    }
)
VERSIONS = frozenset({"0", "2", "3", "4", "5"})
TYPES = frozenset({"NFS", "FCP", "ISCSI", "LOCALFS", "CIFS", "POSIXFS", "GLUSTERFS"})
CLASSES = frozenset({"Data", "Iso", "Backup"})
ROLES = frozenset({"Regular", "Master"})


class Seal(enum.StrEnum):
    """The state of the ``_SHA_CKSUM`` seal."""

    OK = "Ok"
    MISSING = "Missing"
    BROKEN = "Broken"


class MetadataError(ValueError):
    """The bytes are not VDSM domain metadata (too big, not text, no usable key)."""


@dataclasses.dataclass(frozen=True)
class DomainMetadata:
    """What a metadata file says, plus how trustworthy it is."""

    values: Mapping[str, str]
    seal: Seal
    checksum: str | None
    """The checksum written in the file (None when missing)."""
    computed: str
    warnings: tuple[str, ...] = ()
    """Malformed lines, unknown keys, out-of-range values: reported, never fatal."""

    @property
    def sd_uuid(self) -> str | None:
        return self.values.get("SDUUID")

    def detail(self) -> dict[str, str]:
        """The VDSM fields of a monitor's status block (only those present)."""
        out: dict[str, str] = {}
        for status_key, key in (
            ("sdUUID", "SDUUID"),
            ("version", "VERSION"),
            ("type", "TYPE"),
            ("class", "CLASS"),
            ("role", "ROLE"),
            ("poolUUID", "POOL_UUID"),
            ("description", "DESCRIPTION"),
        ):
            if key in self.values:
                out[status_key] = self.values[key]
        return out


def checksum(lines: Iterable[str]) -> str:
    """VDSM's seal over ``key=value`` strings: sorted, concatenated, non-ASCII as XML char refs."""
    sha = hashlib.sha1(usedforsecurity=False)
    for line in sorted(lines):
        sha.update(line.encode("ascii", "xmlcharrefreplace"))
    return sha.hexdigest()


def dump(values: Mapping[str, str]) -> bytes:
    """Metadata bytes as VDSM writes them (sorted lines, seal last). Used by tests and tools."""
    lines = sorted(f"{k}={v}" for k, v in values.items() if k != SHA_CKSUM_TAG)
    body = "".join(line + "\n" for line in lines)
    return (body + f"{SHA_CKSUM_TAG}={checksum(lines)}\n").encode("utf-8")


def parse(data: bytes) -> DomainMetadata:
    """Parse a metadata file's bytes. Raises :class:`MetadataError` when it is not metadata at all."""
    if len(data) > MAX_METADATA_BYTES:
        raise MetadataError(f"metadata is larger than {MAX_METADATA_BYTES} bytes")
    data = data.rstrip(b"\0")
    if b"\0" in data:
        raise MetadataError("metadata contains NUL bytes before its end")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MetadataError(f"metadata is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    values: dict[str, str] = {}
    sealed: list[str] = []
    written: str | None = None
    warnings: list[str] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        if len(line) > MAX_LINE_CHARS:
            warnings.append(f"line {number}: longer than {MAX_LINE_CHARS} characters, ignored")
            continue
        key, sep, value = line.partition("=")
        if not sep or not _KEY_RE.match(key):
            warnings.append(f"line {number}: not KEY=VALUE, ignored")
            continue
        if key == SHA_CKSUM_TAG:
            written = value.strip().lower()
            continue
        if key in values:
            warnings.append(f"line {number}: duplicate key {key}")
        elif key not in KNOWN_KEYS:
            warnings.append(f"line {number}: unknown key {key}")
        values[key] = value
        sealed.append(line)
    if not values:
        raise MetadataError("no KEY=VALUE line found")
    computed = checksum(sealed)
    if written is None:
        seal = Seal.MISSING
        warnings.append("no _SHA_CKSUM: accepted without a seal")
    elif written == computed:
        seal = Seal.OK
    else:
        seal = Seal.BROKEN
    warnings.extend(_check_values(values))
    return DomainMetadata(values, seal, written, computed, tuple(warnings))


def _check_values(values: Mapping[str, str]) -> list[str]:
    out: list[str] = []
    for key, allowed in (("VERSION", VERSIONS), ("TYPE", TYPES), ("CLASS", CLASSES), ("ROLE", ROLES)):
        value = values.get(key)
        if value is not None and value not in allowed:
            out.append(f"{key}={value!r} is not one of {sorted(allowed)}")
    sd_uuid = values.get("SDUUID")
    if sd_uuid is None:
        out.append("no SDUUID")
    elif not UUID_RE.match(sd_uuid):
        out.append(f"SDUUID={sd_uuid!r} is not a UUID")
    return out


def metadata_path(domain_dir: str) -> str:
    return os.path.join(domain_dir, DOM_MD, METADATA)


def candidate_domains(names: Iterable[str]) -> list[str]:
    """The directory entries of a mount that may be VDSM domains (UUID names), sorted."""
    return sorted(n for n in names if UUID_RE.match(n))
