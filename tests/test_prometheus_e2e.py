"""A real Prometheus (Debian's ``prometheus``) scrapes the real agents and controller of the e2e world
and evaluates the chart's rules: every series and label the alerts and the dashboard use exists, every
dashboard query returns series (asked through ``promtool query``), and HostStorageMonitorInvalid fires
when a monitored file goes away and resolves when it is back.

The server listens on loopback with a temp config and data dir, is stopped after the module, and
scrapes every second; the rules are the chart's, rendered with a 2 s ``for`` so the alert fires within
the test. The jobs and the ``node`` label are the ones the chart's ServiceMonitors produce.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import secrets
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import kmock_ext
import prom_rules
import pytest
import yaml
from fixtures_kube import Cluster, wait_until
from prom_rules import AGENT_JOB, CONTROLLER_JOB

pytestmark = [pytest.mark.e2e, pytest.mark.host, pytest.mark.slow]

FAST = {"metrics": {"prometheusRule": {"for": {"monitorInvalid": "2s"}}}}


class Prometheus:
    def __init__(self, workdir: pathlib.Path, cluster: Cluster) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.skip("prometheus is not installed (scripts/setup.sh installs Debian's prometheus package)")
        self.port = kmock_ext.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        rules = prom_rules.write_rules(workdir / "rules.yaml", prom_rules.rule_groups(FAST))
        assert cluster.controller is not None
        agents = [{"targets": [f"127.0.0.1:{a.health_port}"], "labels": {"node": a.node}}
                  for a in cluster.agents.values()]  # fmt: skip
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {"job_name": AGENT_JOB, "static_configs": agents},
                {"job_name": CONTROLLER_JOB,
                 "static_configs": [{"targets": [f"127.0.0.1:{cluster.controller.health_port}"]}]},
            ],
        }  # fmt: skip
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        argv = [binary, f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn"]  # fmt: skip
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: self._ready() or self.proc.poll() is not None, 60, "prometheus ready")
        assert self.proc.poll() is None, self.log.read_text()

    def _ready(self) -> bool:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
            return r.status == 200
        return False

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def firing(self, alertname: str) -> list[dict[str, Any]]:
        return [a for a in self.api("alerts")["alerts"]
                if a["labels"]["alertname"] == alertname and a["state"] == "firing"]  # fmt: skip

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="module")
def prometheus(kube_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), kube_cluster)
    try:
        yield server
    finally:
        server.stop()


def monitor(name: str, path: pathlib.Path) -> dict[str, Any]:
    return {
        "apiVersion": "hoststorage.io/v1alpha1",
        "kind": "DomainMonitor",
        "metadata": {"name": name},
        "spec": {"target": {"hostPath": str(path)}, "probeFile": "probe", "intervalSeconds": 1,
                 "timeoutSeconds": 1, "reportIntervalSeconds": 10},
    }  # fmt: skip


def write_probe(path: pathlib.Path) -> None:
    (path / "probe").write_bytes(os.urandom(4096))


def test_rules_and_dashboard_see_real_series_and_an_alert_fires_and_resolves(
    kube_cluster: Cluster, prometheus: Prometheus
) -> None:
    name = f"prom-{secrets.token_hex(3)}"
    target = kube_cluster.allowed / name
    target.mkdir()
    write_probe(target)
    kube_cluster.apply(monitor(name, target))
    nodes = set(kube_cluster.agents)
    try:
        wait_until(lambda: {s["metric"]["node"] for s in
                            prometheus.query(f'hoststorage_monitor_valid{{monitor="{name}"}} == 1')} == nodes,
                   90, f"{name} valid on every node in Prometheus")  # fmt: skip

        # Every series the rules and the dashboard read is scraped, with every label they match or group
        # on, or name in an annotation.
        uses: list[tuple[str, set[str], set[str]]] = [
            (rule["alert"], prom_rules.metric_names(rule["expr"]),
             prom_rules.label_names(rule["expr"]) | prom_rules.annotation_labels(rule))
            for rule in prom_rules.alerts(FAST)
        ]  # fmt: skip
        queries = prom_rules.panel_queries(prom_rules.dashboard())
        uses += [(t, prom_rules.metric_names(q), prom_rules.label_names(q) - {"le"}) for t, q in queries]
        for what, names, labels in uses:
            assert names, what
            seen: set[str] = set()
            for metric in names:
                # The controller's series follow its roll-up of the new monitor and its next scrape, which
                # can come a little after the agents' (a CI run saw none at once).
                found = wait_until(lambda m=metric: prometheus.api("series", **{"match[]": m}), 30,
                                   f"{what}: a series {metric} in the scrape")  # fmt: skip
                seen |= {k for s in found for k in s}
            assert labels <= seen, f"{what}: labels {sorted(labels - seen)} missing on {sorted(names)}"

        # The file goes: the monitor turns Invalid on every node and the alert fires for each.
        (target / "probe").unlink()
        fired = wait_until(lambda: (f := [a for a in prometheus.firing("HostStorageMonitorInvalid")
                                          if a["labels"]["monitor"] == name]) and len(f) == len(nodes) and f,
                           90, "HostStorageMonitorInvalid firing")  # fmt: skip
        assert {a["labels"]["node"] for a in fired} == nodes
        one = fired[0]
        node = one["labels"]["node"]
        assert one["annotations"]["summary"] == f"DomainMonitor {name} is Invalid on node {node}"
        assert one["annotations"]["runbook_url"] == "docs/troubleshooting.md#hoststoragemonitorinvalid"

        # Every dashboard query returns series now (an Invalid monitor, failed reconciles), through promtool.
        tool = prom_rules.promtool()
        for title, q in queries:
            out = subprocess.run([tool, "query", "instant", "-o", "json", prometheus.url, q],
                                 capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
            assert out.returncode == 0, f"{title}: {out.stderr}"
            assert json.loads(out.stdout), f"{title}: {q} returned no series"

        # It comes back: the alert resolves.
        write_probe(target)
        wait_until(lambda: not [a for a in prometheus.api("alerts")["alerts"]
                                if a["labels"].get("monitor") == name], 90, "the alert resolved")  # fmt: skip
    except BaseException:
        print(prometheus.log.read_text()[-3000:])
        print(kube_cluster.dump_logs())
        raise
    finally:
        kube_cluster.kubectl("delete", "domainmonitor", name, "--wait=false", "--ignore-not-found",
                             check=False)  # fmt: skip
        wait_until(lambda: kube_cluster.get("domainmonitor", name) is None, 60, f"{name} deleted")
        shutil.rmtree(target, ignore_errors=True)
