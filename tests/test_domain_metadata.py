"""VDSM domain metadata: parsing and the _SHA_CKSUM seal, table-driven with malformed input."""

from __future__ import annotations

import hashlib

import pytest

from hostlib import domain_metadata as dm

SD = "3b5b1f5e-0d6c-4a3c-9a8a-2c0f6b1e9d11"
POOL = "6c1b1a2e-8a7b-4f00-b1b2-7f1c3d2e4a55"
GOOD = {
    "CLASS": "Data",
    "DESCRIPTION": "nfs-data",
    "IOOPTIMEOUTSEC": "10",
    "LEASERETRIES": "3",
    "LEASETIMESEC": "60",
    "LOCKPOLICY": "",
    "LOCKRENEWALINTERVALSEC": "5",
    "POOL_UUID": POOL,
    "REMOTE_PATH": "server:/export/data",
    "ROLE": "Regular",
    "SDUUID": SD,
    "TYPE": "NFS",
    "VERSION": "4",
}


def test_checksum_is_sha1_of_sorted_lines_without_newlines() -> None:
    lines = ["B=2", "A=1"]
    assert dm.checksum(lines) == hashlib.sha1(b"A=1B=2").hexdigest()


def test_non_ascii_is_hashed_as_xml_character_references() -> None:
    assert dm.checksum(["DESCRIPTION=caf\u00e9"]) == hashlib.sha1(b"DESCRIPTION=caf&#233;").hexdigest()


def test_dump_then_parse_round_trips_with_an_intact_seal() -> None:
    md = dm.parse(dm.dump(GOOD))
    assert md.seal is dm.Seal.OK
    assert dict(md.values) == GOOD
    assert md.warnings == ()
    assert md.detail() == {
        "sdUUID": SD, "version": "4", "type": "NFS", "class": "Data", "role": "Regular",
        "poolUUID": POOL, "description": "nfs-data",
    }


def _with(values: dict[str, str], **extra: str) -> dict[str, str]:
    return {**values, **extra}


def _sealed_then(edit: str) -> bytes:
    return dm.dump(GOOD).replace(b"ROLE=Regular", edit.encode())


def _upper_checksum(data: bytes) -> bytes:
    head, _, cksum = data.partition(b"_SHA_CKSUM=")
    return head + b"_SHA_CKSUM=" + cksum.upper()


CASES: list[tuple[str, bytes, dm.Seal, list[str]]] = [
    ("intact", dm.dump(GOOD), dm.Seal.OK, []),
    ("nul padding stripped", dm.dump(GOOD) + b"\0" * 3000, dm.Seal.OK, []),
    ("crlf line ends", dm.dump(GOOD).replace(b"\n", b"\r\n"), dm.Seal.OK, []),
    ("value edited after sealing", _sealed_then("ROLE=Master"), dm.Seal.BROKEN, []),
    ("missing checksum", dm.dump(GOOD).split(b"_SHA_CKSUM")[0], dm.Seal.MISSING, ["no _SHA_CKSUM"]),
    ("unknown key kept and sealed", dm.dump(_with(GOOD, FUTURE_KEY="x")), dm.Seal.OK,
     ["unknown key FUTURE_KEY"]),
    ("non-ascii description", dm.dump(_with(GOOD, DESCRIPTION="donn\u00e9es")), dm.Seal.OK, []),
    ("malformed line ignored", _sealed_then("ROLE=Regular\nthis is not a key value"), dm.Seal.OK,
     ["not KEY=VALUE"]),
    ("lowercase key is malformed", _sealed_then("ROLE=Regular\nrole=Master"), dm.Seal.OK, ["not KEY=VALUE"]),
    ("empty lines ignored", _sealed_then("ROLE=Regular\n\n\n"), dm.Seal.OK, []),
    ("checksum in upper case", _upper_checksum(dm.dump(GOOD)), dm.Seal.OK, []),
    ("bad version value", dm.dump(_with(GOOD, VERSION="9")), dm.Seal.OK, ["VERSION='9'"]),
    ("bad type value", dm.dump(_with(GOOD, TYPE="ZFS")), dm.Seal.OK, ["TYPE='ZFS'"]),
    ("sduuid not a uuid", dm.dump(_with(GOOD, SDUUID="nope")), dm.Seal.OK, ["not a UUID"]),
    ("duplicate key breaks the seal", _sealed_then("ROLE=Regular\nROLE=Master"), dm.Seal.BROKEN,
     ["duplicate key ROLE"]),
]


@pytest.mark.parametrize(("data", "seal", "warnings"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_parse_reports_the_seal_and_warnings(data: bytes, seal: dm.Seal, warnings: list[str]) -> None:
    md = dm.parse(data)
    assert md.seal is seal
    for w in warnings:
        assert any(w in got for got in md.warnings), (w, md.warnings)
    if not warnings:
        assert md.warnings == ()


BAD: list[tuple[str, bytes, str]] = [
    ("empty", b"", "no KEY=VALUE"),
    ("only nul", b"\0" * 512, "no KEY=VALUE"),
    ("only garbage", b"hello world\n", "no KEY=VALUE"),
    ("nul inside", b"SDUUID=a\0b\nVERSION=4\n", "NUL"),
    ("not utf-8", b"DESCRIPTION=\xff\xfe\n", "not UTF-8"),
    ("huge", b"A=" + b"x" * (dm.MAX_METADATA_BYTES + 1), "larger than"),
]


@pytest.mark.parametrize(("data", "message"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_parse_refuses_what_is_not_metadata(data: bytes, message: str) -> None:
    with pytest.raises(dm.MetadataError, match=message):
        dm.parse(data)


def test_overlong_line_is_ignored_not_fatal() -> None:
    data = dm.dump(GOOD) + b"DESCRIPTION2=" + b"x" * (dm.MAX_LINE_CHARS + 1) + b"\n"
    md = dm.parse(data)
    assert md.seal is dm.Seal.OK
    assert any("longer than" in w for w in md.warnings)


def test_candidate_domains_are_uuid_names_only() -> None:
    names = [SD, "lost+found", "__DIRECT_IO_TEST__", POOL, "not-a-uuid", SD.upper()]
    assert dm.candidate_domains(names) == sorted([SD, POOL])
    assert dm.metadata_path("/m/" + SD) == f"/m/{SD}/dom_md/metadata"
