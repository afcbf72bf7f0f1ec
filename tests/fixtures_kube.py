"""The e2e world: an API server, three simulated nodes with real agents, a real controller, kubectl.

By default the API server is kmock's KubernetesEmulator with :mod:`kmock_ext` on 127.0.0.1, one port per
client process so every recorded request names who made it. With ``HOSTSTORAGE_E2E_KUBECONFIG`` set, the
same tests run against that real cluster instead (Nodes named ``hs-e2e-<random>-a/b/c`` are created for
the simulated agents and deleted afterwards; the CRDs are applied with kubectl in both cases).

Each simulated node is a real ``hoststorage agent`` process on this host with its own NODE_NAME, state
dir, mount base and health port; they mount for real (loop devices, gluster on loopback, local dirs).
Everything started here is stopped here, and every mount under the temp mount bases is removed, even
when a test fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import kmock_ext
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRDS = ROOT / "crds"
REAL_KUBECONFIG = os.environ.get("HOSTSTORAGE_E2E_KUBECONFIG", "")
HOSTSTORAGE = str(pathlib.Path(sys.executable).parent / "hoststorage")


def kubectl_binary() -> str:
    for candidate in (ROOT / ".venv" / "bin" / "kubectl", pathlib.Path("/usr/bin/kubectl")):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("kubectl")
    if not found:
        pytest.skip("kubectl is not installed")
    return found


def wait_until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


@dataclasses.dataclass
class Proc:
    """One hoststorage process (agent or controller) with its log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: pathlib.Path
    health_port: int
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.popen is None or self.popen.poll() is not None
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        log.write(f"\n==== start {time.strftime('%H:%M:%S')} ====\n".encode())
        log.flush()
        self.popen = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 30) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def probe(self, path: str) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}{path}", timeout=2) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")
        except OSError:
            return 0, {}

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/metrics", timeout=2) as r:
            text: str = r.read().decode()
            return text

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclasses.dataclass
class NodeAgent(Proc):
    node: str = ""
    state_dir: str = ""
    mount_base: str = ""


