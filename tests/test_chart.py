"""The Helm chart renders, lints, and produces valid Kubernetes objects that do what the design needs.

Every object ``helm template`` renders, with the default values and with non-default ones, is validated
against the JSON schemas of a current Kubernetes release (kubernetes-validate, strict: unknown fields
fail). values.schema.json must reject wrong types, and every value in values.yaml carries a comment.
The DaemonSet's privileges, mounts and probes are pinned here because the agent relies on each of them
(docs/security.md says why).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import tomllib
from typing import Any

import chart_render
import kubernetes_validate
import pytest
import yaml
from chart_render import CHART, NAMESPACE, find, helm, render

from controller import settings

pytestmark = pytest.mark.packaging

ROOT = chart_render.ROOT
# A current release: the newest schema set kubernetes-validate ships.
K8S_VERSION = kubernetes_validate.latest_version()

NON_DEFAULT: dict[str, Any] = {
    "image": {
        "repository": "registry.example.com/storage/hoststorage",
        "tag": "0.1.0-rc1",
        "pullPolicy": "Always",
    },
    "imagePullSecrets": ["regcred"],
    "fullnameOverride": "hs-storage",
    "logLevel": "DEBUG",
    "commonLabels": {"team": "storage"},
    "agent": {
        "stateDir": "/var/lib/hs-state",
        "mountBase": "/rhev/data-center/mnt",
        "allowedHostPaths": ["/srv/storage", "/data/images"],
        "extraVfsTypes": ["gfs2", "ocfs2"],
        "hostNamespaces": False,
        "useHostScope": None,
        "libvirtUri": "qemu+unix:///system",
        "commandTimeoutSeconds": 90,
        "allowSuid": True,
        "allowDev": True,
        "allowSharedSources": True,
        "qemuUser": "qemu",
        "resyncSeconds": 30,
        "relistSeconds": 600,
        "workers": 8,
        "shutdownTimeoutSeconds": 45,
        "healthPort": 19720,
        "metricsPort": 19721,
        "chapSecretNames": ["chap-a", "chap-b"],
        "terminationGracePeriodSeconds": 90,
        "priorityClassName": "storage-critical",
        "tolerations": [{"key": "storage", "operator": "Equal", "value": "yes", "effect": "NoSchedule"}],
        "nodeSelector": {"hoststorage.io/agent": "true"},
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}
                            ]
                        }
                    ]
                }
            }
        },
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": 2, "memory": "1Gi"}},
        "podAnnotations": {"example.com/owner": "storage"},
        "podLabels": {"tier": "node"},
        "extraEnv": [{"name": "TZ", "value": "UTC"}],
        "extraArgs": ["--log-level=DEBUG"],
        "serviceAccount": {"name": "storage-agent", "annotations": {"example.com/audit": "on"}},
    },
    "controller": {
        "replicas": 3,
        "nodeGoneGraceSeconds": 600,
        "statusWindowSeconds": 5,
        "healthPort": 18080,
        "metricsPort": 19090,
        "priorityClassName": "system-cluster-critical",
        "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "podLabels": {"tier": "control"},
        "extraEnv": [{"name": "TZ", "value": "UTC"}],
        "serviceAccount": {"name": "storage-controller"},
    },
    "metrics": {
        "serviceMonitor": {
            "enabled": True,
            "interval": "15s",
            "scrapeTimeout": "5s",
            "labels": {"release": "prometheus"},
        },
        "prometheusRule": {
            "enabled": True,
            "labels": {"release": "prometheus"},
            "runbookBaseUrl": "https://git.example.com/hoststorage/docs/troubleshooting.md",
            "monitorBlockedSeconds": 30,
            "preflightTypes": "nfs|iscsi",
            "for": {"monitorInvalid": "1m", "controllerAbsent": "10m"},
        },
        "grafanaDashboard": {
            "enabled": True,
            "namespace": "monitoring",
            "labels": {"team": "storage"},
            "annotations": {"grafana_folder": "Storage"},
        },
    },
}
NO_RBAC: dict[str, Any] = {
    "rbac": {"create": False},
    "agent": {"serviceAccount": {"create": False, "name": "existing-agent"}},
    "controller": {"serviceAccount": {"create": False, "name": "existing-controller"}},
    "metrics": {"service": {"enabled": False}},
}
VALUE_SETS = {"default": {}, "non-default": NON_DEFAULT, "no-rbac": NO_RBAC}

# Kinds kubernetes-validate has no schema for: prometheus-operator's CRD-backed ServiceMonitor and
# PrometheusRule (tests/test_alerts.py checks the rules with promtool).
EXTERNAL_KINDS = {("monitoring.coreos.com/v1", kind) for kind in ("ServiceMonitor", "PrometheusRule")}


def pod_spec(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    spec: dict[str, Any] = find(objects, kind)["spec"]["template"]["spec"]
    return spec


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_helm_lint_passes_with_default_and_non_default_values() -> None:
    for name, values in VALUE_SETS.items():
        result = helm("lint", "--strict", str(CHART), values=values, check=False)
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_every_rendered_object_is_valid_for_a_current_kubernetes(values_name: str) -> None:
    objects = render(VALUE_SETS[values_name], include_crds=True)
    assert objects
    validated = external = 0
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in EXTERNAL_KINDS:
            external += 1
            continue
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{values_name}: {where} is invalid for Kubernetes {K8S_VERSION}: {exc.message}")
        validated += 1
    kinds = {o["kind"] for o in objects}
    assert {"DaemonSet", "Deployment", "CustomResourceDefinition"} <= kinds
    assert validated == len(objects) - external and validated > external


def test_non_default_values_reach_the_objects() -> None:
    objects = render(NON_DEFAULT)
    ds = find(objects, "DaemonSet", "-agent")
    assert ds["metadata"]["name"] == "hs-storage-agent"
    assert ds["metadata"]["labels"]["team"] == "storage"
    spec = ds["spec"]["template"]["spec"]
    agent = spec["containers"][0]
    assert agent["image"] == "registry.example.com/storage/hoststorage:0.1.0-rc1"
    assert agent["imagePullPolicy"] == "Always"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["serviceAccountName"] == "storage-agent"
    assert spec["priorityClassName"] == "storage-critical"
    assert spec["terminationGracePeriodSeconds"] == 90
    assert spec["nodeSelector"] == {"hoststorage.io/agent": "true"}
    assert agent["args"] == ["agent", "--log-level=DEBUG"]
    env = env_of(agent)
    assert env["HOSTSTORAGE_ALLOWED_HOST_PATHS"] == "/srv/storage:/data/images"
    assert env["HOSTSTORAGE_EXTRA_VFS_TYPES"] == "gfs2:ocfs2"
    assert env["HOSTSTORAGE_HOST_NAMESPACES"] == "false"
    assert "HOSTSTORAGE_USE_HOST_SCOPE" not in env  # null: the agent decides
    assert env["HOSTSTORAGE_MOUNT_BASE"] == "/rhev/data-center/mnt"
    assert env["HOSTSTORAGE_QEMU_USER"] == "qemu"
    assert env["HOSTSTORAGE_ALLOW_SHARED_SOURCES"] == "true"
    assert env["HOSTSTORAGE_RELIST_SECONDS"] == "600"
    assert env["HOSTSTORAGE_HEALTH_PORT"] == "19720" and env["TZ"] == "UTC"
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    for path in ("/srv/storage", "/data/images", "/rhev/data-center/mnt", "/var/lib/hs-state"):
        assert path in mounts, path
    assert mounts["/srv/storage"]["mountPropagation"] == "HostToContainer"
    deployment = find(objects, "Deployment", "-controller")
    assert deployment["spec"]["replicas"] == 3
    controller = deployment["spec"]["template"]["spec"]["containers"][0]
    assert env_of(controller)["HOSTSTORAGE_LEADER_ELECTION"] == "true"
    assert env_of(controller)["HOSTSTORAGE_STATUS_WINDOW"] == "5"
    secrets_role = find(objects, "Role", "-agent-secrets")
    assert secrets_role["rules"][0]["resourceNames"] == ["chap-a", "chap-b"]
    for suffix in ("-agent", "-controller"):
        monitor = find(objects, "ServiceMonitor", suffix)
        assert monitor["metadata"]["labels"]["release"] == "prometheus"
        assert monitor["spec"]["endpoints"][0]["interval"] == "15s"
    assert find(objects, "PrometheusRule")["metadata"]["labels"]["release"] == "prometheus"
    dashboard = find(objects, "ConfigMap", "-dashboard")
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["labels"]["team"] == "storage"


def test_no_rbac_values_render_no_rbac_and_use_the_given_service_accounts() -> None:
    objects = render(NO_RBAC)
    kinds = {o["kind"] for o in objects}
    assert not kinds & {
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ServiceAccount",
        "Service",
    }
    assert pod_spec(objects, "DaemonSet")["serviceAccountName"] == "existing-agent"
    assert pod_spec(objects, "Deployment")["serviceAccountName"] == "existing-controller"


def test_agent_daemonset_has_the_privileges_and_mounts_the_agent_needs() -> None:
    objects = render()
    ds = find(objects, "DaemonSet", "-agent")
    assert ds["metadata"]["namespace"] == NAMESPACE
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
    }
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["hostPID"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["tolerations"] == [{"operator": "Exists"}]
    (agent,) = spec["containers"]
    assert agent["securityContext"]["privileged"] is True
    assert agent["args"][0] == "agent"
    env = env_of(agent)
    assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["HOSTSTORAGE_HOST_NAMESPACES"] == "true"
    assert env["HOSTSTORAGE_USE_HOST_SCOPE"] == "true"  # FUSE helpers outlive the pod
    assert env["HOSTSTORAGE_ALLOW_SHARED_SOURCES"] == "false"  # a source in use elsewhere is refused
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    host_paths = {name: v["hostPath"]["path"] for name, v in volumes.items() if "hostPath" in v}
    assert host_paths == {
        "state": "/var/lib/hoststorage",
        "mount-base": "/var/lib/hoststorage/mnt",
        "libvirt-run": "/run/libvirt",
        "dev": "/dev",
        "iscsi-config": "/etc/iscsi",
    }
    # Paths are the same inside and outside: the agent hands them to host tools through nsenter.
    for name, path in host_paths.items():
        assert mounts[name]["mountPath"] == path, name
    assert mounts["mount-base"]["mountPropagation"] == "Bidirectional"
    assert env["HOSTSTORAGE_MOUNT_BASE"] == host_paths["mount-base"]
    assert env["HOSTSTORAGE_STATE_DIR"] == host_paths["state"]
    ports = {p["name"]: p["containerPort"] for p in agent["ports"]}
    assert ports == {"health": 9720, "metrics": 9721}
    assert env["HOSTSTORAGE_HEALTH_PORT"] == "9720" and env["HOSTSTORAGE_METRICS_PORT"] == "9721"
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert agent["resources"]["requests"] and agent["resources"]["limits"]["memory"]
    # SIGTERM: the agent's own bound must end before the kubelet's SIGKILL.
    assert spec["terminationGracePeriodSeconds"] > float(env["HOSTSTORAGE_SHUTDOWN_TIMEOUT"])


def test_controller_deployment_is_unprivileged_with_its_own_service_account() -> None:
    objects = render()
    deployment = find(objects, "Deployment", "-controller")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # no election with one replica
    spec = deployment["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == pod_spec(objects, "Deployment")["serviceAccountName"]
    assert spec["serviceAccountName"] != pod_spec(objects, "DaemonSet")["serviceAccountName"]
    assert spec.get("hostNetwork") is not True and spec.get("hostPID") is not True
    assert spec["securityContext"]["runAsNonRoot"] is True
    (controller,) = spec["containers"]
    assert controller["args"][0] == "controller"
    assert controller["securityContext"]["allowPrivilegeEscalation"] is False
    assert controller["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "volumes" not in spec
    assert env_of(controller)["HOSTSTORAGE_LEADER_ELECTION"] == "false"
    assert env_of(controller)["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert controller["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert controller["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    service_accounts = {o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount"}
    assert service_accounts == {"hs-hoststorage-agent", "hs-hoststorage-controller"}


def _settings_env_names() -> set[str]:
    names: set[str] = set()
    for field in dataclasses.fields(settings.Settings):
        names.update(settings.env_names(field))
    return names


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_every_environment_variable_the_chart_sets_is_one_settings_reads(values_name: str) -> None:
    # TZ comes from extraEnv in the non-default set; POD_NAME is the controller's Lease identity
    # (controller/cluster.py reads it directly).
    known = _settings_env_names() | {"TZ", "POD_NAME"}
    objects = render(VALUE_SETS[values_name])
    for kind in ("DaemonSet", "Deployment"):
        for container in pod_spec(objects, kind)["containers"]:
            unknown = set(env_of(container)) - known
            assert not unknown, f"{kind}: {sorted(unknown)} are not read by controller/settings.py"
            # And the values parse the way Settings parses them (numbers, booleans, paths).
            plain = {k: v for k, v in env_of(container).items() if isinstance(v, str)}
            settings.Settings.build(None, {**plain, "NODE_NAME": "node-a"})


@pytest.mark.parametrize(
    ("set_value", "complaint"),
    [
        ("agent.healthPort=abc", "/agent/healthPort"),
        ("agent.healthPort=70000", "/agent/healthPort"),
        ("agent.hostNamespaces=maybe", "/agent/hostNamespaces"),
        ("agent.tolerations=everything", "/agent/tolerations"),
        ("agent.allowedHostPaths[0]=relative/path", "/agent/allowedHostPaths/0"),
        ("agent.mountBase=mnt", "/agent/mountBase"),
        ("agent.workers=0", "/agent/workers"),
        ("agent.relistSeconds=5", "/agent/relistSeconds"),
        ("agent.relistSeconds=90000", "/agent/relistSeconds"),
        ("agent.useHostScope=auto", "/agent/useHostScope"),
        ("agent.qemuUser=-oops", "/agent/qemuUser"),
        ("agent.extraVfsTypes[0]=Fuse Sshfs", "/agent/extraVfsTypes/0"),
        ("controller.replicas=two", "/controller/replicas"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("logLevel=LOUD", "/logLevel"),
        ("rbac.create=1", "/rbac/create"),
        ("metrics.serviceMonitor.interval=often", "/metrics/serviceMonitor/interval"),
        ("metrics.prometheusRule.for.monitorInvalid=soon", "/metrics/prometheusRule/for/monitorInvalid"),
        ("metrics.prometheusRule.for.monitorInvalidd=1m", "monitorInvalidd"),
        ("metrics.prometheusRule.monitorBlockedSeconds=0", "/metrics/prometheusRule/monitorBlockedSeconds"),
        ("metrics.prometheusRule.runbookBaseUrl=docs#x", "/metrics/prometheusRule/runbookBaseUrl"),
        ("metrics.grafanaDashboard.namespace=Not_A_Namespace", "/metrics/grafanaDashboard/namespace"),
        ("agent.chapSecretNames[0]=Not_A_Name", "/agent/chapSecretNames/0"),
        ("agnet.stateDir=/x", "agnet"),
    ],
)
def test_values_schema_rejects_wrong_values(set_value: str, complaint: str) -> None:
    result = helm("template", "hs", str(CHART), "--set", set_value, check=False)
    assert result.returncode != 0, f"{set_value} was accepted"
    assert "values don't meet the specifications" in result.stderr
    assert complaint in result.stderr


def test_chart_refuses_a_host_scope_without_host_namespaces() -> None:
    result = helm("template", "hs", str(CHART), "--set", "agent.hostNamespaces=false", check=False)
    assert result.returncode != 0
    assert "agent.useHostScope=true needs agent.hostNamespaces=true" in result.stderr


def test_chart_refuses_a_grace_period_shorter_than_the_shutdown_bound() -> None:
    result = helm(
        "template", "hs", str(CHART), "--set", "agent.terminationGracePeriodSeconds=10", check=False
    )
    assert result.returncode != 0
    assert "terminationGracePeriodSeconds must be greater than agent.shutdownTimeoutSeconds" in result.stderr


def _leaf_keys_without_comment(text: str) -> list[str]:
    """Keys in a YAML file whose value is not explained by a comment above it or above a parent key."""
    missing = []
    commented: list[tuple[int, bool]] = []  # (indent, covered) of the enclosing keys
    previous = ""
    lines = text.splitlines()
    for number, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            previous = stripped or previous if stripped else ""
            continue
        match = re.match(r"^(\s*)([A-Za-z][\w.-]*):(.*)$", line)
        if not match:
            previous = stripped
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3).strip()
        while commented and commented[-1][0] >= indent:
            commented.pop()
        covered = previous.startswith("#") or any(c for _, c in commented)
        following = next(
            (ln for ln in lines[number + 1 :] if ln.strip() and not ln.strip().startswith("#")), ""
        )
        is_parent = not rest and (len(following) - len(following.lstrip())) > indent
        if not is_parent and not covered:
            missing.append(f"line {number + 1}: {key}")
        commented.append((indent, covered))
        previous = stripped
    return missing


def test_every_value_has_a_comment() -> None:
    assert _leaf_keys_without_comment((CHART / "values.yaml").read_text()) == []
    # The checker itself: an uncommented value is found, a commented parent covers its children.
    assert _leaf_keys_without_comment("a:\n  b: 1\n# c\nc: 2\n") == ["line 2: b"]
    assert _leaf_keys_without_comment("# a\na:\n  b: 1\n") == []


def test_values_schema_covers_every_default_value() -> None:
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        assert "type" in node, f"{path}: no type in values.schema.json"
        if isinstance(value, dict) and node.get("properties"):
            for key, child in value.items():
                assert key in node["properties"], f"{path}.{key}: missing from values.schema.json"
                walk(child, node["properties"][key], f"{path}.{key}")

    walk(values, schema, "")


def test_chart_version_follows_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]
    assert chart["version"] == project["version"]


def test_rendered_crds_are_the_ones_in_crds() -> None:
    rendered = {
        o["metadata"]["name"]: o for o in render(include_crds=True) if o["kind"] == "CustomResourceDefinition"
    }
    sources = {}
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        sources[doc["metadata"]["name"]] = doc
    assert sources, "no CRDs in crds/"
    assert rendered == sources


def test_notes_render() -> None:
    out = helm("install", "hs", str(CHART), "--dry-run=client", "--namespace", NAMESPACE, check=False)
    if out.returncode != 0 and "kubernetes cluster unreachable" in out.stderr.lower():
        pytest.skip("helm install --dry-run needs a cluster on this helm version")
    assert out.returncode == 0, out.stderr
    assert "kubectl wait --for=condition=Ready storageconnection/NAME" in out.stdout
    assert "kubectl apply --server-side -f charts/hoststorage/crds/" in out.stdout


def test_metrics_services_select_the_agent_and_controller_pods() -> None:
    objects = render()
    for component, kind in (("agent", "DaemonSet"), ("controller", "Deployment")):
        service = find(objects, "Service", f"-{component}-metrics")
        pods = find(objects, kind, f"-{component}")
        labels = pods["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        assert service["spec"]["ports"][0]["targetPort"] == "metrics"
        ports = {p["name"] for p in pods["spec"]["template"]["spec"]["containers"][0]["ports"]}
        assert "metrics" in ports
    # The jobs the alerts watch are these Services' names (a ServiceMonitor's job is its Service's name).
    rule_text = str(find(render({"metrics": {"prometheusRule": {"enabled": True}}}), "PrometheusRule"))
    assert 'up{job="hs-hoststorage-agent-metrics"}' in rule_text
    assert 'up{job="hs-hoststorage-controller-metrics"}' in rule_text
    assert not any(o["kind"] in ("ServiceMonitor", "PrometheusRule") for o in objects)


def test_chart_files_are_listed() -> None:
    # The templates this test file and docs/install.md talk about exist under these names.
    names = {p.name for p in (CHART / "templates").iterdir()}
    assert {
        "agent-daemonset.yaml",
        "controller-deployment.yaml",
        "rbac.yaml",
        "metrics.yaml",
        "prometheusrule.yaml",
        "grafana-dashboard.yaml",
        "serviceaccounts.yaml",
        "NOTES.txt",
        "_helpers.tpl",
    } <= names
    assert pathlib.Path(CHART / "values.schema.json").is_file()
    assert pathlib.Path(CHART / "files" / "grafana-dashboard.json").is_file()
