"""The chart's RBAC allows every API request the agent and the controller make, and nothing more.

The requests come from tests/data/api_requests.json, which the e2e suite writes from what the API
emulator recorded: who, verb, group, resource, subresource and whether the request was namespaced
(namespaced requests go to the component's own namespace: the release namespace here), plus the
non-resource discovery URLs. Without that file the test uses :data:`DERIVED_REQUESTS`, read off
DESIGN.md and controller/kube.py, and names that source in every failure.

The rules are the ones ``helm template`` renders, evaluated the way the RBAC authorizer evaluates
them: ClusterRoleBindings grant everywhere, RoleBindings only in their namespace; a rule matches on
API group, ``resource`` or ``resource/subresource``, verb and (when set) resource names.

"Nothing broader" is a reviewed list (:data:`REVIEWED`): every (resource, verb) the chart grants must be
on it with a reason, wildcards and escalation verbs are refused, and a grant no recorded request uses
must say why it is kept (:data:`NOT_EXERCISED`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Iterable
from typing import Any

import pytest
from chart_render import NAMESPACE, render

pytestmark = pytest.mark.packaging

REQUESTS_FILE = pathlib.Path(__file__).resolve().parent / "data" / "api_requests.json"
# Every Event the components post is about a cluster-scoped object; the API server takes core/v1 Events
# about those only in "default" (controller/kube.py post_event).
EVENTS_NAMESPACE = "default"
GROUP = "hoststorage.io"
PARENTS = ("storageconnections", "storagepools", "domainmonitors")


@dataclasses.dataclass(frozen=True)
class Request:
    who: str  # "agent" or "controller"
    verb: str
    group: str
    resource: str
    subresource: str = ""
    namespace: str = ""  # empty: cluster-scoped
    name: str = ""

    @property
    def full_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def _derived() -> list[Request]:
    out: list[Request] = []
    for who in ("agent", "controller"):
        for resource in PARENTS:
            out += [Request(who, verb, GROUP, resource) for verb in ("list", "watch")]
        out += [Request(who, verb, "", "nodes") for verb in ("list", "watch")]
        out += [Request(who, verb, GROUP, "storagenodestates") for verb in ("list", "watch", "delete")]
        out.append(Request(who, "create", "", "events", namespace=EVENTS_NAMESPACE))
    out.append(Request("agent", "get", "", "nodes"))
    out.append(Request("agent", "create", GROUP, "storagenodestates"))
    out.append(Request("agent", "patch", GROUP, "storagenodestates", "status"))
    for resource in PARENTS:
        out.append(Request("controller", "patch", GROUP, resource))
        out.append(Request("controller", "patch", GROUP, resource, "status"))
    out += [
        Request("controller", v, "coordination.k8s.io", "leases", namespace=NAMESPACE)
        for v in ("get", "create", "update")
    ]
    return out


# Read off DESIGN.md ("Status model", "Deletion", "Components") and the calls in controller/kube.py.
DERIVED_REQUESTS = _derived()


def _who(raw: str) -> str | None:
    low = raw.lower()
    if "agent" in low:
        return "agent"
    if "controller" in low:
        return "controller"
    return None  # kubectl, the test itself


def load_requests() -> tuple[list[Request], list[tuple[str, str]], str]:
    """The resource requests, the non-resource (who, URL) requests, and where they came from."""
    if not REQUESTS_FILE.exists():
        return DERIVED_REQUESTS, [], "derived from DESIGN.md (tests/data/api_requests.json not written yet)"
    data: Any = json.loads(REQUESTS_FILE.read_text())
    rows = data.get("requests", data) if isinstance(data, dict) else data
    out: list[Request] = []
    urls: list[tuple[str, str]] = []
    for row in rows:
        who = _who(str(row.get("who", "")))
        if who is None:
            continue
        if "nonResourceURL" in row:
            urls.append((who, str(row["nonResourceURL"])))
            continue
        namespace = str(row.get("namespace") or "")
        if row.get("namespaced") and not namespace:
            namespace = EVENTS_NAMESPACE if row.get("resource") == "events" else NAMESPACE
        out.append(
            Request(
                who=who,
                verb=str(row["verb"]).lower(),
                group=str(row.get("group") or ""),
                resource=str(row["resource"]),
                subresource=str(row.get("subresource") or ""),
                namespace=namespace,
                name=str(row.get("name") or ""),
            )
        )
    return out, urls, "tests/data/api_requests.json"


REQUESTS, NON_RESOURCE_URLS, SOURCE = load_requests()
RECORDED_NAMESPACES = sorted({r.namespace for r in REQUESTS if r.namespace and r.resource != "events"})
# The recorded namespaced requests went to the agent's and controller's own namespace: install there.
RELEASE_NAMESPACE = RECORDED_NAMESPACES[0] if len(RECORDED_NAMESPACES) == 1 else NAMESPACE
# What Kubernetes' default system:discovery and system:public-info-viewer ClusterRoles let every
# authenticated client GET; the chart grants no non-resource URL of its own.
DISCOVERY_URLS = (
    "/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/readyz", "/version", "/version/",
    "/openapi", "/openapi/*",
)  # fmt: skip

# Every grant the chart may make: (who, group, resource, verb, scope) -> why.
# scope "cluster": through a ClusterRoleBinding; "release": a Role in the release namespace;
# "ns:default": a Role in namespace default.
REVIEWED: dict[tuple[str, str, str, str, str], str] = {}


def _review(
    who: str, group: str, resources: Iterable[str], verbs: Iterable[str], scope: str, why: str
) -> None:
    for resource in resources:
        for verb in verbs:
            REVIEWED[(who, group, resource, verb, scope)] = why


# fmt: off
_review("agent", GROUP, PARENTS, ("list", "watch"), "cluster", "watches the parent kinds it reconciles")
_review("agent", GROUP, ["storagenodestates"], ("list", "watch", "create", "delete"), "cluster",
        "its own per-node children: created on first result, deleted when the parent no longer selects it")
_review("agent", GROUP, ["storagenodestates/status"], ("patch",), "cluster", "writes its children's status")
_review("agent", "", ["nodes"], ("get", "list", "watch"), "cluster",
        "its own Node's labels; RBAC cannot narrow a shared DaemonSet role to each pod's node")
_review("agent", "", ["secrets"], ("get",), "release", "CHAP credentials, by name, only in its namespace")
_review("agent", "", ["events"], ("create",), "ns:default", "warnings, transitions, the host preflight")
_review("controller", GROUP, PARENTS, ("list", "watch"), "cluster", "rolls children up into parents")
_review("controller", GROUP, PARENTS, ("patch",), "cluster", "adds and removes the teardown finalizer")
_review("controller", GROUP, [f"{p}/status" for p in PARENTS], ("patch",), "cluster", "writes the roll-up")
_review("controller", GROUP, ["storagenodestates"], ("list", "watch", "delete"), "cluster",
        "reads children, deletes those of deleted nodes and parents")
_review("controller", "", ["nodes"], ("list", "watch"), "cluster", "node gone / NotReady grace")
_review("controller", "", ["nodes"], ("patch",), "cluster", "scheduling signals: labels, problem taints")
_review("controller", "coordination.k8s.io", ["leases"], ("get", "create", "update"), "release",
        "leader election between replicas")
_review("controller", "", ["events"], ("create",), "ns:default", "skipped nodes on teardown")
# fmt: on

# Reviewed grants an e2e run may not use, and why they stay.
NOT_EXERCISED = {
    ("controller", GROUP, "storagepools/status", "patch", "cluster"): "the e2e suite drives connections",
    ("controller", GROUP, "domainmonitors/status", "patch", "cluster"): "the e2e suite drives connections",
    ("controller", GROUP, "storagepools", "patch", "cluster"): "finalizer; the e2e suite drives connections",
    (
        "controller",
        GROUP,
        "domainmonitors",
        "patch",
        "cluster",
    ): "finalizer; the e2e suite drives connections",
    ("controller", "coordination.k8s.io", "leases", "get", "release"): "only with replicas > 1",
    ("controller", "coordination.k8s.io", "leases", "create", "release"): "only with replicas > 1",
    ("controller", "coordination.k8s.io", "leases", "update", "release"): "only with replicas > 1",
}

ESCALATING_VERBS = {"escalate", "bind", "impersonate", "*"}


@dataclasses.dataclass(frozen=True)
class Grant:
    rule: dict[str, Any]
    namespace: str | None  # None: every namespace and cluster-scoped resources (ClusterRoleBinding)


def grants(objects: list[dict[str, Any]], who: str) -> list[Grant]:
    """Every rule bound to the ServiceAccount of ``who`` in the rendered objects."""
    accounts = {
        o["metadata"]["name"]
        for o in objects
        if o["kind"] == "ServiceAccount" and o["metadata"]["labels"]["app.kubernetes.io/component"] == who
    }
    assert len(accounts) == 1, f"one ServiceAccount for {who}, got {accounts}"
    (account,) = accounts
    roles = {
        (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
        for o in objects
        if o["kind"] in ("Role", "ClusterRole")
    }
    out = []
    for binding in objects:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(
            s["kind"] == "ServiceAccount" and s["name"] == account and s["namespace"] == RELEASE_NAMESPACE
            for s in binding["subjects"]
        ):
            continue
        ref = binding["roleRef"]
        ns = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        role_ns = ns if ref["kind"] == "Role" else None
        role = roles[(ref["kind"], role_ns, ref["name"])]
        out += [Grant(rule, ns) for rule in role.get("rules", [])]
    return out


def allows(grant_list: list[Grant], request: Request) -> bool:
    for grant in grant_list:
        rule = grant.rule
        if grant.namespace is not None and request.namespace != grant.namespace:
            continue  # a RoleBinding grants only namespaced requests in its own namespace
        if request.group not in rule.get("apiGroups", []):
            continue
        if request.full_resource not in rule.get("resources", []):
            continue
        if request.verb not in rule.get("verbs", []):
            continue
        names = rule.get("resourceNames")
        if names and request.name not in names:
            continue
        return True
    return False


def rendered(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return render(values, namespace=RELEASE_NAMESPACE)


def test_non_resource_requests_are_only_discovery() -> None:
    def covered(url: str) -> bool:
        return any(url == d or (d.endswith("*") and url.startswith(d[:-1])) for d in DISCOVERY_URLS)

    assert not [u for u in NON_RESOURCE_URLS if not covered(u[1])], SOURCE


def test_requests_were_loaded() -> None:
    assert REQUESTS, f"no agent or controller requests in {SOURCE}"
    assert {r.who for r in REQUESTS} == {"agent", "controller"}, SOURCE
    # All namespaced requests of both components go to one namespace: theirs.
    assert len(RECORDED_NAMESPACES) <= 1, f"requests to several namespaces: {RECORDED_NAMESPACES}"


@pytest.mark.parametrize("who", ["agent", "controller"])
def test_every_request_is_allowed(who: str) -> None:
    grant_list = grants(rendered(), who)
    denied = sorted(
        {
            f"{r.verb} {r.group or 'core'}/{r.full_resource} ns={r.namespace or '-'}"
            for r in REQUESTS
            if r.who == who and not allows(grant_list, r)
        }
    )
    assert not denied, f"the chart denies requests the {who} makes ({SOURCE}): {denied}"


def _granted(objects: list[dict[str, Any]], who: str) -> set[tuple[str, str, str, str, str]]:
    out = set()
    for grant in grants(objects, who):
        scope = (
            "cluster"
            if grant.namespace is None
            else ("release" if grant.namespace == RELEASE_NAMESPACE else f"ns:{grant.namespace}")
        )
        for group in grant.rule.get("apiGroups", []):
            for resource in grant.rule.get("resources", []):
                for verb in grant.rule.get("verbs", []):
                    out.add((who, group, resource, verb, scope))
    return out


@pytest.mark.parametrize(
    "values", [{}, {"agent": {"chapSecretNames": ["chap-a"]}, "controller": {"replicas": 2}}]
)
@pytest.mark.parametrize("who", ["agent", "controller"])
def test_nothing_beyond_the_reviewed_list_is_granted(who: str, values: dict[str, Any]) -> None:
    objects = rendered(values)
    for o in objects:
        if o["kind"] in ("Role", "ClusterRole"):
            for rule in o.get("rules", []):
                assert "nonResourceURLs" not in rule, o["metadata"]["name"]
                for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                    assert "*" not in rule.get(key, []), f"wildcard in {o['metadata']['name']}: {rule}"
                assert not ESCALATING_VERBS & set(rule.get("verbs", [])), rule
            assert not o.get("aggregationRule"), "aggregated roles grow behind the chart's back"
    extra = _granted(objects, who) - set(REVIEWED)
    assert not extra, f"{who} is granted more than the reviewed list: {sorted(extra)}"


@pytest.mark.parametrize("who", ["agent", "controller"])
def test_every_reviewed_grant_is_used_or_explained(who: str) -> None:
    used = set()
    for r in REQUESTS:
        if r.who == who:
            scope = (
                "cluster"
                if not r.namespace
                else ("release" if r.namespace == RELEASE_NAMESPACE else f"ns:{r.namespace}")
            )
            used.add((who, r.group, r.full_resource, r.verb, scope))
    granted = _granted(rendered(), who)
    unused = sorted(g for g in granted if g not in used and g not in NOT_EXERCISED)
    assert not unused, f"{who}: granted but never requested in {SOURCE}, and no reason given: {unused}"


def test_secrets_are_readable_only_by_the_agent_in_its_namespace_and_by_name_when_configured() -> None:
    objects = rendered({"agent": {"chapSecretNames": ["chap-a"]}})
    agent, controller = grants(objects, "agent"), grants(objects, "controller")
    secret = Request("agent", "get", "", "secrets", namespace=RELEASE_NAMESPACE, name="chap-a")
    assert allows(agent, secret)
    assert not allows(agent, dataclasses.replace(secret, name="other"))
    assert not allows(agent, dataclasses.replace(secret, namespace="kube-system"))
    assert not allows(agent, dataclasses.replace(secret, verb="list", name=""))
    assert not allows(controller, secret)
    for o in objects:
        if o["kind"] == "ClusterRole":
            assert not any("secrets" in r.get("resources", []) for r in o["rules"]), o["metadata"]["name"]


@pytest.mark.parametrize(
    "request_",
    [
        Request("agent", "patch", GROUP, "storageconnections", "status"),
        Request("agent", "update", GROUP, "storagepools"),
        Request("agent", "delete", GROUP, "domainmonitors"),
        Request("agent", "patch", "", "nodes"),
        Request("agent", "create", "", "pods", namespace=NAMESPACE),
        Request("agent", "create", "", "events", namespace="kube-system"),
        Request("agent", "delete", "", "events", namespace=EVENTS_NAMESPACE),
        Request("controller", "get", "", "secrets", namespace=EVENTS_NAMESPACE, name="chap"),
        Request("agent", "get", "", "secrets", namespace=EVENTS_NAMESPACE, name="chap"),
        Request("controller", "create", GROUP, "storagenodestates"),
        Request("controller", "patch", GROUP, "storagenodestates", "status"),
        Request("controller", "delete", GROUP, "storageconnections"),
        Request("controller", "update", "coordination.k8s.io", "leases", namespace="kube-system"),
        Request("controller", "delete", "", "nodes"),
        Request("controller", "get", "", "secrets", namespace=NAMESPACE, name="chap"),
    ],
    ids=lambda r: f"{r.who}-{r.verb}-{r.full_resource}-{r.namespace or 'cluster'}",
)
def test_what_each_component_must_not_do_is_denied(request_: Request) -> None:
    assert not allows(grants(render(), request_.who), request_)
