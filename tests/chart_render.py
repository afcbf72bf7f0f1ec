"""Rendering the Helm chart for the packaging tests: ``helm template`` through the virtualenv's helm.

Shared by tests/test_chart.py and tests/test_rbac.py so both look at exactly what a user would install.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from typing import Any

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "hoststorage"
RELEASE = "hs"
NAMESPACE = "hoststorage-system"


def helm_binary() -> str | None:
    """The helm scripts/setup.sh installs next to the interpreter, else one on PATH."""
    venv_helm = ROOT / ".venv" / "bin" / "helm"
    if venv_helm.exists():
        return str(venv_helm)
    return shutil.which("helm")


def helm(
    *args: str, values: Mapping[str, Any] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    binary = helm_binary()
    assert binary, "helm is not installed: run scripts/setup.sh"
    argv = [binary, *args]
    with tempfile.TemporaryDirectory(prefix="hs-helm-") as tmp:
        if values is not None:
            values_file = os.path.join(tmp, "values.yaml")
            pathlib.Path(values_file).write_text(json.dumps(values))
            argv += ["-f", values_file]
        # Helm keeps caches and config under HOME; keep them out of the user's.
        env = {**os.environ, "HELM_CACHE_HOME": tmp, "HELM_CONFIG_HOME": tmp, "HELM_DATA_HOME": tmp}
        return subprocess.run(argv, capture_output=True, text=True, check=check, env=env, timeout=120)


@functools.lru_cache(maxsize=32)
def _render_cached(values_json: str, include_crds: bool, namespace: str) -> tuple[str, ...]:
    args = ["template", RELEASE, str(CHART), "--namespace", namespace]
    if include_crds:
        args.append("--include-crds")
    out = helm(*args, values=json.loads(values_json)).stdout
    return tuple(json.dumps(doc) for doc in yaml.safe_load_all(out) if doc)


def render(
    values: Mapping[str, Any] | None = None, *, include_crds: bool = False, namespace: str = NAMESPACE
) -> list[dict[str, Any]]:
    """Every object ``helm template`` renders for these values (a fresh copy each call)."""
    docs = _render_cached(json.dumps(values or {}, sort_keys=True), include_crds, namespace)
    return [json.loads(doc) for doc in docs]


def find(objects: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    assert len(matches) == 1, (
        f"expected one {kind} named *{name_suffix}, got {[o['metadata']['name'] for o in matches]}"
    )
    return matches[0]
