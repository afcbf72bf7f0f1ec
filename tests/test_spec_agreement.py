"""One rule book: a CRD admits a spec exactly when the agent's parser accepts it.

Hypothesis generates StorageConnection, StoragePool and DomainMonitor objects, valid and borderline:
real-world host names (upper case, trailing dots, 63/64-character labels, 253/254/255-character names),
IPv4 and IPv6 literals (bare, bracketed, with zones, mapped IPv4), RFC 3720 iSCSI names as vendors write
them (upper case, eui./naa. of every length, 223/224 bytes), paths with '..', '.', control characters,
XML-special characters and commas, label selectors with good and bad keys and values, and numbers at the
ends of their ranges and one past. For each object the CRD's verdict (defaults, the structural schema and
the CEL rules, evaluated by ``crd_schema.admits`` as the API server would) must equal the parser's
(``parse`` returns or raises InvalidSpec), apart from what :data:`EXCEPTIONS` lists by name.

Not compared because they are not the parser's: the host-dependent checks that run on each node in
``reconcile`` (:func:`hostlib.connections.validate` and the pool's ``desired_definition``): mount-option
allow-lists per type (and the admin's allow_suid/allow_dev), the posixfs type list (an admin extends it
per node with --allow-vfs-type), allowed host paths, that a device exists and is a block device, and
mount-point confinement.

The example count is bounded (``HOSTSTORAGE_HYPOTHESIS_EXAMPLES``, default 400 per kind) and the seed is
printed (``HOSTSTORAGE_HYPOTHESIS_SEED`` replays one).
"""

from __future__ import annotations

import ipaddress
import os
import pathlib
import random
import re
from collections.abc import Callable, Mapping
from typing import Any

import crd_schema
import pytest
import yaml
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from hostlib import connections, errors, iscsi, mounts
from reconcilers import api, health_policy, selector
from reconcilers import domain_monitor as dmon
from reconcilers import storage_connection as sc
from reconcilers import storage_pool as sp

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = int(os.environ.get("HOSTSTORAGE_HYPOTHESIS_EXAMPLES", "400"))
SEED = int(os.environ.get("HOSTSTORAGE_HYPOTHESIS_SEED") or random.SystemRandom().randrange(2**32))
print(f"test_spec_agreement: seed {SEED} (HOSTSTORAGE_HYPOTHESIS_SEED={SEED} replays it)")


def schema_of(kind: str) -> dict[str, Any]:
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if doc["spec"]["names"]["kind"] == kind:
            version = next(v for v in doc["spec"]["versions"] if v.get("storage"))
            schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
            return schema
    raise KeyError(kind)


SCHEMAS = {kind: schema_of(kind) for kind in (sc.KIND, sp.KIND, dmon.KIND)}
PARSERS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    sc.KIND: sc.parse,
    sp.KIND: sp.parse,
    dmon.KIND: dmon.parse,
}

_KEY_RE = re.compile(
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)


def _bad_label_keys(obj: Mapping[str, Any]) -> bool:
    labels = ((obj.get("spec") or {}).get("nodeSelector") or {}).get("matchLabels") or {}
    return any(not _KEY_RE.match(k) for k in labels)


EXCEPTIONS: dict[str, Callable[[Mapping[str, Any]], bool]] = {
    # A structural schema cannot constrain the keys of a map (no propertyNames), and a CEL rule over
    # unbounded map keys exceeds the API server's cost budget: the agent refuses a malformed key with
    # InvalidSpec naming it (tests/test_selector.py), the CRD cannot.
    "nodeSelector.matchLabels keys": _bad_label_keys,
}


def verdicts(obj: dict[str, Any]) -> tuple[list[str], str | None]:
    crd = crd_schema.admits(SCHEMAS[obj["kind"]], obj)
    try:
        PARSERS[obj["kind"]](obj)
        parser = None
    except errors.InvalidSpec as exc:
        parser = str(exc)
    return crd, parser


def check_agreement(obj: dict[str, Any]) -> None:
    crd, parser = verdicts(obj)
    if bool(crd) == (parser is not None):
        return
    excused = [name for name, applies in EXCEPTIONS.items() if applies(obj)]
    assert excused, (
        f"the CRD {'refuses' if crd else 'admits'} what the parser "
        f"{'accepts' if parser is None else 'refuses'}:\n  object: {obj}\n  CRD: {crd}\n  parser: {parser}"
    )