class Cluster:
    def __init__(self, workdir: pathlib.Path, *, resync_seconds: float = 4) -> None:
        self.workdir = workdir
        self.resync_seconds = resync_seconds
        self.kubectl_bin = kubectl_binary()
        self.real = bool(REAL_KUBECONFIG)
        # The emulator serves no OpenAPI document; HOSTSTORAGE_E2E_NO_VALIDATE rehearses the real-cluster
        # mode against an emulator started by hand.
        self.validate = self.real and not os.environ.get("HOSTSTORAGE_E2E_NO_VALIDATE")
        self.runner: kmock_ext.EmulatorRunner | None = None
        self.emulator: kmock_ext.ApiServerEmulator | None = None
        prefix = f"hs-e2e-{secrets.token_hex(3)}-" if self.real else "node-"
        self.nodes = [f"{prefix}{x}" for x in "abc"]
        self.allowed = workdir / "hostpaths"
        self.allowed.mkdir()
        self.agents: dict[str, NodeAgent] = {}
        self.controller: Proc | None = None
        if self.real:
            self.kubeconfigs = dict.fromkeys(["kubectl", "controller", *self.nodes], REAL_KUBECONFIG)
        else:
            self.emulator = kmock_ext.ApiServerEmulator()
            self.runner = kmock_ext.EmulatorRunner(self.emulator)
            self.kubeconfigs = {}
            for who in ["kubectl", "controller", *self.nodes]:
                self.runner.add_endpoint(who)
                self.kubeconfigs[who] = str(self.runner.write_kubeconfig(workdir / f"kubeconfig-{who}", who))

    # ---- kubectl

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 60, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = [self.kubectl_bin, "--kubeconfig", self.kubeconfigs["kubectl"], *args]
        if not self.validate and args and args[0] == "apply":
            # The emulator serves no OpenAPI schema; the API server validates on a real cluster.
            argv.insert(4, "--validate=false")
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, input=input_text, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def apply(self, manifest: str | dict[str, Any] | list[dict[str, Any]]) -> None:
        text = (
            manifest
            if isinstance(manifest, str)
            else yaml.safe_dump_all(manifest if isinstance(manifest, list) else [manifest])
        )
        self.kubectl("apply", "-f", "-", input_text=text)

    def get(self, resource: str, name: str | None = None, *, selector: str | None = None) -> Any:
        args = ["get", resource, *([name] if name else []), "-o", "json"]
        if selector:
            args += ["-l", selector]
        proc = self.kubectl(*args, check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr or "not found" in proc.stderr:
                return None
            raise AssertionError(proc.stderr)
        return json.loads(proc.stdout)

    def states(self, parent: str, kind: str = "StorageConnection") -> dict[str, dict[str, Any]]:
        """StorageNodeStates of ``parent`` by node name."""
        data = self.get(
            "storagenodestates", selector=f"hoststorage.io/parent={parent},hoststorage.io/kind={kind}"
        )
        return {i["spec"]["nodeName"]: i for i in (data or {}).get("items", [])}

    # ---- nodes and processes

    def start_world(self, node_labels: dict[str, str] | None = None) -> None:
        """The CRDs, the Nodes, the controller and one agent per node; returns once all are ready."""
        self.kubectl("apply", "-f", str(CRDS))
        if self.real:
            self.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        for node in self.nodes:
            self.create_node(node, node_labels)
        self.start_controller()
        for node in self.nodes:
            self.agent(node).start()
        for proc in [*self.agents.values(), self.controller]:
            assert proc is not None
            self.wait_ready(proc)

    def create_node(self, name: str, labels: dict[str, str] | None = None) -> None:
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
            }
        )

    def agent(self, node: str) -> NodeAgent:
        if node in self.agents:
            return self.agents[node]
        d = self.workdir / node
        (d / "state").mkdir(parents=True)
        (d / "mnt").mkdir()
        port = kmock_ext.free_port()
        env = dict(os.environ, NODE_NAME=node, KUBECONFIG=self.kubeconfigs[node], PYTHONUNBUFFERED="1")
        argv = [
            HOSTSTORAGE,
            "--log-level",
            "INFO",
            # The "nodes" of this harness are one machine: each mounts the same loop device on its own
            # mount base, which on a real node would be a source in use elsewhere.
            "--allow-shared-sources",
            "--state-dir",
            str(d / "state"),
            "--mount-base",
            str(d / "mnt"),
            "--allowed-host-path",
            str(self.allowed),
            "agent",
            "--health-port",
            str(port),
            "--metrics-port",
            "0",
            "--resync-seconds",
            str(self.resync_seconds),
            "--shutdown-timeout",
            "10",
        ]
        agent = NodeAgent(
            name=f"agent-{node}",
            argv=argv,
            env=env,
            log_path=d / "agent.log",
            health_port=port,
            node=node,
            state_dir=str(d / "state"),
            mount_base=str(d / "mnt"),
        )
        self.agents[node] = agent
        return agent

    def start_controller(
        self, name: str = "controller", *, extra: list[str] | None = None, env: dict[str, str] | None = None
    ) -> Proc:
        """Start a controller process; the first (``controller``) is the session's, others are extra."""
        port = kmock_ext.free_port()
        who = "controller"
        proc_env = dict(os.environ, KUBECONFIG=self.kubeconfigs[who], PYTHONUNBUFFERED="1", **(env or {}))
        argv = [
            HOSTSTORAGE,
            "--log-level",
            "INFO",
            "controller",
            "--health-port",
            str(port),
            "--metrics-port",
            "0",
            "--node-gone-grace",
            "20",
            *(extra or []),
        ]
        proc = Proc(
            name=name, argv=argv, env=proc_env, log_path=self.workdir / f"{name}.log", health_port=port
        )
        proc.start()
        if name == "controller":
            self.controller = proc
        return proc

    def wait_ready(self, proc: Proc, timeout: float = 60) -> None:
        wait_until(lambda: proc.probe("/readyz")[0] == 200 or not proc.alive(), timeout, f"{proc.name} ready")
        assert proc.alive(), f"{proc.name} exited:\n{proc.log_text()[-3000:]}"

    def mounts_under(self, base: str) -> list[str]:
        out = []
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                target = line.split()[4].encode().decode("unicode_escape")
                if target == base or target.startswith(base.rstrip("/") + "/"):
                    out.append(target)
        return out

    def dump_logs(self) -> str:
        parts = []
        for proc in [*self.agents.values(), *([self.controller] if self.controller else [])]:
            parts.append(f"----- {proc.name} -----\n{proc.log_text()[-4000:]}")
        return "\n".join(parts)

    def close(self) -> None:
        for proc in [*self.agents.values(), *([self.controller] if self.controller else [])]:
            with contextlib.suppress(Exception):
                proc.stop(timeout=15)
        for agent in self.agents.values():
            for target in sorted(self.mounts_under(agent.mount_base), reverse=True):
                subprocess.run(["umount", "-l", target], check=False, capture_output=True, timeout=30)
        if self.real:
            for node in self.nodes:
                self.kubectl("delete", "node", node, "--ignore-not-found", "--wait=false", check=False)
        if self.runner is not None:
            self.runner.close()


@contextlib.contextmanager
def running_world(workdir: pathlib.Path, node_labels: dict[str, str] | None = None) -> Iterator[Cluster]:
    """A started :class:`Cluster` in ``workdir``, stopped (logs printed on failure) when the block ends."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the agents mount for real")
    cluster = Cluster(workdir)
    try:
        cluster.start_world(node_labels)
        yield cluster
    except BaseException:
        print(cluster.dump_logs())
        raise
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The API server, CRDs, three Nodes with one agent each, the controller; all running and ready."""
    with running_world(tmp_path_factory.mktemp("e2e"), {"hoststorage.io/e2e": "yes"}) as cluster:
        yield cluster
