"""The container image: hadolint-clean Dockerfile, and an image that builds and runs here.

The build goes through scripts/build_image.sh over a local Debian 12 base made by ``debootstrap``
(cached under /var/cache/hoststorage-ci, so only the first run pays for it), with podman's chroot
isolation, which needs no nested container runtime. Inside the image, through ``buildah run
--isolation chroot``, the entry point answers ``--version`` and ``agent --help``, the Python
dependencies import without warnings (libvirt from Debian's python3-libvirt), and every host tool
the agent's preflight looks for is on PATH.

Measured on the 2-core CI machine, the whole file: 2-3.5 minutes from nothing (debootstrap 0.5-1
minute, the rest mostly apt and pip in the build; mirror speed varies), 40-70 seconds when only
sources changed. The tagged image
localhost/hoststorage:ci-test stays so the next run reuses its layers; every working container this
test creates is removed, also on failure.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import tomllib
from collections.abc import Iterator

import pytest
from chart_render import render

from hostlib import preflight

ROOT = pathlib.Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
TAG = "localhost/hoststorage:ci-test"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
# systemd-run is used only on the host, through nsenter (see the Dockerfile).
IMAGE_TOOLS = sorted({*preflight.HELPERS, "nsenter", "dd", "sync"} - {"systemd-run"})

pytestmark = pytest.mark.packaging


def tool(name: str) -> str:
    path = VENV_BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is not installed: run scripts/setup.sh"
    return found


def test_dockerfile_is_hadolint_clean() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_sends_only_the_package() -> None:
    # A build context with .venv or .git would be hundreds of MB and leak local files into layers.
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    assert "**" in lines
    assert {"!pyproject.toml", "!README.md", "!hostlib/**", "!reconcilers/**", "!controller/**"} <= set(lines)


def _image_tools_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root: rootful podman and debootstrap"
    for name in ("podman", "buildah", "debootstrap"):
        if shutil.which(name) is None:
            return f"{name} is not installed (scripts/setup.sh installs it)"
    return None


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    reason = _image_tools_missing()
    if reason:
        pytest.skip(reason)
    before = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Id}}", TAG],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    build = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_image.sh"), "--debootstrap-base", "--tag", TAG],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert build.returncode == 0, f"image build failed:\n{build.stderr[-4000:]}"
    assert build.stdout.strip().splitlines()[-1] == TAG
    after = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Id}}", TAG], capture_output=True, text=True, check=True
    ).stdout.strip()
    if before and before != after:
        # The previous build's image is now untagged: drop it (and its layers no other image uses).
        subprocess.run(["podman", "rmi", before], capture_output=True, check=False)
    yield TAG


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[str]:
    name = subprocess.run(
        ["buildah", "from", "--pull-never", image], capture_output=True, text=True, check=True, timeout=120
    ).stdout.strip()
    try:
        yield name
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True, check=False, timeout=120)


def run_in(container: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["buildah", "run", "--isolation", "chroot", container, "--", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_image_answers_version(container: str) -> None:
    result = run_in(container, "hoststorage", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"hoststorage {VERSION}"


@pytest.mark.slow
def test_image_agent_help(container: str) -> None:
    result = run_in(container, "hoststorage", "agent", "--help")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "usage: hoststorage agent" in result.stdout


@pytest.mark.slow
def test_image_python_dependencies_import_cleanly(container: str) -> None:
    # -W error: Debian's requests/urllib3 must not leak into the virtualenv (they warn on import).
    code = "import libvirt, kopf, kubernetes, yaml, prometheus_client; print(libvirt.getVersion())"
    result = run_in(container, "/opt/hoststorage/bin/python", "-W", "error", "-c", code)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) >= 9_000_000  # libvirt-python 9.x, as pyproject.toml asks


@pytest.mark.slow
def test_image_has_every_host_tool_the_agent_runs(container: str) -> None:
    script = (
        "for t in " + " ".join(IMAGE_TOOLS) + '; do command -v "$t" >/dev/null || echo "missing $t"; done'
    )
    result = run_in(container, "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


@pytest.mark.slow
def test_image_metadata(image: str, container: str) -> None:
    info = json.loads(
        subprocess.run(
            ["podman", "image", "inspect", image], capture_output=True, text=True, check=True
        ).stdout
    )[0]
    config = info["Config"]
    assert config["Labels"]["org.opencontainers.image.version"] == VERSION
    assert config["Entrypoint"] == ["hoststorage"]
    assert config.get("User", "") in ("", "root", "0")
    # The build-time CA bundle is a build secret, never stored in a layer.
    result = run_in(container, "test", "-e", "/run/secrets/build-ca")
    assert result.returncode != 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["DaemonSet", "Deployment"])
def test_image_accepts_the_charts_configuration(container: str, kind: str) -> None:
    """The chart's args and environment, run in the image, get as far as looking for the API server.

    Every setting parses (a bad one would end in a SettingsError first) and the subcommand's modules
    import; there is no cluster here, so the process stops with the documented one-line error.
    """
    pod = next(o for o in render() if o["kind"] == kind)["spec"]["template"]["spec"]
    (spec,) = pod["containers"]
    env = {e["name"]: e["value"] for e in spec["env"] if "value" in e}
    env.update(NODE_NAME="node-a", POD_NAMESPACE="hoststorage-system", POD_NAME="controller-0", HOME="/root")
    argv = ["env", *(f"{k}={v}" for k, v in sorted(env.items())), "hoststorage", *spec["args"]]
    result = run_in(container, *argv)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no Kubernetes API configuration" in result.stderr
    assert "Traceback" not in result.stderr