# ------------------------------------------------------------------------------------ strategies


def mostly(good: st.SearchStrategy[Any], edge: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid values three times in four: a borderline value then decides the verdict on its own, so a
    rule that differs between the CRD and the parser shows up instead of hiding behind another error."""
    return st.one_of(good, good, good, edge)


def _label(n: int) -> str:
    return ("a" + "b" * max(0, n - 2) + "c")[:n] if n > 1 else "x"


DNS_NAMES = [
    "nfs.example.com",
    "localhost",
    "a",
    "A-1.Example.COM",
    "example.com.",
    "xn--bcher-kva.example",
    "node_1",
    "-a",
    "a-",
    "a..b",
    ".a",
    "example.com..",
    "a b",
    "",
    "*",
    "host:2049",
    "é.example",
    _label(63),
    _label(64),
    f"{_label(63)}.{_label(63)}.{_label(63)}.{_label(61)}",
    f"{_label(63)}.{_label(63)}.{_label(63)}.{_label(62)}",
    f"{_label(63)}.{_label(63)}.{_label(63)}.{_label(61)}.",
    f"{_label(63)}.{_label(63)}.{_label(63)}.{_label(62)}.",
    f"{_label(63)}.{_label(63)}.{_label(63)}.{_label(63)}",
]
IP_TEXT = [
    "192.0.2.1",
    "255.255.255.255",
    "0.0.0.0",
    "999.1.1.1",
    "1.2.3",
    "01.2.3.4",
    "1.2.3.4.5",
    "256.0.0.1",
    "fd00::5",
    "[fd00::5]",
    "[fd00::5",
    "fd00::5]",
    "[1.2.3.4]",
    "fd00::5%eth0",
    "[fe80::1%eth0]",
    "::1",
    "[::]",
    "1:2:3:4:5:6:7:8",
    "1:2:3:4:5:6:7:8:9",
    "[::ffff:192.0.2.1]",
    "::ffff:192.0.2.1",
    "FD00::AB",
    "fd00:::1",
    "[]",
    "::",
    "1::2::3",
]
hosts = mostly(
    st.sampled_from(["nfs.example.com", "10.0.0.5", "[fd00::5]", "fd00::5", "gluster1"]),
    st.one_of(
        st.sampled_from(DNS_NAMES + IP_TEXT),
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).map(str),
        st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
        st.ip_addresses(v=6).map(lambda a: ipaddress.IPv6Address(a).exploded),
        st.lists(st.sampled_from(["a", "b1", "x-y", _label(63), "9"]), min_size=1, max_size=6).map(".".join),
    ),
)
ports = st.sampled_from(["", ":3260", ":1", ":65535", ":65536", ":0", ":", ":abc", ":03260"])
portals = mostly(
    st.sampled_from(["10.0.0.5", "10.0.0.5:3260", "[fd00::5]:3260", "san.example.com"]),
    st.one_of(
        st.tuples(hosts, ports).map("".join),
        st.sampled_from(["[fd00::5]:3260", "fd00::5:3260", "10.0.0.5:3260", "[fd00::5]3260"]),
    ),
)

SEGMENTS = ["a", "data", "..", ".", "a..b", "a,b", "a b", "é", "<x>", "a&b", "it's", 'a"b', "a\x7f", "a\n",
            "a\tb", "-x", "x" * 250, "", "dom_md", "UPPER", "a:b", "a=b"]  # fmt: skip
abs_paths = mostly(
    st.sampled_from(["/exports/data", "/srv/a", "/x"]),
    st.one_of(
        st.lists(st.sampled_from(SEGMENTS), min_size=0, max_size=5).map(lambda s: "/" + "/".join(s)),
        st.sampled_from(
            [
                "",
                "relative/x",
                "//double",
                "/a//b/",
                "/" + "a" * 1023,
                "/" + "a" * 1024,
                "-/x",
                "/x,y",
                "/a b",
                "/a\x7f",
                "/a<b>",
                "/a\n",
                "/a/../b",
                "/a/./b",
                "/é",
            ]
        ),
    ),
)
rel_paths = mostly(
    st.sampled_from(["images", "dom_md/x", "a/b"]),
    st.one_of(
        st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4).map("/".join),
        st.sampled_from(["", ".", "./", "./a", "a/", "/abs", "a/../../b", "...", "a" * 1024, "a" * 1025]),
    ),
)
dev_paths = mostly(
    st.sampled_from(["/dev/vdb1", "/dev/disk/by-uuid/0c1e"]),
    st.one_of(
        st.lists(st.sampled_from(SEGMENTS), min_size=0, max_size=3).map(lambda s: "/dev/" + "/".join(s)),
        st.sampled_from(
            ["/dev", "/dev/", "/dev/.", "/dev/./", "/dev//x", "/dev/vdb1", "/etc/passwd", "/dev/../etc"]
        ),
    ),
)
names = mostly(
    st.sampled_from(["c1", "shared-nfs", "a.b"]),
    st.sampled_from(["UPPER", "a_b", "-a", "a-", "", "a" * 253, "a" * 254, "x", "a<b"]),
)

ISCSI_NAMES = [
    "iqn.2003-01.org.example:disk1", "iqn.1992-08.com.NetApp:sn.84211978", "IQN.2003-01.ORG.X:T",
    "iqn.2001-04.com.example:storage:diskarrays-sn-a8675309", "iqn.2003-01.org.example",
    "eui.02004567A425678D", "eui.02004567a425678d", "naa.52004567BA64678D",
    "naa.6006016034a02500d0e30b6d6a91e411", "naa." + "a" * 24, "eui.123", "eui.02004567a425678dd",
    "iqn.03-01.org.x", "iqn.2003-13.org.x", "iqn.2003-01.-org.x", "iqn.2003-01.org..x", "iqn.2003-01.org.x:",
    "iqn.2003-01.org.x:t_1", "iqn.2003-01.org.x:t t", "-iqn.2003-01.org.x", "iqn.x:y", "not-an-iqn", "iqn",
    "iqn.2003-01.org.x:" + "a" * 205, "iqn.2003-01.org.x:" + "a" * 206, "iqn.2003-01.org.x:t<b",
]  # fmt: skip
iscsi_names = mostly(
    st.sampled_from(ISCSI_NAMES[:4]),
    st.one_of(
        st.sampled_from(ISCSI_NAMES),
        st.tuples(
            st.sampled_from(["iqn", "IQN"]),
            st.integers(0, 10000),
            st.integers(0, 14),
            st.lists(st.sampled_from(["com", "Example", "a-b", "x1", "-x", "é"]), min_size=1, max_size=3),
            st.sampled_from(["", ":t1", ":Disk.1:a-b", ":", ":x_y"]),
        ).map(lambda t: f"{t[0]}.{t[1]:04d}-{t[2]:02d}.{'.'.join(t[3])}{t[4]}"),
        st.tuples(st.sampled_from(["eui.", "naa.", "EUI."]), st.integers(0, 40)).map(
            lambda t: t[0] + "A" * t[1]
        ),
    ),
)


def ints(low: int, high: int) -> st.SearchStrategy[Any]:
    return mostly(
        st.integers(low, high), st.sampled_from([low, high, low - 1, high + 1, "10", True, 1.5, None])
    )


OPTIONS = ["ro", "noatime", "a,b", "a b", "-o", "x" * 256, "x" * 257, "", "name=admin", "sec=krb5", "rw\n"]
options = mostly(
    st.lists(st.sampled_from(OPTIONS[:2]), max_size=2),
    st.one_of(
        st.lists(st.sampled_from(OPTIONS), max_size=3),
        st.sampled_from([None, "ro", ["ro"] * 33, ["ro"] * 32]),
    ),
)

LABEL_KEYS = [
    "zone",
    "topology.kubernetes.io/zone",
    "-zone",
    "a/b/c",
    "k" * 63,
    "k" * 64,
    "Example.com/x",
    "",
]
LABEL_VALUES = ["a", "", "b c", "v" * 63, "v" * 64, "-v", "v_1.x", 5]
selectors = mostly(
    st.sampled_from([{}, {"matchLabels": {"zone": "a"}}]),
    st.one_of(
        st.none(),
        st.just({}),
        st.fixed_dictionaries(
            {},
            optional={
                "matchLabels": st.dictionaries(
                    st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), max_size=3
                ),
                "matchExpressions": st.lists(
                    st.fixed_dictionaries(
                        {
                            "key": st.sampled_from(LABEL_KEYS),
                            "operator": st.sampled_from((*selector.OPERATORS, "Like")),
                        },
                        optional={"values": st.lists(st.sampled_from(LABEL_VALUES), max_size=2)},
                    ),
                    max_size=2,
                ),
            },
        ),
    ),
)


def optional(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A dict where every field may be absent (the parsers' and the CRDs' optional fields)."""
    return st.fixed_dictionaries({}, optional=fields)


def with_required(required: dict[str, st.SearchStrategy[Any]], **opt: st.SearchStrategy[Any]) -> Any:
    return st.fixed_dictionaries(required, optional=opt)


secret_refs = with_required(
    {"name": names}, namespace=st.sampled_from(["hoststorage", "", "Bad", "n" * 63, "n" * 64, "a-", None])
)
taints = mostly(
    with_required(
        {"effect": st.sampled_from(health_policy.EFFECTS)},
        maxTaintedPercent=ints(*health_policy.PERCENT_RANGE),
    ),
    st.one_of(
        with_required({"effect": st.sampled_from(["PreferNoSchedule", "noschedule", "", None, 1])}),
        optional(maxTaintedPercent=ints(*health_policy.PERCENT_RANGE)),
        st.sampled_from([None, "NoSchedule", []]),
    ),
)
HEALTH = {
    "failureGraceSeconds": ints(*health_policy.GRACE_RANGE),
    "nodeSignals": mostly(
        optional(label=st.sampled_from([True, False]), taint=taints),
        st.one_of(
            optional(label=st.sampled_from([None, "true", 1]), taint=taints), st.sampled_from([None, True])
        ),
    ),
}
"""The shared health-policy fields (reconcilers/health_policy.py), drawn for every kind."""
policies = mostly(st.sampled_from(["Detach", "Retain"]), st.sampled_from(["Delete", None, "detach"]))

connection_blocks = st.one_of(
    st.tuples(
        st.just("nfs"),
        with_required(
            {"server": hosts, "export": abs_paths},
            version=st.sampled_from(["3", "4", "4.1", "4.2", "auto", "5", None]),
            timeo=ints(*connections.NFS_TIMEO_RANGE),
            retrans=ints(*connections.NFS_RETRANS_RANGE),
            options=options,
        ),
    ),
    st.tuples(
        st.just("posixfs"),
        with_required(
            {
                "source": st.one_of(
                    dev_paths,
                    abs_paths,
                    st.tuples(
                        hosts,
                        st.sampled_from(["", ":2049"]),
                        st.sampled_from([":/", ":/a/../b", ":x"]),
                        abs_paths,
                    ).map(lambda t: "".join(t[:3]) + t[3].lstrip("/")),
                    st.sampled_from(["//srv/share", "//srv/../x", "server", "srv:/a b", "-x:/y"]),
                ),
                "vfsType": st.sampled_from(
                    [
                        "ext4",
                        "xfs",
                        "ceph",
                        "cifs",
                        "glusterfs",
                        "nfs",
                        "fuse.sshfs",
                        "fuse",
                        "Ext4",
                        "my_fs.2",
                        "",
                        "x" * 33,
                    ]
                ),
            },
            options=options,
        ),
    ),
    st.tuples(
        st.just("glusterfs"),
        with_required(
            {
                "server": hosts,
                "volume": st.sampled_from(["vol0", "a" * 64, "a" * 65, "-v", "v/x", "_v.1", ""]),
            },
            backupServers=st.lists(hosts, max_size=2) | st.just(["g"] * 17),
            options=options,
        ),
    ),
    st.tuples(
        st.just("iscsi"),
        with_required(
            {"portal": portals, "target": iscsi_names},
            lun=ints(0, 16383),
            initiatorName=iscsi_names,
            chapSecretRef=secret_refs,
        ),
    ),
    st.tuples(st.just("localfs"), with_required({"path": abs_paths})),
)


@st.composite
def connection_objects(draw: st.DrawFn) -> dict[str, Any]:
    conn_type, block = draw(connection_blocks)
    spec: dict[str, Any] = {"type": conn_type, conn_type: block}
    spec.update(draw(optional(nodeSelector=selectors, deletionPolicy=policies, **HEALTH)))
    return {"apiVersion": api.API_VERSION, "kind": sc.KIND, "metadata": {"name": "c1"}, "spec": spec}


pool_sources = st.one_of(
    st.tuples(st.just("connectionRef"), with_required({"name": names}, path=rel_paths)),
    st.tuples(st.just("dir"), with_required({"path": abs_paths})),
    st.tuples(
        st.just("fs"),
        with_required({"device": dev_paths}, format=st.sampled_from(["ext4", "auto", "ntfs", None])),
    ),
    st.tuples(
        st.just("netfs"),
        with_required(
            {"host": hosts, "dir": abs_paths}, format=st.sampled_from(["nfs", "glusterfs", "cifs"])
        ),
    ),
    st.tuples(
        st.just("iscsiDirect"),
        with_required(
            {"host": hosts, "target": iscsi_names, "initiator": iscsi_names},
            port=ints(1, 65535),
            chapSecretRef=secret_refs,
        ),
    ),
    st.tuples(st.just("iscsi"), with_required({"host": hosts, "target": iscsi_names}, port=ints(1, 65535))),
    st.tuples(
        st.just("logical"),
        with_required(
            {
                "vgName": st.sampled_from(
                    ["vg0", "vg_data", ".", "..", "-vg", "v" * 127, "v" * 128, "v/g", "+v."]
                )
            },
            devices=st.lists(dev_paths, max_size=2),
        ),
    ),
)


@st.composite
def pool_objects(draw: st.DrawFn) -> dict[str, Any]:
    key, block = draw(pool_sources)
    spec: dict[str, Any] = {key: block}
    spec.update(
        draw(
            optional(
                nodeSelector=selectors,
                deletionPolicy=policies,
                **HEALTH,
                autostart=st.sampled_from([True, False, "yes"]),
                libvirtName=st.sampled_from(
                    ["images", "My_Pool.1", "-x", "a" * 64, "a" * 65, "bad/name", "", "a<b"]
                ),
            )
        )
    )
    name = draw(st.sampled_from(["p1", "p" * 64, "p" * 65, "p." + "q" * 251]))
    return {"apiVersion": api.API_VERSION, "kind": sp.KIND, "metadata": {"name": name}, "spec": spec}


monitor_targets = st.one_of(
    st.fixed_dictionaries({"connectionRef": with_required({"name": names}, path=rel_paths)}),
    st.fixed_dictionaries({"poolRef": with_required({"name": names})}),
    st.fixed_dictionaries({"hostPath": abs_paths}),
    st.sampled_from([{}, {"hostPath": "/srv", "poolRef": {"name": "p"}}]),
)


@st.composite
def monitor_objects(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {"target": draw(monitor_targets)}
    spec.update(
        draw(
            optional(
                nodeSelector=selectors,
                deletionPolicy=policies,
                **HEALTH,
                probeFile=rel_paths,
                intervalSeconds=ints(*dmon.INTERVAL_RANGE),
                timeoutSeconds=ints(*dmon.INTERVAL_RANGE),
                reportIntervalSeconds=ints(*dmon.REPORT_INTERVAL_RANGE),
                readDelayWarningSeconds=st.sampled_from([0, 0.001, 5, 3600, 3600.5, -1, "5", None]),
                freeSpaceWarningPercent=st.sampled_from([0, 10, 99.9, 100, 100.1, -0.5, True]),
            )
        )
    )
    return {"apiVersion": api.API_VERSION, "kind": dmon.KIND, "metadata": {"name": "m1"}, "spec": spec}


def _agreement(objects: st.SearchStrategy[dict[str, Any]]) -> Callable[[], None]:
    @seed(SEED)
    @settings(
        max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
    )
    @given(objects)
    def check(obj: dict[str, Any]) -> None:
        check_agreement(obj)

    return check


test_storage_connection_crd_and_parser_agree = _agreement(connection_objects())
test_storage_pool_crd_and_parser_agree = _agreement(pool_objects())
test_domain_monitor_crd_and_parser_agree = _agreement(monitor_objects())


# -------------------------------------------------------------- the rules whose owner is in hostlib


def _walk_patterns(kind: str, suffix: str) -> list[str]:
    return [
        n["pattern"] for path, n in crd_schema.walk(SCHEMAS[kind]) if path.endswith(suffix) and "pattern" in n
    ]


def test_every_iscsi_name_pattern_in_the_crds_is_hostlibs() -> None:
    found = (
        _walk_patterns(sc.KIND, ".target")
        + _walk_patterns(sc.KIND, ".initiatorName")
        + _walk_patterns(sp.KIND, ".target")
        + _walk_patterns(sp.KIND, ".initiator")
    )
    assert len(found) == 5
    assert set(found) == {iscsi.NAME_PATTERN}


def test_crd_limits_are_the_parsers() -> None:
    nfs = SCHEMAS[sc.KIND]["properties"]["spec"]["properties"]["nfs"]["properties"]
    assert (nfs["retrans"]["minimum"], nfs["retrans"]["maximum"]) == connections.NFS_RETRANS_RANGE
    assert (nfs["timeo"]["minimum"], nfs["timeo"]["maximum"]) == connections.NFS_TIMEO_RANGE
    vfs = SCHEMAS[sc.KIND]["properties"]["spec"]["properties"]["posixfs"]["properties"]["vfsType"]
    assert vfs["pattern"] == mounts.VFS_TYPE_PATTERN and vfs["maxLength"] == mounts.MAX_VFS_TYPE
    refused = re.search(r"\[(.*?)\]", vfs["x-kubernetes-validations"][0]["rule"])
    assert refused is not None
    assert set(re.findall(r"'([^']+)'", refused.group(1))) == set(mounts.POSIXFS_REFUSED_TYPES)
    for kind in SCHEMAS:
        props = SCHEMAS[kind]["properties"]["spec"]["properties"]
        grace = props["failureGraceSeconds"]
        assert (grace["minimum"], grace["maximum"]) == health_policy.GRACE_RANGE
        assert grace["default"] == health_policy.DEFAULT_GRACE
        taint = props["nodeSignals"]["properties"]["taint"]["properties"]
        assert tuple(taint["effect"]["enum"]) == health_policy.EFFECTS
        pct = taint["maxTaintedPercent"]
        assert (pct["minimum"], pct["maximum"]) == health_policy.PERCENT_RANGE
        assert pct["default"] == health_policy.DEFAULT_MAX_TAINTED_PERCENT
        assert props["nodeSignals"]["properties"]["label"]["default"] is False
        sel = SCHEMAS[kind]["properties"]["spec"]["properties"]["nodeSelector"]["properties"]
        assert sel["matchLabels"]["maxProperties"] == selector.MAX_LABELS
        assert sel["matchExpressions"]["maxItems"] == selector.MAX_EXPRESSIONS
        assert sel["matchExpressions"]["items"]["properties"]["values"]["maxItems"] == selector.MAX_VALUES


@pytest.mark.parametrize("server", ["fd00::5", "[fd00::5]", "FD00::5", "::ffff:192.0.2.1"])
def test_a_bare_ipv6_nfs_server_is_accepted_by_both(server: str) -> None:
    """RFC 4291 literals: a field that holds only a host cannot be misread, so brackets are optional."""
    obj = {
        "apiVersion": api.API_VERSION,
        "kind": sc.KIND,
        "metadata": {"name": "c1"},
        "spec": {"type": "nfs", "nfs": {"server": server, "export": "/x"}},
    }
    assert verdicts(obj) == ([], None)
    assert sc.parse(obj).params.server.startswith("[")


def test_an_exception_that_no_longer_excuses_anything_would_be_noticed() -> None:
    """Each listed exception is real: the CRD and the parser do disagree on its example."""
    obj = {
        "apiVersion": api.API_VERSION,
        "kind": sc.KIND,
        "metadata": {"name": "c1"},
        "spec": {
            "type": "localfs",
            "localfs": {"path": "/x"},
            "nodeSelector": {"matchLabels": {"-bad": "v"}},
        },
    }
    crd, parser = verdicts(obj)
    assert crd == [] and parser is not None and EXCEPTIONS["nodeSelector.matchLabels keys"](obj)
